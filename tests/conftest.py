"""Shared fixtures: one broker per engine per test session, a MariaDB database per run, isolated settings.

Tests that claim integration use these real parts: the Kafka protocol through kafka-python against both engines,
MariaDB on 127.0.0.1:3306 (`scripts/start-mariadb.sh` installs, starts and sets it up), SQLite files in a
temporary home. The helpers themselves live in `streamml.testing`, shared with the benchmarks.

Engines. `broker` is one parametrised, session-scoped fixture: every test that uses it (directly, or through
`settings`) runs once against Tansu (the embedded broker, `embedded` client profile) and once against a one-node
Apache Kafka 4.4 cluster (`kafka` profile: idempotent producer, `acks=all`). pytest groups the tests by engine and
tears one broker down before it starts the next, so one broker runs at a time. `STREAMML_TEST_ENGINES=tansu` (or
`kafka`) narrows a run to one engine; the default is both. A test that is about Tansu itself says so with
`@tansu_only` and a reason. Tests parametrised by database run SQLite and MariaDB on Tansu, SQLite on Apache Kafka
(see `pytest_collection_modifyitems`). The 3-node cluster (faults, SCRAM, Kafka Connect) lives in tests/test_cluster.py.
"""
import os, subprocess, sys
from pathlib import Path
import pytest
from streamml.broker import EmbeddedBroker, create_topics
from streamml.procs import free_port
from streamml.testing import wait_for, unique_topics, settings_for, scratch_database, mariadb_server

ROOT = Path(__file__).resolve().parent.parent
MARIADB_SERVER = mariadb_server()
ENGINES = [e.strip() for e in os.environ.get('STREAMML_TEST_ENGINES', 'tansu,kafka').split(',') if e.strip()]
assert ENGINES and set(ENGINES) <= {'tansu', 'kafka'}, f'STREAMML_TEST_ENGINES: tansu and/or kafka, not {ENGINES}'

FULL_MATRIX = os.environ.get('STREAMML_TEST_FULL_MATRIX') == '1'

def pytest_collection_modifyitems(config, items):
    """Engine × database: a test parametrised by database runs on SQLite and MariaDB against Tansu, and on SQLite
    against Apache Kafka; the Apache Kafka × MariaDB combinations (the database layer does not depend on the
    engine) are deselected, shown as such in pytest's summary, to keep `make test` within 30 minutes on 2 cores.
    `STREAMML_TEST_FULL_MATRIX=1` runs them too."""
    if FULL_MATRIX: return
    combo = lambda it: getattr(it, 'callspec', None) and it.callspec.params.get('broker') == 'kafka' and 'mariadb' in it.callspec.params.values()
    drop = [it for it in items if combo(it)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if not combo(it)]

def tansu_only(reason: str):
    "Run a test that uses `broker` on Tansu only; `reason` says why it is about Tansu (shown in the test id's docs)."
    assert reason
    return pytest.mark.parametrize('broker', ['tansu'], indirect=True)

def quiet_ports(n: int) -> int:
    """The first of `n` consecutive free ports below the kernel's ephemeral range, for Kafka nodes that get killed.

    A node's port taken from the ephemeral range (`free_port`) can be gone when the node restarts: clients keep
    reconnecting to the dead port, and on loopback one of those attempts can draw that very port as its own source
    port and connect to itself (TCP simultaneous open), so `restart` finds the port in use. Below the range no
    outgoing connection takes it."""
    import random
    from streamml.procs import port_is_free
    lo = int(Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()[0])
    for _ in range(500):
        base = random.randrange(12_000, lo - n)
        if all(port_is_free(base + i) for i in range(n)): return base
    raise RuntimeError(f'no {n} consecutive free ports below {lo}')

@pytest.fixture(scope='session', params=ENGINES)
def broker(request, tmp_path_factory):
    "The session's broker of one engine: Tansu on a free port, or a one-node Apache Kafka 4.4 cluster (stopped at the end)."
    if request.param == 'tansu':
        with EmbeddedBroker(free_port(), log_path=tmp_path_factory.mktemp('broker')/'broker.log') as b: yield b
        return
    from streamml.cluster import KafkaCluster
    from streamml.jvm import fetch_jars
    with KafkaCluster(tmp_path_factory.mktemp('kafka1')/'kafka', nodes=1, port=quiet_ports(1), jars=fetch_jars()) as c:
        yield c

@pytest.fixture
def engine_name(broker) -> str:
    "'tansu' or 'kafka': the engine of the `broker` this test runs on."
    return 'tansu' if isinstance(broker, EmbeddedBroker) else 'kafka'

@pytest.fixture
def settings(tmp_path, broker):
    "Settings with a temporary home (SQLite), the session broker (with its client profile) and fresh topics, already created."
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

def jvms_under(folder) -> list:
    "Java processes whose command line names `folder` (the nodes and Connect workers of this test session)."
    import psutil
    out = []
    for p in psutil.process_iter(['name', 'cmdline']):
        try:
            cmd = p.info['cmdline'] or []
            if cmd and Path(cmd[0]).name.startswith('java') and str(folder) in ' '.join(cmd): out.append(p)
        except psutil.Error: pass
    return out

@pytest.fixture(scope='session', autouse=True)
def no_jvm_left(tmp_path_factory):
    "After the session (every fixture that started a JVM has stopped it): no Java process of ours still runs."
    yield
    import psutil
    base = tmp_path_factory.getbasetemp()
    left = jvms_under(base)
    if left:
        for p in left: p.kill()
        raise AssertionError(f'{len(left)} Java process(es) left running under {base}: {[p.pid for p in left]}')
