"""Reliability of the events pipeline (issue 3): kill -9 mid-stream, MariaDB stopped mid-stream, broker restarted.

Real parts only: `python -m streamml.cli events` as a child process, the embedded broker, SQLite and the MariaDB daemon.
"""
import json, os, signal, subprocess, sys, threading, time, uuid
from pathlib import Path
import pytest, sqlalchemy as sa
from conftest import settings_for, unique_topics, ROOT
from test_events import wait_for, Service, rows_of, scalar, archived
from streamml.broker import EmbeddedBroker, create_topics
from streamml.procs import free_port
from streamml.config import child_env, make_producer, make_admin
from streamml.db import make_engine, training_data, consumer_offsets
from streamml.events import load_offsets
from streamml.messages import training_event
from streamml.testing import scratch_database, mariadb_up, stop_mariadb, start_mariadb


def count_rows(s) -> int:
    try: return scalar(s, sa.select(sa.func.count()).select_from(training_data))
    except sa.exc.DBAPIError: return 0    # tables not created yet

def produce(s, payloads, pace=None):
    "Send training events (optionally `pace` = (chunk, seconds between chunks)); return when all are acknowledged."
    p = make_producer(s)
    try:
        for i, r in enumerate(payloads):
            p.send(s.topics.event_topic, training_event(r))
            if pace and (i + 1) % pace[0] == 0: p.flush(); time.sleep(pace[1])   # a stream, not readiness
        p.flush()
    finally: p.close()

