"""The demo stream through the real loop: embedded broker, `streamml events` (with its build worker running real
papermill builds of the dtr notebook and live scoring), `streamml predictions` and `streamml demo`, each its own
process as `streamml up --demo` runs them.

It waits (polling the database with a deadline) for an automatic drift-triggered rebuild, then checks that the
new champion's live accuracy beats the decayed one's (from the `live_accuracy` table, whose minute buckets the
drift is timed to fall just after, and exactly on the rows each version scored), that the drift command is archived with its trigger, and
that predictions are answered by the new version. The figures are printed (run with -s) and written to
`test-artifacts/demo-loop.json`.
"""
import datetime as dt, json, os, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, sqlalchemy as sa
from conftest import ROOT, tansu_only
from streamml import registry
from streamml.config import child_env
from streamml.db import make_engine, init_db, live_accuracy, champion_history, runs, training_data, minute
from streamml.scoring import rolling_accuracy
from streamml.messages import parse_numbers

RATE, POST = 40, 4000            # rows/s; rows after the drift (agree -> contrary)


def rows_before_drift(now: dt.datetime) -> int:
    "Agree rows for at least 45 s, so that the drift falls just after a minute boundary: live_accuracy's minute buckets then separate before and after."
    to_boundary = 60 - now.second - now.microsecond / 1e6
    return int(RATE * (to_boundary + (60 if to_boundary < 45 else 0) + 2))
POLICY = {'default': {'drift_threshold': None},   # only dtr is watched: it builds in seconds
          'dtr': {'bootstrap_rows': 300, 'drift_threshold': 0.15, 'min_rows': 200, 'cooldown_s': 20}}


