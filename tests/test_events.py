"""The events pipeline (issue 3) against real parts: the embedded broker, SQLite and MariaDB, the `streamml` CLI.

Dead letters, replay, the 2018 messages and the CLI. The reliability tests that kill or stop things are in
test_events_reliability.py.
"""
import json, os, subprocess, sys, threading, time, urllib.request, uuid
from pathlib import Path
import pytest, sqlalchemy as sa
from conftest import streamml, unique_topics, ROOT, wait_for
from streamml.broker import create_topics
from streamml.procs import free_port
from streamml.config import child_env, make_consumer, make_producer
from streamml.procs import StopFlag
from streamml.db import make_engine, training_data, dead_letters, event_counters, runs, consumer_offsets
from streamml.events import events_runner, EventsOptions
from streamml.archive import archive_files, replay
from streamml.testing import stand_in_project
from streamml.messages import training_event
from streamml.client import send_training


class Service:
    "The events service in a thread (the same runner `streamml events` runs)."
    def __init__(self, s, **kw):
        kw.setdefault('group', f'test-{uuid.uuid4().hex[:8]}')
        self.r, self.stop = events_runner(s, EventsOptions(builds=False, **kw)), StopFlag()
        self.th = threading.Thread(target=self.r.run, args=(self.stop,), daemon=True)
    def __enter__(self): self.th.start(); return self
    def __exit__(self, *exc):
        self.stop.set(); self.th.join(60)
        assert not self.th.is_alive(), 'events service did not stop'
    @property
    def events(self) -> int: return self.r.stats['records']
    @property
    def stored(self) -> int: return self.r.proc.stats['stored']
    def wait_events(self, n, timeout=60):
        wait_for(lambda: self.events >= n or not self.th.is_alive(), timeout, f'{n} events processed')
        assert self.th.is_alive(), 'events service died'


def rows_of(s, cols=('cluster_id', 'source_topic', 'source_partition', 'source_offset', 'payload', 'event_time')):
    "Every stored training row as tuples, sorted."
    eng = make_engine(s)
    try:
        with eng.connect() as c: return sorted(tuple(r) for r in c.execute(sa.select(*[training_data.c[k] for k in cols])))
    finally: eng.dispose()

def scalar(s, q):
    eng = make_engine(s)
    try:
        with eng.connect() as c: return c.execute(q).scalar()
    finally: eng.dispose()

def read_topic(s, topic, n, timeout=30):
    "The first `n` records of `topic` (fresh group)."
    c = make_consumer(s, topic, group_id=f'read-{uuid.uuid4().hex[:8]}')
    got, deadline = [], time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline: got += [m for ms in c.poll(200).values() for m in ms]
    finally: c.close()
    return got

def archived(s):
    "Every line of the built-in archive, parsed."
    return [json.loads(l) for p in archive_files(s) for l in p.read_text().splitlines()]

@pytest.fixture(params=['sqlite', 'mariadb'])
def db_settings(request, settings, tmp_path):
    "Settings on SQLite or on a fresh MariaDB database, with a stand-in project (config/ and three training notebooks)."
    s = settings.with_(project_root=stand_in_project(tmp_path/'proj'))
    return s.with_(db_url=request.getfixturevalue('mariadb_url')) if request.param == 'mariadb' else s


# 44 distinct bad events: each must end up in the dead-letter topic, the table and the archive with its reason.
BAD = [b'not json', b'{', b'{"type":', b'[]', b'[1,2]', b'"a string"', b'42', b'null', b'true', b'\xff\xfe', b'\xc3\x28',
       b'{"type":"training","payload":"3,4,5,6\xff"}', b'{}', b'{"payload":"1,2,3,4"}', b'{"type":"other","payload":"1,2,3,4"}',
       b'{"type":null}', b'{"type":7,"payload":"1,2,3,4"}', b'{"type":"training"}', b'{"type":"training","payload":3}',
       b'{"type":"training","payload":["1","2","3","4"]}', b'{"type":"training","payload":""}', b'{"type":"training","payload":"1,2,3"}',
       b'{"type":"training","payload":"1,2,3,4,5"}', b'{"type":"training","payload":"1"}', b'{"type":"training","payload":"a,b,c,d"}',
       b'{"type":"training","payload":"1,2,x,4"}', b'{"type":"training","payload":"nan,2,3,4"}', b'{"type":"training","payload":"1,inf,3,4"}',
       b'{"type":"training","payload":"1,2,-inf,4"}', b'{"type":"training","payload":"1,2,3,NaN"}', b'{"type":"training","payload":"1,2,3,4.5"}',
       b'{"type":"training","payload":"1,,3,4"}', b'{"type":"training","payload":"1;2;3;4"}', b'{"type":"command"}',
       b'{"type":"command","payload":"build_xgb"}', b'{"type":"command","payload":"build_../../etc/passwd"}',
       b'{"type":"command","payload":"build_mlp; rm -rf /"}', b'{"type":"command","payload":"http://evil/api/build_mlp"}',
       b'{"type":"command","payload":"delete_mlp"}', b'{"type":"command","payload":42}', b'{"type":"command","payload":"build_MLP"}',
       b'{"type":"command","payload":"build_mlp","trigger":"Bad Trigger!"}', b'{"type":"command","payload":"build_mlp","parameters":[1]}',
       b'{"type":"training","payload":"' + b'1,' * 40_000 + b'1"}']  # oversize: beyond the 65,536-byte limit


