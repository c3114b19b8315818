"""Shared fixtures: one embedded broker per test session, a MariaDB database per run, isolated settings.

Tests that claim integration use these real parts: the Kafka protocol through kafka-python against Tansu,
MariaDB on 127.0.0.1:3306 (`scripts/start-mariadb.sh` starts it), SQLite files in a temporary home.
"""
import os, subprocess, sys, time, uuid
from pathlib import Path
import pytest, sqlalchemy as sa
from streamml.broker import EmbeddedBroker, free_port, create_topics
from streamml.config import load_settings, child_env, Topics

ROOT = Path(__file__).resolve().parent.parent
MARIADB_SERVER = os.environ.get('STREAMML_TEST_MYSQL', 'mysql+pymysql://streamml:streamml@127.0.0.1:3306')

@pytest.fixture(scope='session')
def broker(tmp_path_factory):
    "The session's embedded broker (Tansu) on a free loopback port."
    log = tmp_path_factory.mktemp('broker')/'broker.log'
    with EmbeddedBroker(free_port(), log_path=log) as b: yield b

def unique_topics(tag: str = '') -> Topics:
    "Topic names no other test uses (the broker is shared by the session)."
    sfx = f'{tag}{uuid.uuid4().hex[:8]}'
    return Topics(**{f: f'{f}.{sfx}' for f in Topics.__dataclass_fields__})

def settings_for(home: Path, broker=None, db_url: str|None=None, topics: Topics|None=None, **env):
    "Settings for a test: its own home, a broker (an `EmbeddedBroker` or 'host:port'), topic names; extra STREAMML_* in `env`."
    e = {'STREAMML_HOME': str(home), **{k: str(v) for k, v in env.items()}}
    if broker is not None:
        e |= {'STREAMML_BOOTSTRAP_SERVERS': getattr(broker, 'bootstrap', broker), 'STREAMML_KAFKA_PROFILE': 'embedded'}
    if db_url: e['STREAMML_DB_URL'] = db_url
    s = load_settings(e)
    return s.with_(topics=topics) if topics else s

@pytest.fixture
def settings(tmp_path, broker):
    "Settings with a temporary home (SQLite), the session broker and fresh topics, already created."
    s = settings_for(tmp_path/'home', broker, topics=unique_topics())
    create_topics(s)
    return s

@pytest.fixture
def engine(settings):
    "An engine on the `settings` database (SQLite in the test's home), tables created; disposed afterwards."
    from streamml.db import make_engine, init_db
    e = make_engine(settings); init_db(e)
    yield e
    e.dispose()

@pytest.fixture
def mariadb_url():
    "A fresh MariaDB database for one test, dropped afterwards; its SQLAlchemy URL."
    name = f'streamml_test_{uuid.uuid4().hex[:12]}'
    server = sa.create_engine(MARIADB_SERVER)
    with server.begin() as c: c.exec_driver_sql(f'CREATE DATABASE {name} CHARACTER SET utf8mb4')
    try: yield f'{MARIADB_SERVER}/{name}'
    finally:
        with server.begin() as c: c.exec_driver_sql(f'DROP DATABASE IF EXISTS {name}')
        server.dispose()

def wait_for(cond, timeout=60.0, what='condition', every=0.05):
    "Poll `cond()` until truthy and return its value; fail after `timeout` seconds (a readiness check, not a sleep)."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := cond()): return v
        time.sleep(every)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')

def streamml(*args, env=None, timeout=120, check=True, **kw):
    "Run the `streamml` command line in a child process; returns the CompletedProcess."
    r = subprocess.run([sys.executable, '-m', 'streamml.cli', *map(str, args)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, **kw)
    if check and r.returncode != 0: raise AssertionError(f'streamml {args} -> {r.returncode}\n{r.stdout}\n{r.stderr}')
    return r
