"""Reproducible research (issue 10) with real parts: papermill kernels, TensorFlow, SQLite, the events service
on the embedded broker writing the real event archive, the `streamml` CLI.

Each model is built and made again by `streamml reproduce` (identical arrays); the rows are rebuilt from the
event archive alone into a fresh database; a changed stored row and a changed library version are reported.
"""
import json, threading, uuid
from pathlib import Path
import numpy as np, pytest, sqlalchemy as sa
from conftest import streamml, settings_for, wait_for
from streamml import registry, provenance
from streamml.admin import lineage_text
from streamml.builds import run_build
from streamml.client import send_training
from streamml.config import child_env
from streamml.procs import StopFlag
from streamml.data import judges, csv_rows
from streamml.db import make_engine, init_db, training_data, runs
from streamml.events import events_runner, EventsOptions
from streamml.messages import CommandEvent
from streamml.params import BuildOptions
from streamml.reproduce import reproduce
from streamml.train import store_generated

OPTS = BuildOptions(publish=False)

def test_each_model_reproduces_identically_and_changes_are_named(tmp_path):
    s = settings_for(tmp_path/'home', STREAMML_BOOTSTRAP_SERVERS='127.0.0.1:9'); eng = make_engine(s); init_db(eng)
    store_generated(eng, 300, seed=5)
    built = {m: run_build(s, CommandEvent(m, parameters=p), OPTS, engine=eng) for m, p in
             [('mlp', {'epochs': 5}), ('dtr', {'max_depth': 6}), ('slr', None)]}
    for m, b in built.items():
        assert b.status == 'succeeded', b.line()
        man = registry.get_version(s, m, b.version).manifest
        assert man['format'] == 2 and man['data']['rows'] == 300 and len(man['data']['sha256']) == 64
        assert man['notebook']['path'] == f'nbs/train/{m}.ipynb' and man['executed']['path'] == b.notebook
        assert man['executed']['digest'] == provenance.file_digest(b.notebook) and man['git']['commit']
        r = reproduce(s, m, b.version, eng)
        assert r.ok and r.mode == 'exact', r.text()                         # mlp too: TensorFlow's deterministic ops
        assert any(x.startswith('serving arrays identical') for x in r.matched), r.text()
    # the command line: a match exits 0 and says so
    env = child_env(s)
    out = streamml('reproduce', 'dtr', built['dtr'].version, env=env, timeout=300)
    assert out.stdout.startswith(f'reproduce dtr {built["dtr"].version}: MATCH (exact, '), out.stdout
    # a changed library version is named in the report
    v = registry.get_version(s, 'slr', built['slr'].version)
    env_rec = v.manifest['environment']
    registry.amend_manifest(v, environment={**env_rec, 'packages': {**env_rec['packages'], 'numpy': '0.0.1'}})
    r = reproduce(s, 'slr', v.version, eng)
    assert r.ok and f'package numpy: recorded 0.0.1, now {np.__version__}' in r.environment, r.text()
    assert f'environment: package numpy: recorded 0.0.1, now {np.__version__}' in r.text()
    # one stored training row changed: the data hash differs, the command exits 1
    with eng.begin() as c: c.execute(sa.update(training_data).where(training_data.c.id == 42).values(payload='10,10,10,0'))
    bad = streamml('reproduce', 'dtr', built['dtr'].version, env=env, timeout=300, check=False)
    assert bad.returncode == 1 and 'MISMATCH' in bad.stdout, bad.stdout + bad.stderr
    assert f'DIFFERS: data: 300 rows, sha256 ' in bad.stdout and f'(recorded 300 rows, sha256 {registry.get_version(s, "dtr", built["dtr"].version).manifest["data"]["sha256"][:12]})' in bad.stdout
    eng.dispose()

def test_no_churn_unchanged_build_makes_no_version(tmp_path):
    s = settings_for(tmp_path/'home', STREAMML_BOOTSTRAP_SERVERS='127.0.0.1:9'); eng = make_engine(s); init_db(eng)
    store_generated(eng, 200, seed=8)
    env = child_env(s)
    first = streamml('build', 'dtr', env=env).stdout
    again = streamml('build', 'dtr', env=env).stdout
    assert ' succeeded in ' in first and 'PROMOTED' in first, first
    assert ' unchanged in ' in again and 'no new version' in again, again
    assert len(registry.list_versions(s, 'dtr')) == 1
    with eng.connect() as c: st = [r.status for r in c.execute(sa.select(runs.c.status).order_by(runs.c.requested_at))]
    assert st == ['succeeded', 'unchanged']
    v = registry.list_versions(s, 'dtr')[0]
    lin = streamml('status', 'dtr', '--version', v.version, env=env).stdout
    assert lin.startswith(f'== dtr {v.version}: promoted') and f'executed notebook: {v.manifest["executed"]["path"]} sha256 ' in lin, lin
    assert f'make it again: streamml reproduce dtr {v.version}' in lin
    eng.dispose()

def test_reproduce_from_the_archive_alone(settings, tmp_path):
    s = settings
    X, y = judges(300, 11)
    svc, stop = events_runner(s, EventsOptions(group=f'repro-{uuid.uuid4().hex[:8]}', builds=False, scoring=False)), StopFlag()
    th = threading.Thread(target=svc.run, args=(stop,), daemon=True); th.start()
    try:
        send_training(s, csv_rows(X, y))
        wait_for(lambda: svc.proc.stats['stored'] >= 300 or not th.is_alive(), 90, '300 rows stored')
    finally:
        stop.set(); th.join(60)
    eng = make_engine(s)
    b = run_build(s, CommandEvent('dtr', parameters={'max_depth': 5}), OPTS, engine=eng)
    assert b.status == 'succeeded', b.line()
    seg = registry.get_version(s, 'dtr', b.version).manifest['data']['segments']
    assert len(seg) == 1 and seg[0][1] == s.topics.event_topic and seg[0][5] == 300
    # a fresh, empty database: the rows come from the archive alone
    fresh = s.with_(db_url=f'sqlite:///{tmp_path}/fresh.db')
    r = reproduce(fresh, 'dtr', b.version, from_archive=True)
    assert r.ok and r.mode == 'exact', r.text()
    with make_engine(fresh).connect() as c:
        assert not sa.inspect(c).has_table('training_data') or c.execute(sa.select(sa.func.count()).select_from(training_data)).scalar() == 0
    # the lineage names the archive files that hold its events
    lin = lineage_text(s, eng, 'dtr', b.version)
    assert 'archive files: events.' in lin and '.jsonl' in lin, lin
    assert f'run: {b.run_id} (command, succeeded' in lin and 'data: 300 rows' in lin
    eng.dispose()