def test_bad_events_dead_lettered(db_settings):
    s = db_settings
    assert len(set(BAD)) == len(BAD) >= 40
    p = make_producer(s, max_request_size=2**20)
    sent = []   # (value, is_bad)
    for i, bad in enumerate(BAD):
        for v, is_bad in ((training_event(f'{i % 10},{i % 7},{i % 5},{i % 11}'), False), (bad, True)):
            p.send(s.topics.event_topic, v); sent.append((v, is_bad))
    p.send(s.topics.event_topic, b'{"type":"command","payload":"build_mlp"}'); sent.append((None, False))
    p.flush(); p.close()
    port = free_port()
    with Service(s, metrics_port=port) as svc:
        svc.wait_events(len(sent))
        metrics = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10).read().decode()
        assert f'streamml_events_total{{kind="dead_letter"}} {float(len(BAD))}' in metrics
        bad_offsets = {o: v for o, (v, b) in enumerate(sent) if b}
        # dead-letter topic: the original bytes (at most 16 KiB of them), the four headers, size and hash
        dlq = read_topic(s, s.topics.dead_letter_topic, len(BAD))
        assert len(dlq) == len(BAD)
        for m in dlq:
            h = {k: v.decode() for k, v in m.headers}
            assert {'error', 'source_topic', 'source_partition', 'source_offset'} <= h.keys()
            assert h['source_topic'] == s.topics.event_topic and h['error']
            original = bad_offsets[int(h['source_offset'])]
            assert m.value == original[:16384] and int(h['value_size']) == len(original)
        assert {int(dict(m.headers)['source_offset']) for m in dlq} == set(bad_offsets)
        # archive: every event, the bad ones with their reason
        lines = archived(s)
        assert sorted(l['offset'] for l in lines) == list(range(len(sent)))
        assert {l['offset'] for l in lines if l.get('error')} == set(bad_offsets)
        reasons = {l['offset']: l['error'] for l in lines if l.get('error')}
        assert 'not JSON' in reasons[1] and 'exceeds the 65536-byte limit' in reasons[max(bad_offsets)]
        # database: every good row, each bad one counted with its reason
        assert scalar(s, sa.select(sa.func.count()).select_from(training_data)) == len(BAD)
        assert scalar(s, sa.select(sa.func.count()).select_from(dead_letters)) == len(BAD)
        assert scalar(s, sa.select(sa.func.sum(event_counters.c.n)).where(event_counters.c.kind == 'dead_letter')) == len(BAD)
        assert scalar(s, sa.select(runs.c.model)) == 'mlp'     # the good command is a build request
        assert svc.th.is_alive()                                 # still running


