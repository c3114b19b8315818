"""Hostile input through the real loop (issue 11): the corpus of `streamml.testing` interleaved with legitimate
records, sent to `streamml events` and `streamml predictions` running as child processes, on SQLite and MariaDB.

Each hostile event is dead-lettered with a reason (or, when it is a valid event in disguise, stored once under its
own coordinates); each hostile request is answered with an error and a reason; every legitimate record is stored
exactly once or answered; both services still run; no partition is left behind (lag 0 at the end).
"""
import json, signal, subprocess, sys, time, uuid
import pytest, sqlalchemy as sa
from kafka import TopicPartition
from conftest import ROOT
from streamml.config import child_env, make_producer, make_admin
from streamml.db import make_engine, init_db, training_data, dead_letters, runs
from streamml.messages import training_event, prediction_request
from streamml.testing import hostile_events, hostile_requests, wait_for
from test_serving_helpers import tree_version, linear_version, promote, Responses


def start(s, *argv):
    """A `streamml` service as a child process with the test's settings; its log goes to a file in the home (a pipe
    nobody reads fills up and blocks the service once it has logged 64 KiB)."""
    log = open(s.path(f'{argv[0]}.log'), 'w+b')
    p = subprocess.Popen([sys.executable, '-m', 'streamml.cli', *argv], env=child_env(s), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=log)
    p.log = log
    return p

def send(s, topic, records):
    "Produce `(value, headers, key)` records in order; their offsets."
    p = make_producer(s, max_request_size=4 * 2**20)
    try:
        futs = [p.send(topic, v, key=k, headers=list(h)) for v, h, k in records]
        p.flush()
        return [f.get(10).offset for f in futs]
    finally: p.close(5)

def lag(s, group, topic) -> int:
    "End offsets minus the group's committed offsets, summed over the topic's partitions."
    a = make_admin(s)
    try:
        committed = {tp.partition: m.offset for tp, m in a.list_group_offsets(group).get(group, {}).items() if tp.topic == topic}
    finally: a.close()
    from streamml.config import make_consumer
    c = make_consumer(s, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        if s.kafka_profile != 'embedded': end = c.end_offsets(tps)   # Apache Kafka: ListOffsets(latest), the real API
        else:   # Tansu answers ListOffsets(latest) with 1 whatever the log holds: the high-water marks of a fetch instead
            c.assign(tps); c.seek_to_beginning()
            end = wait_for(lambda: c.poll(100, max_records=1) is not None and all(c.highwater(tp) is not None for tp in tps)
                           and {tp: c.highwater(tp) for tp in tps}, 30, f'the end of {topic}')
    finally: c.close()
    return sum(end[tp] - committed.get(tp.partition, 0) for tp in tps)

@pytest.fixture(params=['sqlite', 'mariadb'])
def hostile_settings(request, settings):
    return settings.with_(db_url=request.getfixturevalue('mariadb_url')) if request.param == 'mariadb' else settings


def test_hostile_corpus_through_the_real_loop(hostile_settings):
    s = hostile_settings
    eng = make_engine(s); init_db(eng)
    vd, _ = tree_version(s); promote(s, eng, vd, announce=False)
    promote(s, eng, linear_version(s), announce=False)
    events, requests = hostile_events(), hostile_requests()
    # every hostile event between two legitimate ones
    good = lambda i: (training_event(f'{i % 10},{(i // 10) % 10},{i % 7},{i % 11}'), (), None)
    ev_records = [good(0)] + [r for i, c in enumerate(events, 1) for r in ((c.value, c.headers, c.key), good(i))]
    ev_offsets = send(s, s.topics.event_topic, ev_records)
    ok_req = lambda i: (prediction_request('dtr', '3,4,5', f'ok{i}'), (), f'ok{i}'.encode())
    rq_records = [r for i, c in enumerate(requests) for r in ((c.value, c.headers, c.key or f'h{i}'.encode()), ok_req(i))]
    send(s, s.topics.prediction_request_topic, rq_records)
    evp = start(s, 'events', '--no-builds', '--group', 'hostile-events')
    prp = start(s, 'predictions', '--group', 'hostile-predictions')
    resp = Responses(s)
    try:
        def outcomes():
            "Offsets stored as rows, recorded as build requests, dead-lettered (with the reason)."
            with eng.connect() as c:
                rows = set(c.execute(sa.select(training_data.c.source_offset).where(training_data.c.source_topic == s.topics.event_topic)).scalars())
                cmds = {int(src.rsplit('@', 1)[1]) for src in c.execute(sa.select(runs.c.source)).scalars() if src}
                dead = dict(c.execute(sa.select(dead_letters.c.source_offset, dead_letters.c.error).where(dead_letters.c.source_topic == s.topics.event_topic)).all())
            return rows, cmds, dead
        wait_for(lambda: sum(map(len, outcomes())) >= len(ev_records) or evp.poll() is not None, 120, 'every event handled')
        keys = [k for _, _, k in rq_records]
        wait_for(lambda: len({r.key for r in resp.poll()} & set(keys)) == len(set(keys)) or prp.poll() is not None, 120, 'every request answered')
        assert evp.poll() is None and prp.poll() is None, 'a service stopped'
        rows, cmds, dead = outcomes()
        stored = rows | cmds
        wrong = []
        for i, case in enumerate(events, 1):
            o = ev_offsets[2 * i - 1]
            ok = (o in dead and dead[o] and o not in stored) if case.expect == 'dead' else (o in stored and o not in dead)
            if not ok: wrong.append((case.name, case.expect, dead.get(o, 'stored' if o in stored else 'missing')))
        assert not wrong, wrong
        legit = [ev_offsets[0]] + [ev_offsets[2 * i] for i in range(1, len(events) + 1)]
        assert all(o in rows and o not in dead for o in legit)              # every legitimate event stored once
        assert len(rows) + len(cmds) + len(dead) == len(ev_records) and not rows & cmds   # nothing twice, nothing lost
        answers = {r.key: json.loads(r.value) for r in resp.records}
        for i, case in enumerate(requests):
            a = answers[case.key or f'h{i}'.encode()]
            if case.expect == 'error': assert 'result' not in a and a['error'], (case.name, a)
            else: assert 'error' not in a and a['result'] is not None, (case.name, a)
            assert 'result' in answers[f'ok{i}'.encode()]                   # the legitimate neighbour
        # no partition left behind
        wait_for(lambda: lag(s, 'hostile-events', s.topics.event_topic) == 0, 30, 'events lag 0')
        wait_for(lambda: lag(s, 'hostile-predictions', s.topics.prediction_request_topic) == 0, 30, 'predictions lag 0')
    finally:
        resp.close()
        for p in (evp, prp):
            if p.poll() is None: p.send_signal(signal.SIGTERM)
        for p in (evp, prp):
            try: assert p.wait(20) == 0, (p.log.seek(0), p.log.read().decode(errors='replace')[-3000:])[1]
            finally:
                if p.poll() is None: p.kill()
        eng.dispose()
