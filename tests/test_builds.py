"""Build runner, gate and rollback with real parts: papermill kernels, TensorFlow, SQLite and MariaDB, the embedded broker.

A tiny training notebook (`tiny`, in a stand-in project's nbs/train) makes failures, dead kernels, timeouts and
slow builds cheap; the real mlp, slr and dtr notebooks each build once end to end on generated rows.
"""
import json, re, shutil, threading, time, uuid
from pathlib import Path
import nbformat, numpy as np, pytest, sqlalchemy as sa
from conftest import streamml, settings_for, wait_for
from streamml import registry
from streamml.admin import rollback_model, status_text
from streamml.bench_build import bench_build
from streamml.builds import run_build, request_build, BuildWorker, QueueFullError
from streamml.messages import CommandEvent
from streamml.params import BuildOptions, check_parameters, notebook_path
from streamml.train import store_generated
from streamml.config import child_env, make_consumer
from streamml.db import make_engine, init_db, runs, training_log, linear_model, model_versions, champion_history
from streamml.errors import ParameterError, UnknownModelError, ValidationError

TINY_PARAMS = """run_id: str = ''      # build run id, set by the runner
slope: float = 2.0    # slope of the saved line (2.0 fits the holdout exactly) [-100, 100]
sleep: float = 0.0    # seconds to wait before saving [0, 600]
fail: str = ''        # raise RuntimeError with this message
die: bool = False     # kill the kernel
allocate_mb: int = 0  # MiB of memory to fill before saving [0, 1000000]"""

TINY_BODY = """import os, time, numpy as np
from streamml.config import load_settings
from streamml import registry
if fail: raise RuntimeError(fail)
if die: os.kill(os.getpid(), 9)
time.sleep(sleep)
block = np.ones(allocate_mb << 17) if allocate_mb else None
X = np.arange(20, dtype=float).reshape(-1, 1).repeat(3, axis=1); y = 2 * X[:, 0] + 1
pred = slope * X[:, 0] + 1
r2 = float(1 - ((y - pred)**2).sum() / ((y - y.mean())**2).sum())
registry.save_version(load_settings(), 'tiny', registry.Trained('regression', registry.linear_arrays(slope, 1.0), 'r2', {'r2': r2}, (X, y)),
                      registry.Provenance(run_id or None, parameters={'slope': slope}, data={'rows': 20}))"""

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture
def project(tmp_path):
    "A stand-in project root: the real training notebooks and the tiny one in nbs/train."
    d = tmp_path/'project'/'nbs'/'train'; d.mkdir(parents=True)
    for nb in (ROOT/'nbs'/'train').glob('*.ipynb'): shutil.copy(nb, d/nb.name)
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(TINY_PARAMS); p.metadata['tags'] = ['parameters']
    nb.cells = [p, nbformat.v4.new_code_cell(TINY_BODY)]
    nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3', language='python')
    nbformat.write(nb, d/'tiny.ipynb')
    return tmp_path/'project'

def home(tmp_path, project, db_url=None, **env):
    "Settings with a temporary home, the stand-in project and no broker (unless given)."
    env.setdefault('STREAMML_BOOTSTRAP_SERVERS', '127.0.0.1:9')
    return settings_for(tmp_path/'home', db_url=db_url, **env).with_(project_root=project)

def build(s, model, parameters=None, trigger='cli', *, engine=None, text=False, **opts):
    "`run_build` of `model` with `parameters`; `opts` override the build options."
    return run_build(s, CommandEvent(model, trigger, parameters=parameters), BuildOptions.load(**opts), engine=engine, text=text)

def db(s):
    "A fresh engine with the tables."
    eng = make_engine(s); init_db(eng); return eng

def run_rows(eng, model=None):
    "run_id -> runs row (as a dict)."
    q = sa.select(runs) if model is None else sa.select(runs).where(runs.c.model == model)
    with eng.connect() as c: return {r['run_id']: dict(r) for r in c.execute(q).mappings()}

# ---------------------------------------------------------------- failures

