"""No crash loops (issue 11, item 2): a record during which the events service died twice is quarantined at the
third start, and the records behind it are stored.

The service is made to die *while it handles one chosen record*, deterministically: the test holds the SQLite
database's write lock, so the batch that holds the record cannot be stored and stays in flight; when the service's
journal shows the record in flight, the test kills the process with SIGKILL.
"""
import json, signal, sqlite3, subprocess, sys, uuid
import sqlalchemy as sa
from conftest import ROOT
from streamml.config import child_env, make_producer
from streamml.db import make_engine, training_data, dead_letters
from streamml.messages import training_event
from streamml.testing import wait_for


def start(s, group):
    return subprocess.Popen([sys.executable, '-m', 'streamml.cli', 'events', '--no-builds', '--no-scoring', '--group', group],
                            env=child_env(s), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def produce(s, rows):
    p = make_producer(s)
    try:
        for r in rows: p.send(s.topics.event_topic, training_event(r))
        p.flush()
    finally: p.close(5)

def count(s, table) -> int:
    eng = make_engine(s)
    try:
        with eng.connect() as c: return c.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    except sa.exc.DBAPIError: return 0
    finally: eng.dispose()

def in_flight(s, group):
    "The offsets the service's journal says are in flight on partition 0, or None."
    f = s.path('journal', f'events-{group}', f'{s.topics.event_topic}-0.json')
    try: return tuple(json.loads(f.read_text()).get('inflight') or ()) or None
    except (OSError, ValueError): return None


def test_record_that_stopped_the_service_twice_is_quarantined(settings):
    s, group = settings, f'q-{uuid.uuid4().hex[:8]}'
    produce(s, [f'1,1,1,{i % 11}' for i in range(20)])
    p = start(s, group)
    wait_for(lambda: count(s, training_data) == 20, 60, 'the first 20 rows')
    p.send_signal(signal.SIGTERM); assert p.wait(20) == 0
    chosen = 20
    produce(s, ['9,9,9,9'] + [f'2,2,2,{i % 11}' for i in range(30)])
    lock = sqlite3.connect(s.db_url.removeprefix('sqlite:///'), timeout=30)
    lock.execute('BEGIN EXCLUSIVE')                                    # nothing can be stored: the batch stays in flight
    try:
        for attempt, want in ((1, lambda f: f and f[0] == chosen), (2, lambda f: f == (chosen, chosen))):
            p = start(s, group)
            wait_for(lambda: want(in_flight(s, group)) or p.poll() is not None, 60, f'the chosen record in flight ({attempt})')
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            p.send_signal(signal.SIGKILL); p.wait(10)                    # the service dies while it handles the record
    finally: lock.rollback(); lock.close()
    p = start(s, group)                                                  # the third start
    try:
        wait_for(lambda: count(s, training_data) == 50, 60, 'the 30 rows behind the quarantined one')
        eng = make_engine(s)
        with eng.connect() as c:
            dl = c.execute(sa.select(dead_letters.c.source_offset, dead_letters.c.error)).all()
            assert c.execute(sa.select(training_data.c.source_offset).where(training_data.c.source_offset == chosen)).first() is None
        eng.dispose()
        assert dl == [(chosen, 'stopped the service 2 times: quarantined')]
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, p.stderr.read().decode()[-2000:]
