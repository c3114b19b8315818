"""The foundation: embedded broker lifecycle, database schema on SQLite and MariaDB, the CLI, `streamml up`."""
import json, os, re, signal, socket, subprocess, sys, time, uuid
from pathlib import Path
import pytest, sqlalchemy as sa
from kafka import KafkaConsumer
from streamml.broker import EmbeddedBroker, create_topics, fetch_cluster_id
from streamml.procs import free_port, port_is_free
from streamml.cli import COMMANDS
from streamml.config import make_producer, make_consumer, child_env
from streamml.db import metadata, make_engine, init_db, mysql_ddl
from streamml.errors import BrokerError
from conftest import ROOT, settings_for, unique_topics, streamml

# ---------------------------------------------------------------- broker

def test_broker_produce_consume_with_group(tmp_path):
    "A fresh broker on a free port: topics created, a record produced and consumed by a consumer group, then stopped."
    with EmbeddedBroker(free_port()) as b:
        s = settings_for(tmp_path, b)
        assert set(create_topics(s).values()) == {'created'}
        p = make_producer(s)
        p.send(s.topics.event_topic, key=b'k', value=b'{"type":"training","payload":"3,4,5,6"}').get(10)
        p.close()
        c = make_consumer(s, s.topics.event_topic, group_id=f'g-{uuid.uuid4()}')
        got, deadline = [], time.monotonic() + 30
        while not got and time.monotonic() < deadline: got = [m for ms in c.poll(500).values() for m in ms]
        c.commit(); c.close()
        assert [(m.key, m.value) for m in got] == [(b'k', b'{"type":"training","payload":"3,4,5,6"}')]
        port = b.port
    assert not b.alive() and port_is_free(port)

def test_broker_port_taken_by_another_process_is_left_alone():
    "A start on a port another process listens on fails clearly, and that process keeps answering."
    port = free_port()
    other = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1'],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while port_is_free(port) and time.monotonic() < deadline: time.sleep(0.05)  # poll until it listens
        with pytest.raises(BrokerError, match='already in use'): EmbeddedBroker(port).start()
        assert other.poll() is None
        with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
            s.sendall(b'GET / HTTP/1.0\r\n\r\n'); assert s.recv(12).startswith(b'HTTP/1.0 200')
    finally: other.terminate(); other.wait()

def test_two_starts_get_different_cluster_ids():
    ids = []
    for _ in range(2):
        with EmbeddedBroker(free_port()) as b: ids.append(fetch_cluster_id(b.bootstrap))
    assert ids[0] != ids[1] and all(i.startswith('streamml-') for i in ids)