def test_failing_notebook_keeps_champion_and_notebook(tmp_path, project):
    s = home(tmp_path, project); eng = db(s)
    ok = build(s, 'tiny', engine=eng)
    assert ok.status == 'succeeded' and ok.promoted
    bad = build(s, 'tiny', {'fail': 'boom from the notebook'}, engine=eng)
    assert bad.status == 'failed' and 'RuntimeError: boom from the notebook' in bad.error, bad
    row = run_rows(eng)[bad.run_id]
    assert row['status'] == 'failed' and 'boom from the notebook' in row['error'] and row['duration_s'] > 0
    assert Path(row['notebook_path']) == s.path('runs', f'{bad.run_id}.ipynb')
    assert 'boom from the notebook' in Path(row['notebook_path']).read_text()      # kept for reading
    assert registry.current_champion(eng, 'tiny')['version'] == ok.version
    with eng.connect() as c: assert c.execute(sa.select(sa.func.count()).select_from(training_log)).scalar() == 1
    # a real notebook refusing too few rows (no rows are stored here)
    real = build(s, 'dtr', {'min_rows': 10}, engine=eng)
    assert real.status == 'failed' and 'too few training rows: 0 < 10' in real.error, real
    eng.dispose()

def test_dead_kernel_and_timeout(tmp_path, project):
    s = home(tmp_path, project); eng = db(s)
    dead = build(s, 'tiny', {'die': True}, engine=eng)
    assert dead.status == 'failed' and 'kernel died' in dead.error, dead
    slow = build(s, 'tiny', {'sleep': 120.0}, engine=eng, timeout=8)
    assert slow.status == 'timeout' and 'longer than 8 s' in slow.error, slow
    assert run_rows(eng)[slow.run_id]['status'] == 'timeout'
    assert registry.current_champion(eng, 'tiny') is None
    assert Path(slow.notebook).exists()
    eng.dispose()

# ---------------------------------------------------------------- refusals

def test_refusals(tmp_path, project):
    s = home(tmp_path, project); eng = db(s)
    for model, msg in [('build_../../x', "not a model name: 'build_../../x'"), ('../../x', 'not a model name'),
                       ('xgb', "unknown model 'xgb': no training notebook xgb.ipynb"), ('Mlp', 'not a model name')]:
        with pytest.raises(UnknownModelError, match=msg.replace('.', r'\.').replace('(', r'\(')): build(s, model, engine=eng)
    with pytest.raises(ParameterError, match="unknown parameter 'epoch' for mlp"): build(s, 'mlp', {'epoch': 3}, engine=eng)
    with pytest.raises(ParameterError, match="parameter 'epochs' must be int, got str 'three'"): build(s, 'mlp', {'epochs': 'three'}, engine=eng)
    with pytest.raises(ParameterError, match="parameter 'split' must be float, got str"): build(s, 'slr', {'split': 'x'}, engine=eng, text=True)
    with pytest.raises(ParameterError, match='set by the build runner'): build(s, 'dtr', {'run_id': 'x'}, engine=eng)
    assert run_rows(eng) == {} and not any(s.path('runs').glob('*.ipynb'))    # nothing ran, nothing recorded
    # a recorded request (from an event) with a bad parameter: the worker fails it with the reason
    with eng.begin() as c:
        with pytest.raises(ParameterError, match="parameter 'slope' must be float"):
            request_build(c, s, CommandEvent('tiny', 'command', parameters={'slope': 'steep'}))
        rid, _ = request_build(c, s, CommandEvent('tiny', 'command'))   # a request recorded before the notebook changed its parameters:
        c.execute(sa.update(runs).where(runs.c.run_id == rid).values(parameters=json.dumps({'slope': 'steep'})))
    res = BuildWorker(s, eng, BuildOptions(publish=False)).run_once()
    assert [r.status for r in res] == ['failed']
    assert "parameter 'slope' must be float" in run_rows(eng)[rid]['error']
    # the command line says why and exits 1
    env = child_env(s)
    for args, msg in [(['build', 'build_../../x'], "not a model name: 'build_../../x'"),
                      (['build', 'xgb'], "unknown model 'xgb'"),
                      (['build', 'dtr', '-p', 'depth', '3'], "unknown parameter 'depth' for dtr"),
                      (['build', 'dtr', '-p', 'max_depth', 'deep'], "parameter 'max_depth' must be int, got str 'deep'")]:
        r = streamml(*args, env=env, check=False)
        assert r.returncode == 1 and f'error: {msg}' in r.stderr, (args, r.stderr)
    eng.dispose()

# ---------------------------------------------------------------- concurrency