def test_replay_same_db_adds_none_empty_db_same_rows(settings, tmp_path):
    s = settings.with_(project_root=stand_in_project(tmp_path/'proj'))
    payloads = [f'{i % 10},{i % 9},{i % 8},{i % 11}' for i in range(300)]
    p = make_producer(s)
    for i, r in enumerate(payloads):
        p.send(s.topics.event_topic, training_event(r))
        if i % 50 == 0: p.send(s.topics.event_topic, b'{"type":"training","payload":"1,2"}')   # some dead letters too
    p.flush(); p.close()
    total = len(payloads) + 6
    with Service(s, group='g1') as svc: svc.wait_events(total)
    before = rows_of(s)
    assert len(before) == len(payloads)
    # replay into the same database: every event comes again, no row is added
    assert replay(s, archive_files(s), progress=False) == (total, [])
    with Service(s, group='g1') as svc: svc.wait_events(total)
    assert rows_of(s) == before
    # replay into an empty database (fresh topics, as after a broker restart): the same rows
    s2 = s.with_(home=tmp_path/'home2', db_url=f'sqlite:///{tmp_path}/empty.db', topics=unique_topics('r'))
    create_topics(s2)
    assert replay(s2, archive_files(s), progress=False) == (total, [])     # the archive of the first home
    with Service(s2) as svc: svc.wait_events(total)
    assert rows_of(s2) == before
    # a time window and an offset window select part of it
    s3 = s2.with_(topics=unique_topics('w')); create_topics(s3)
    assert replay(s3, archive_files(s), window=dict(from_offset=10, to_offset=19), progress=False)[0] == 10
    assert replay(s3, archive_files(s), window=dict(since=4102444800000), progress=False)[0] == 0   # after 2100


def test_replay_raw_kafka_connect_lines(settings, tmp_path):
    "A real Kafka Connect FileStreamSink writes raw values; replaying that file twice stores its rows once."
    s = settings
    raw = tmp_path/'events.txt'
    raw.write_text('{"type":"training","payload":"1,2,3,4"}\n{"type":"training","payload":"5,6,7,8"}\nnot json\n')
    r = streamml('replay', raw, env=child_env(s))
    assert 'replayed 3 events' in r.stdout
    assert replay(s, [raw], progress=False) == (3, [])
    with Service(s) as svc: svc.wait_events(6)
    got = rows_of(s)
    assert [(g[0], g[3], g[4]) for g in got] == [('file:events.txt', 0, '1,2,3,4'), ('file:events.txt', 1, '5,6,7,8')]


def test_send_2018_messages_and_deadletters_cli(settings, tmp_path):
    "The 2018 messages work unchanged through `streamml send`; `streamml deadletters` lists and re-sends after a fix."
    proj = stand_in_project(tmp_path/'proj')
    s = settings.with_(project_root=proj)
    env = child_env(s)
    msgs = ROOT/'messages'
    r = streamml('send', msgs/'training.json', msgs/'build_mlp.json', msgs/'build_slr.json', msgs/'build_dtr.json',
                 '--training', '1,2,3,4', '--training', '2,3,4,5', env=env)
    assert 'sent 2 training rows' in r.stdout
    (tmp_path/'rows.csv').write_text('a,b,c,label\n' + ''.join(f'{i},{i},{i},{i}\n' for i in range(10)))
    streamml('send', '--training-file', tmp_path/'rows.csv', env=env)
    bad = streamml('send', '--training', '1,2,3', env=env, check=False)
    assert bad.returncode == 1 and 'expected 4 columns' in bad.stderr       # checked before sending
    assert streamml('send', '--command', 'build_xgb', env=env, check=False).returncode == 1
    streamml('send', '--command', 'build_xgb', '--no-check', env=env)     # sent anyway: a dead letter
    with Service(s) as svc:
        svc.wait_events(17)
        assert len(rows_of(s)) == 13
        assert sorted(m for (m,) in make_engine(s).connect().execute(sa.select(runs.c.model))) == ['dtr', 'mlp', 'slr']
        out = streamml('deadletters', env=env).stdout
        assert 'no training notebook nbs/train/xgb.ipynb' in out
        dl_id = out.split()[0]
        (proj/'nbs'/'train'/'xgb.ipynb').write_text((proj/'nbs'/'train'/'mlp.ipynb').read_text())   # the fix
        assert 're-sent 1 of 1' in streamml('deadletters', '--resend', dl_id, env=env).stdout
        wait_for(lambda: scalar(s, sa.select(sa.func.count()).select_from(runs).where(runs.c.model == 'xgb')) == 1,
                 30, 'the re-sent command recorded')


def test_bench_ingest_runs_tiny(settings):
    "`streamml bench ingest` works (tiny sizes; timings are never asserted)."
    from streamml.bench_ingest import bench_ingest
    lines = list(bench_ingest(settings, ['--n', '300', '--rounds', '1', '--mysql', 'none', '--mirrors', 'batch']))
    systems = [l['system'] for l in lines]
    assert systems[0] == 'read-only' and 'streamml' in systems
    for l in lines: assert l['bench'] == 'ingest' and l['throughput'] > 0 and l['n'] == 300 and 'ratio' in l
