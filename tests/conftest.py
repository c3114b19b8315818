"""Shared fixtures: one embedded broker per test session, a MariaDB database per run, isolated settings.

Tests that claim integration use these real parts: the Kafka protocol through kafka-python against Tansu,
MariaDB on 127.0.0.1:3306 (`scripts/start-mariadb.sh` installs, starts and sets it up), SQLite files in a
temporary home. The helpers themselves live in `streamml.testing`, shared with the benchmarks.
"""
import os, subprocess, sys
from pathlib import Path
import pytest
from streamml.broker import EmbeddedBroker, create_topics
from streamml.procs import free_port
from streamml.testing import wait_for, unique_topics, settings_for, scratch_database, mariadb_server

ROOT = Path(__file__).resolve().parent.parent
MARIADB_SERVER = mariadb_server()

@pytest.fixture(scope='session')
def broker(tmp_path_factory):
    "The session's embedded broker (Tansu) on a free loopback port."
    log = tmp_path_factory.mktemp('broker')/'broker.log'
    with EmbeddedBroker(free_port(), log_path=log) as b: yield b

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
    with scratch_database() as url: yield url

def streamml(*args, env=None, timeout=120, check=True, **kw):
    "Run the `streamml` command line in a child process; returns the CompletedProcess."
    r = subprocess.run([sys.executable, '-m', 'streamml.cli', *map(str, args)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, **kw)
    if check and r.returncode != 0: raise AssertionError(f'streamml {args} -> {r.returncode}\n{r.stdout}\n{r.stderr}')
    return r