@pytest.mark.parametrize('backend', ['sqlite', 'mariadb'])
def test_concurrent_requests_one_build_one_follow_up(tmp_path, project, backend, request):
    url = request.getfixturevalue('mariadb_url') if backend == 'mariadb' else None
    s = home(tmp_path, project, db_url=url); eng = db(s)
    bad_loads, loads, stop_reader = [], [0], threading.Event()
    def reader():   # the loader must never see a half-written version
        while not stop_reader.is_set():
            for v in registry.list_versions(s, 'tiny'):
                try: registry.load_version(v).predict(np.ones((1, 3))); loads[0] += 1
                except Exception as e: bad_loads.append(repr(e))
    threading.Thread(target=reader, daemon=True).start()
    # two workers with their own engines, as two events processes on two machines
    workers = [BuildWorker(s, make_engine(s), BuildOptions(publish=False), poll=0.05) for _ in range(2)]
    workers[0].owner, workers[1].owner = 'machine-a:1', 'machine-b:1'
    for w in workers: w.start()
    try:
        with eng.begin() as c: first, _ = request_build(c, s, CommandEvent('tiny', 'command', parameters={'sleep': 5.0}))
        wait_for(lambda: run_rows(eng)[first]['status'] == 'running', what='first build running')
        ids = []
        def ask():
            e = make_engine(s)
            with e.begin() as c: ids.append(request_build(c, s, CommandEvent('tiny', 'command', parameters={'sleep': 0.5})))
            e.dispose()
        ts = [threading.Thread(target=ask) for _ in range(6)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert run_rows(eng)[first]['status'] == 'running'           # all six arrived during the build
        wait_for(lambda: all(r['status'] in ('succeeded', 'merged', 'failed') for r in run_rows(eng).values())
                 and len(run_rows(eng)) == 7, timeout=90, what='all requests done')
    finally:
        for w in workers: w.stop()
        stop_reader.set()
    rows = run_rows(eng)
    built = sorted((r for r in rows.values() if r['status'] == 'succeeded'), key=lambda r: r['started_at'])
    assert len(built) == 2 and built[0]['run_id'] == first, [(r['status'], r['error']) for r in rows.values()]
    assert built[0]['finished_at'] <= built[1]['started_at']          # one build at a time
    follow = built[1]['run_id']
    merged = [r for r in rows.values() if r['status'] == 'merged']
    def served_by(r):   # follow merged_into to the run that built it
        while r['status'] == 'merged': r = rows[r['merged_into']]
        return r['run_id']
    assert len(merged) == 5 and all(served_by(r) == follow for r in merged)   # none lost, all served by the follow-up
    assert not bad_loads and loads[0] > 0, bad_loads
    assert len(registry.list_versions(s, 'tiny')) == 2
    for w in workers: w.engine.dispose()
    eng.dispose()

def test_stopped_worker_requeues_its_build(tmp_path, project):
    s = home(tmp_path, project); eng = db(s)
    w = BuildWorker(s, eng, BuildOptions(publish=False), poll=0.05).start()
    with eng.begin() as c: rid, _ = request_build(c, s, CommandEvent('tiny', 'command', parameters={'sleep': 60.0}))
    wait_for(lambda: run_rows(eng)[rid]['status'] == 'running', what='build running')
    wait_for(lambda: s.path('runs', f'{rid}.ipynb').exists(), what='papermill running')
    t0 = time.monotonic(); w.stop()
    assert time.monotonic() - t0 < 1.5                               # papermill and its kernel killed within about a second
    assert run_rows(eng)[rid]['status'] == 'requested'               # interrupted, queued again: not lost
    with eng.begin() as c: c.execute(sa.update(runs).where(runs.c.run_id == rid).values(parameters=json.dumps({'sleep': 0.0})))
    res = BuildWorker(s, eng, BuildOptions(publish=False)).run_once()
    assert [(r.run_id, r.status) for r in res] == [(rid, 'succeeded')]
    eng.dispose()

# ---------------------------------------------------------------- gate, rollback, announcements

def test_gate_rollback_and_updates_on_mariadb(settings, mariadb_url):
    s = settings.with_(db_url=mariadb_url); eng = db(s)
    store_generated(eng, 400, seed=3)
    c = make_consumer(s, s.topics.model_update_topic, group_id=None)
    first = build(s, 'dtr', {'max_depth': 3}, engine=eng)
    worse = build(s, 'dtr', {'max_depth': 1}, engine=eng)
    better = build(s, 'dtr', {'max_depth': 8, 'min_samples_leaf': 1}, engine=eng)
    assert first.promoted and not worse.promoted and better.promoted, (first.line(), worse.line(), better.line())
    assert better.metric > first.metric > worse.metric
    with eng.connect() as conn:
        vs = {r.version: r for r in conn.execute(sa.select(model_versions))}
    assert vs[worse.version].status == 'rejected' and ' < champion ' in vs[worse.version].reason
    assert registry.get_version(s, 'dtr', worse.version)                      # kept on disk
    assert registry.current_champion(eng, 'dtr')['version'] == better.version
    v, old = rollback_model(s, 'dtr', eng)
    assert (v.version, old) == (first.version, better.version)
    assert registry.load_champion(s, eng, 'dtr').info()['version'] == first.version
    with eng.connect() as conn:
        hist = [(r.action, r.version) for r in conn.execute(sa.select(champion_history).order_by(champion_history.c.id))]
    assert hist == [('promote', first.version), ('promote', better.version), ('rollback', first.version)]
    got = []
    wait_for(lambda: got.extend(m for ms in c.poll(200).values() for m in ms) or len(got) >= 3, what='three model updates')
    c.close()
    msgs = [(m.key, json.loads(m.value)) for m in got]
    assert [(k, m['action'], m['version']) for k, m in msgs] == [(b'dtr', 'promote', first.version), (b'dtr', 'promote', better.version),
                                                                 (b'dtr', 'rollback', first.version)]
    with pytest.raises(Exception, match='no earlier champion'): rollback_model(s, 'dtr', eng, publish=False)
    with eng.connect() as conn: assert conn.execute(sa.select(sa.func.count()).select_from(training_log)).scalar() == 3
    eng.dispose()

# ---------------------------------------------------------------- every model end to end

def test_each_model_builds_end_to_end(tmp_path, project):
    s = home(tmp_path, project); eng = db(s)
    store_generated(eng, 300, seed=5)
    res = {m: build(s, m, p, 'cli', engine=eng) for m, p in
           [('mlp', {'epochs': 5}), ('slr', None), ('dtr', {'max_depth': 6})]}
    for m, r in res.items():
        assert r.status == 'succeeded' and r.promoted, r.line()
        p = registry.load_champion(s, eng, m)
        assert p.info()['version'] == r.version and len(p.predict(np.array([[3., 4., 5.], [9., 9., 9.]]))) == 2
        man = registry.get_version(s, m, r.version).manifest
        assert man['run_id'] == r.run_id and man['data']['rows'] == 300 and man['n_features'] == 3
    assert (registry.get_version(s, 'mlp', res['mlp'].version).path/'model.keras').exists()
    assert res['mlp'].metric > 0.3 and res['dtr'].metric > 0.3 and res['slr'].metric_name == 'r2'
    with eng.connect() as c:
        tl = {r.model_type: r for r in c.execute(sa.select(training_log))}
        lm = c.execute(sa.select(linear_model)).one()
    assert {m: round(tl[m].model_accuracy, 6) for m in tl} == {m: round(r.metric, 6) for m, r in res.items()}
    assert all(tl[m].execution_time > 0 and tl[m].train_eval_split == 0.65 for m in tl)
    assert lm.uuid == tl['slr'].uuid
    assert all(Path(r.notebook).exists() for r in res.values())
    eng.dispose()

def test_cli_build_status_prune_and_bench(tmp_path, project):
    s = home(tmp_path, project); eng = db(s)
    store_generated(eng, 200, seed=6)
    env = child_env(s)
    for depth, verdict in (('6', 'PROMOTED'), ('1', 'rejected')):
        r = streamml('build', 'dtr', '-p', 'max_depth', depth, '--trigger', 'cron', env=env)
        assert 'dtr: run ' in r.stdout and ' succeeded in ' in r.stdout and verdict in r.stdout, r.stdout
    out = streamml('status', 'dtr', env=env).stdout
    assert '== dtr: champion ' in out and 'cron' in out and 'succeeded' in out
    r = streamml('prune', 'dtr', '--keep', '0', env=env).stdout
    assert 'dtr: removed 1 versions, 1 run notebooks' in r, r
    assert len(registry.list_versions(s, 'dtr')) == 1
    assert registry.load_champion(s, eng, 'dtr')                        # the champion survives pruning
    lines = bench_build(s, ['--model', 'dtr', '--rows', '100'])
    assert [l['system'] for l in lines] == ['papermill', 'streamml'] and lines[1]['ratio'] > 0
    eng.dispose()

# ---------------------------------------------------------------- bounds, queue cap, memory limit (issue 11)

def test_out_of_bounds_and_huge_parameters_are_refused(tmp_path, project):
    s = home(tmp_path, project); eng = db(s)
    for model, params, msg in [('mlp', {'hidden': 10**7}, "parameter 'hidden' must be at most 1024 (declared [1, 1024] in mlp.ipynb), got 10000000"),
                               ('dtr', {'max_depth': 10**9}, "parameter 'max_depth' must be at most 64 (declared [1, 64] in dtr.ipynb)"),
                               ('dtr', {'max_depth': 10**400}, "parameter 'max_depth' must be at most 64 (declared [1, 64] in dtr.ipynb), got <1329-bit integer>"),
                               ('mlp', {'learning_rate': 10**400}, "parameter 'learning_rate' must be float, got int <1329-bit integer>"),
                               ('mlp', {'split': 0}, "parameter 'split' must be above 0 (declared (0, 1) in mlp.ipynb), got 0.0"),
                               ('dtr', {'criterion': 'chaos'}, "parameter 'criterion' must be one of gini, entropy, log_loss, got 'chaos'")]:
        with pytest.raises(ParameterError, match=re.escape(msg)): build(s, model, params, engine=eng)
        with eng.begin() as c:
            with pytest.raises(ParameterError, match=re.escape(msg)): request_build(c, s, CommandEvent(model, parameters=params))
    assert run_rows(eng) == {}                                          # refused before anything was recorded
    env = child_env(s)
    for args, msg in [(['build', 'dtr', '-p', 'max_depth', '9' * 5000], "error: parameter 'max_depth' must be int, got str '9999"),
                      (['build', 'mlp', '-p', 'hidden', '10000000'], "error: parameter 'hidden' must be at most 1024"),
                      (['build', 'mlp', '-p', 'learning_rate', '1e999'], "error: parameter 'learning_rate' must be a finite number, got '1e999'")]:
        r = streamml(*args, env=env, check=False)
        assert r.returncode == 1 and msg in r.stderr, (args, r.stderr[-500:])
    eng.dispose()

@pytest.mark.parametrize('backend', ['sqlite', 'mariadb'])
def test_queue_cap_per_model(tmp_path, project, backend, request, monkeypatch):
    url = request.getfixturevalue('mariadb_url') if backend == 'mariadb' else None
    s = home(tmp_path, project, db_url=url); eng = db(s)
    monkeypatch.setenv('STREAMML_BUILD_MAX_QUEUED', '2')
    with eng.begin() as c:
        assert [request_build(c, s, CommandEvent('tiny', parameters={'slope': k}))[1] for k in (1, 2)] == ['requested'] * 2
        with pytest.raises(QueueFullError, match=re.escape('tiny already has 2 builds waiting, the most allowed (STREAMML_BUILD_MAX_QUEUED=2)')) as e:
            request_build(c, s, CommandEvent('tiny', parameters={'slope': 3}))
        assert e.value.status == 429 and isinstance(e.value, ValidationError)
        assert request_build(c, s, CommandEvent('tiny', parameters={'slope': 2}))[1] == 'merged'   # merging adds no build
        assert request_build(c, s, CommandEvent('slr'))[1] == 'requested'                          # other models are not held up
    assert [r.status for r in BuildWorker(s, eng, BuildOptions(publish=False)).run_once() if r.model == 'tiny'] == ['succeeded']
    with eng.begin() as c: assert request_build(c, s, CommandEvent('tiny', parameters={'slope': 3}))[1] == 'requested'  # room again
    eng.dispose()

def test_build_over_its_memory_limit_fails_readably_and_keeps_the_champion(tmp_path, project):
    s = home(tmp_path, project); eng = db(s)
    ok = build(s, 'tiny', engine=eng)
    big = build(s, 'tiny', {'allocate_mb': 3000, 'slope': 1.0}, engine=eng, memory_mb=1536)
    assert big.status == 'failed', big.line()
    assert big.error.startswith('the build exceeded its memory limit of 1536 MiB (STREAMML_BUILD_MEMORY_MB): '), big.error
    assert 'Unable to allocate' in big.error and run_rows(eng)[big.run_id]['error'] == big.error
    assert registry.current_champion(eng, 'tiny')['version'] == ok.version
    assert [v.version for v in registry.list_versions(s, 'tiny')] == [ok.version]     # nothing half-saved
    fine = build(s, 'tiny', {'allocate_mb': 300, 'slope': 1.0}, engine=eng, memory_mb=1536)
    assert fine.status == 'succeeded' and not fine.promoted                            # the limit failed it, not the notebook
    assert BuildOptions().timeout == 900 and BuildOptions().memory_mb == 8192         # the defaults
    eng.dispose()