def start(name, argv, env, logs):
    "Start `python -m streamml.cli <argv>` with its output in logs/<name>.log."
    out = open(logs/f'{name}.log', 'ab')
    p = subprocess.Popen([sys.executable, '-m', 'streamml.cli', *map(str, argv)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    out.close()
    return p


def stop(p, timeout=30):
    if p.poll() is None:
        p.terminate()
        try: p.wait(timeout)
        except subprocess.TimeoutExpired: p.kill(); p.wait()


def drift_rebuild(engine):
    "The first champion change made by a drift-triggered run, with the version it replaced; or None."
    q = (sa.select(champion_history.c.version, champion_history.c.previous_version, champion_history.c.changed_at, runs.c.run_id, runs.c.reason)
         .join(runs, sa.and_(runs.c.version == champion_history.c.version, runs.c.model == champion_history.c.model))
         .where(champion_history.c.model == 'dtr', runs.c.trigger == 'drift', champion_history.c.action == 'promote')
         .order_by(champion_history.c.id).limit(1))
    with engine.connect() as c: return c.execute(q).mappings().first()


def live_of(engine, version, since=None, until=None):
    "`(n, hits)` of a version's live_accuracy buckets in [since, until)."
    t = live_accuracy
    q = sa.select(sa.func.coalesce(sa.func.sum(t.c.n), 0), sa.func.coalesce(sa.func.sum(t.c.hits), 0)).where(t.c.version == version)
    if since is not None: q = q.where(t.c.bucket >= since)
    if until is not None: q = q.where(t.c.bucket < until)
    with engine.connect() as c: n, h = c.execute(q).one()
    return int(n), int(h)


def runs_of(engine):
    "Every build run: trigger, status, seconds, version."
    with engine.connect() as c:
        return [dict(r) for r in c.execute(sa.select(runs.c.trigger, runs.c.status, runs.c.duration_s, runs.c.version)
                                            .order_by(runs.c.requested_at)).mappings()]


def exact(s, engine, version, lo, hi, first, last):
    "Accuracy of `version` on the stored rows number [lo, hi) (arrival order) stored in [first, last): the rows it scored."
    p = registry.load_version(registry.get_version(s, 'dtr', version))
    with engine.connect() as c:
        rows = c.execute(sa.select(training_data.c.payload, training_data.c.stored_at).order_by(training_data.c.id)).all()
    sel = [parse_numbers(r.payload) for i, r in enumerate(rows) if lo <= i < hi and first <= r.stored_at < last]
    if not sel: return None, 0
    a = np.asarray(sel)
    return float((p.predict(a[:, :3]) == a[:, 3]).mean()), len(sel)


@tansu_only('the demo is `make up`\'s loop, which runs on the embedded broker; the same services on Apache Kafka are '
            'covered by test_events, test_serving, test_builds and test_hosts (its 3-node variant)')
def test_demo_drift_triggers_a_rebuild_that_recovers(settings, tmp_path):
    s = settings
    engine = make_engine(s); init_db(engine)
    env = child_env(s) | {'STREAMML_RETRAIN_POLICY': json.dumps(POLICY), 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONUNBUFFERED': '1'}
    env.pop('IN_TEST', None)
    logs = tmp_path/'logs'; logs.mkdir()
    procs = [start('events', ['events'], env, logs), start('predictions', ['predictions'], env, logs)]
    try:
        PRE = rows_before_drift(dt.datetime.now(dt.UTC))
        procs.append(start('demo', ['demo', '--rate', RATE, '--schedule', f'agree:{PRE},contrary:{POST}', '--cycles', 1, '--no-policy'],
                           env, logs))
        deadline, found = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            assert procs[0].poll() is None, f'events died:\n{(logs/"events.log").read_text()[-4000:]}'
            if (found := drift_rebuild(engine)) and live_of(engine, found['version'])[0] >= 300: break
            time.sleep(1)
        log_tail = (logs/'events.log').read_text()[-6000:]
        assert found, f'no drift-triggered rebuild within the deadline; events log:\n{log_tail}'
        assert live_of(engine, found['version'])[0] >= 300, 'the rebuilt champion has not scored 300 rows yet'
        new, old = found['version'], found['previous_version']
        drift_at = dt.datetime.strptime(json.loads(s.path('demo', 'drifts.jsonl').read_text().splitlines()[0])['at'], '%Y-%m-%d %H:%M:%S.%f')
        # live figures from the live_accuracy table; the decayed one counts every bucket from the drift's minute on,
        # so pre-drift rows of that minute can only flatter it
        n_old_pre, h_old_pre = live_of(engine, old, until=minute(drift_at))
        n_dec, h_dec = live_of(engine, old, since=minute(drift_at))
        n_new, h_new = live_of(engine, new)
        with engine.connect() as c:
            promoted_old = c.execute(sa.select(champion_history.c.changed_at).where(champion_history.c.version == old)).scalar()
        figures = dict(
            before_drift=dict(version=old, live_accuracy=h_old_pre / n_old_pre if n_old_pre else None, rows=n_old_pre,
                              exact=exact(s, engine, old, 0, PRE, promoted_old, drift_at)),
            after_drift=dict(version=old, live_accuracy=h_dec / n_dec, rows=n_dec,
                             exact=exact(s, engine, old, PRE, PRE + POST, drift_at, found['changed_at'])),
            after_rebuild=dict(version=new, live_accuracy=h_new / n_new, rows=n_new,
                               exact=exact(s, engine, new, PRE, PRE + POST, found['changed_at'], dt.datetime.max)),
            drift_run=dict(run_id=found['run_id'], reason=found['reason']),
            runs=runs_of(engine),
            rolling_10min=rolling_accuracy(engine, 'dtr', 10))
        (ROOT/'test-artifacts').mkdir(exist_ok=True)
        (ROOT/'test-artifacts'/'demo-loop.json').write_text(json.dumps(figures, indent=1, default=str))
        print(json.dumps(figures, indent=1, default=str))
        assert figures['after_rebuild']['live_accuracy'] > figures['after_drift']['live_accuracy'], figures
        # the same on exactly the rows each version scored (stored-time windows between the champion changes)
        assert figures['after_rebuild']['exact'][0] > figures['after_drift']['exact'][0], figures
        # the archive records why the build happened: the command event with its trigger and reason
        archived = [json.loads(l) for p in sorted(s.path('events').glob('*.jsonl')) for l in p.read_text().splitlines()]
        cmds = [json.loads(a['value']) for a in archived if '"command"' in (a.get('value') or '')]
        assert any(c['payload'] == 'build_dtr' and c.get('trigger') == 'drift' and c.get('reason') for c in cmds), cmds[:5]
        # predictions are answered by the rebuilt champion (or a newer one)
        from streamml.predictions import PredictClient
        with PredictClient(s) as pc:
            def answered():
                r = pc.ask('dtr', '5,6,7', timeout=20)
                return r if r.get('version') and r['version'] >= new else None
            deadline = time.monotonic() + 60
            while not (resp := answered()) and time.monotonic() < deadline: time.sleep(0.5)
        assert resp and 'result' in resp, resp
    finally:
        for p in reversed(procs): stop(p)
        engine.dispose()