def start_events(s, *extra):
    "`streamml events` as a child process with the test's settings."
    return subprocess.Popen([sys.executable, '-m', 'streamml.cli', 'events', '--no-builds', '--no-scoring', *extra],
                            env=child_env(s), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize('backend', ['sqlite', 'mariadb'])
def test_kill9_mid_stream_then_restart_exactly_once(request, settings, broker, backend):
    s = settings.with_(db_url=request.getfixturevalue('mariadb_url')) if backend == 'mariadb' else settings
    n = 20_000
    payloads = [f'{i % 10},{(i // 10) % 10},{(i // 100) % 10},{i % 11}' for i in range(n)]
    produce(s, payloads)
    group = f'kill-{uuid.uuid4().hex[:8]}'
    p = start_events(s, '--group', group, '--max-records', '250')
    try:
        wait_for(lambda: count_rows(s) >= 2_000 or p.poll() is not None, 60, '2,000 rows stored')
        p.send_signal(signal.SIGKILL); p.wait(10)
        at_kill = count_rows(s)
        assert 0 < at_kill < n, f'the kill should land mid-stream, {at_kill} rows were stored'
        p = start_events(s, '--group', group)    # same group: resumes from the database's offsets
        wait_for(lambda: count_rows(s) >= n or p.poll() is not None, 90, f'{n} rows after the restart')
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, out[-3000:]                # graceful stop: batch finished, committed, closed
        assert 'stopped after' in out
    finally:
        if p.poll() is None: p.kill(); p.wait()
    rows = rows_of(s, ('source_offset', 'payload'))
    assert len(rows) == n                                    # exactly once
    assert [o for o, _ in rows] == list(range(n))            # no duplicate coordinates, none missing
    assert sorted(r for _, r in rows) == sorted(payloads)
    eng = make_engine(s)
    with eng.connect() as c: assert load_offsets(c, group, broker.cluster_id, s.topics.event_topic) == {0: n}
    eng.dispose()
    assert {l['offset'] for l in archived(s)} == set(range(n))   # archive complete (at-least-once: duplicates allowed)


# -- MariaDB outage ----------------------------------------------------------------------------------------------

def kafka_committed(s, group) -> int|None:
    "The group's committed offset of event_topic[0] in Kafka."
    a = make_admin(s)
    try:
        offs = a.list_group_offsets(group).get(group, {})
        return next((v.offset for tp, v in offs.items() if tp.topic == s.topics.event_topic and tp.partition == 0), None)
    finally: a.close()


@pytest.fixture
def outage_db():
    "A fresh MariaDB database; the server is started again (if a test stopped it) before it is dropped."
    with scratch_database() as url:
        try: yield url
        finally: start_mariadb()


def test_mariadb_stopped_10s_mid_stream(settings, outage_db):
    s = settings.with_(db_url=outage_db)
    n, group = 6_000, f'outage-{uuid.uuid4().hex[:8]}'
    payloads = [f'{i % 10},{(i // 10) % 10},{(i // 100) % 10},{i % 11}' for i in range(n)]
    feeder = threading.Thread(target=produce, args=(s, payloads, (200, 0.1)), daemon=True)   # ~3 s of stream... and more
    with Service(s, group=group, max_records=100, scoring=False) as svc:
        feeder.start()
        wait_for(lambda: svc.stored >= 500, 60, '500 rows stored')
        try:
            stop_mariadb()
            wait_for(lambda: not mariadb_up(), 30, 'MariaDB to stop')
            wait_for(lambda: svc.r.down_since is not None, 30, 'the service to notice the outage')
            stored_before = svc.stored
            committed = kafka_committed(s, group)
            t_end = time.monotonic() + 10                      # the outage lasts 10 s
            while time.monotonic() < t_end:
                assert svc.th.is_alive()
                assert kafka_committed(s, group) == committed  # nothing committed while nothing can be stored
                time.sleep(0.5)
            assert svc.stored == stored_before
            assert svc.r.consumer.paused()                   # paused, still polling (group liveness)
        finally: start_mariadb()
        feeder.join(60)
        wait_for(lambda: svc.events >= n and count_rows(s) >= n, 90, 'every event stored after the outage')
        assert svc.th.is_alive() and svc.r.stats['failed_batches'] >= 1
    rows = rows_of(s, ('source_offset', 'payload'))
    assert [o for o, _ in rows] == list(range(n))              # nothing lost, nothing twice
    assert committed is not None and committed <= rows[-1][0] + 1
    assert kafka_committed(s, group) == n                      # Kafka's commit caught up with the database


# -- broker restart ------------------------------------------------------------------------------------------------

def test_broker_restart_with_existing_db(tmp_path):
    """A restarted embedded broker starts again at offset 0 with a new cluster id: its events are stored, not skipped.

    Tansu only, by nature: it keeps its log in memory, so a restart is a new, empty cluster. Apache Kafka keeps its log
    and its cluster id across restarts; its restarts (kill -9 of a node under load) are in tests/test_cluster.py."""
    port = free_port()
    db = f'sqlite:///{tmp_path}/keep.db'
    topics = unique_topics('br')
    with EmbeddedBroker(port) as b1:
        s1 = settings_for(tmp_path/'home', b1, db, topics); create_topics(s1)
        produce(s1, [f'1,2,3,{i % 11}' for i in range(50)])
        with Service(s1, group='g') as svc: svc.wait_events(50)
    with EmbeddedBroker(port) as b2:                           # same address, fresh memory, new cluster id
        assert b2.cluster_id != b1.cluster_id
        s2 = settings_for(tmp_path/'home', b2, db, topics); create_topics(s2)
        produce(s2, [f'4,5,6,{i % 11}' for i in range(30)])
        with Service(s2, group='g') as svc: svc.wait_events(30)
    rows = rows_of(s2, ('cluster_id', 'source_offset', 'payload'))
    assert len(rows) == 80
    assert sorted(o for c, o, _ in rows if c == b2.cluster_id) == list(range(30))   # offsets 0..29 again, all stored
    eng = make_engine(s2)
    with eng.connect() as c:
        assert load_offsets(c, 'g', b1.cluster_id, topics.event_topic) == {0: 50}
        assert load_offsets(c, 'g', b2.cluster_id, topics.event_topic) == {0: 30}
    eng.dispose()