def test_broker_command_stops_on_sigterm(tmp_path):
    "`streamml broker --port P` answers on P and exits 0 on SIGTERM, leaving the port free."
    port = free_port()
    p = subprocess.Popen([sys.executable, '-m', 'streamml.cli', 'broker', '--port', str(port)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ''
        while 'listening' not in line: line = p.stdout.readline(); assert line or p.poll() is None
        assert fetch_cluster_id(f'127.0.0.1:{port}').startswith('streamml-')
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
        assert port_is_free(port)
    finally:
        if p.poll() is None: p.kill()

# ---------------------------------------------------------------- database

TRAINING_LOG = ['id', 'uuid', 'training_date', 'train_eval_split', 'execution_time', 'model_accuracy', 'training_output', 'model_type']
LINEAR_MODEL = ['id', 'uuid', 'createdate', 'slope', 'intercept', 'rsq', 'logoutput']

def _db_init_twice_and_check(url, tmp_path):
    env = child_env(settings_for(tmp_path, db_url=url))
    for _ in range(2):
        r = streamml('db', 'init', env=env)
        assert f'{len(metadata.tables)} tables ready' in r.stdout
    eng = make_engine(url)
    insp = sa.inspect(eng)
    assert sorted(insp.get_table_names()) == sorted(metadata.tables)
    assert [c['name'] for c in insp.get_columns('training_log')] == TRAINING_LOG
    assert [c['name'] for c in insp.get_columns('linear_model')] == LINEAR_MODEL
    eng.dispose()

def test_db_init_twice_sqlite(tmp_path):
    _db_init_twice_and_check(f'sqlite:///{tmp_path}/s.db', tmp_path)

def test_db_init_twice_mariadb(tmp_path, mariadb_url):
    _db_init_twice_and_check(mariadb_url, tmp_path)

def _describe(eng):
    "Every table's columns (name, type, nullability, default, extra, key) and indexes, as MariaDB reports them."
    db = eng.url.database
    with eng.connect() as c:
        cols = c.exec_driver_sql('SELECT table_name, column_name, ordinal_position, column_type, is_nullable, column_default, extra, column_key '
                                 'FROM information_schema.columns WHERE table_schema=%s ORDER BY table_name, ordinal_position', (db,)).all()
        idx = c.exec_driver_sql('SELECT table_name, index_name, non_unique, seq_in_index, column_name FROM information_schema.statistics '
                                'WHERE table_schema=%s ORDER BY table_name, index_name, seq_in_index', (db,)).all()
    return [tuple(r) for r in cols], [tuple(r) for r in idx]

def test_schema_sql_matches_what_the_code_creates_on_mariadb(mariadb_url, tmp_path):
    "db/schema.sql is what the code generates, and executing it on MariaDB gives the same tables as `init_db`."
    assert (ROOT/'db'/'schema.sql').read_text() == mysql_ddl()
    from conftest import MARIADB_SERVER
    server = sa.create_engine(MARIADB_SERVER)
    other = f'streamml_ddl_{uuid.uuid4().hex[:10]}'
    with server.begin() as c: c.exec_driver_sql(f'CREATE DATABASE {other} CHARACTER SET utf8mb4')
    try:
        a = make_engine(mariadb_url); init_db(a)
        b = make_engine(f'{MARIADB_SERVER}/{other}')
        ddl = (ROOT/'db'/'schema.sql').read_text()
        stmts = [x.strip() for x in re.sub(r'^--.*$', '', ddl, flags=re.M).split(';') if x.strip()]
        with b.begin() as c:
            for st in stmts: c.exec_driver_sql(st)
        assert _describe(a) == _describe(b)
        a.dispose(); b.dispose()
    finally:
        with server.begin() as c: c.exec_driver_sql(f'DROP DATABASE IF EXISTS {other}')
        server.dispose()

# ---------------------------------------------------------------- CLI

PROBE = """
import sys, contextlib, io
from streamml.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try: rc = main(sys.argv[1:])
    except SystemExit as e: rc = e.code
assert rc in (0, None), (rc, buf.getvalue())
assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported by --help'
print(buf.getvalue())
"""

@pytest.mark.parametrize('argv', [['--help']] + [[c, '--help'] for c in COMMANDS])
def test_help_exits_0_without_tensorflow(argv):
    r = subprocess.run([sys.executable, '-c', PROBE, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'usage: streamml' in r.stdout

def test_every_design_command_is_listed():
    for name in ['up', 'broker', 'topics', 'db', 'events', 'predictions', 'serve', 'dashboard', 'send', 'build',
                 'predict', 'replay', 'status', 'rollback', 'demo', 'bench']:
        assert name in COMMANDS

# ---------------------------------------------------------------- up

def test_up_brings_up_broker_topics_tables_and_stops_on_ctrl_c(tmp_path):
    "`streamml up` (no services) starts its broker, creates topics and tables, reports ready, and stops cleanly on SIGINT."
    port, home = free_port(), tmp_path/'home'
    env = {k: v for k, v in os.environ.items() if not k.startswith('STREAMML_')} | {'STREAMML_HOME': str(home)}
    p = subprocess.Popen([sys.executable, '-m', 'streamml.cli', 'up', '--broker-port', str(port), '--services', 'none'],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = []
        while not out or 'streamml is up' not in out[-1]:
            line = p.stdout.readline()
            assert line, ''.join(out)
            out.append(line)
        text = ''.join(out)
        assert f'127.0.0.1:{port}' in text and '6 ready' in text and 'tables at sqlite' in text
        s = settings_for(home, f'127.0.0.1:{port}')
        from streamml.config import make_admin
        a = make_admin(s); assert set(s.topics.all()) <= set(a.list_topics()); a.close()
        assert sorted(sa.inspect(make_engine(s)).get_table_names()) == sorted(metadata.tables)
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
        assert 'stopped' in p.stdout.read()
        assert port_is_free(port)
    finally:
        if p.poll() is None: p.kill()
