"""Apache Kafka 4.4 engine: a real 3-node KRaft cluster with a SCRAM listener, leader failover, Kafka Connect
standalone with the config/ sinks, and `streamml broker --engine kafka` as a process.

Real JVMs and kafka-python, no mocks; every wait polls for its condition with a deadline. One cluster serves the
module (started once, ~10-15 s on 2 cores); the failover test restarts the node it killed, so later tests see
three brokers again.
"""
import os, signal, subprocess, sys, threading, time, uuid
import psutil, pytest
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaTimeoutError
from streamml.broker import create_topics
from streamml.cluster import KafkaCluster, check_login, client_env, cluster_settings, describe, free_ports, live_brokers
from streamml.jvm import fetch_jars
from streamml.config import kafka_config, make_admin, make_consumer, make_producer
from streamml.connect import ConnectStandalone
from streamml.errors import KafkaAuthError
from conftest import ROOT, unique_topics, wait_for

USER, PASSWORD = 'streamml-test', f'pw-{uuid.uuid4().hex[:16]}'

@pytest.fixture(scope='module')
def kafka3(tmp_path_factory):
    "Three combined broker+controller nodes with a SCRAM-SHA-512 listener, for the whole module."
    fetch_jars()
    with KafkaCluster(tmp_path_factory.mktemp('kafka3')/'kafka', nodes=3, port=free_ports(6), scram=(USER, PASSWORD)) as c:
        yield c

@pytest.fixture
def sasl(kafka3, tmp_path):
    "Settings of a client on the SCRAM listener (credentials only in the STREAMML_KAFKA_CONFIG file), fresh topics."
    return cluster_settings(kafka3, (USER, PASSWORD), STREAMML_HOME=tmp_path/'home').with_(topics=unique_topics('k'))

def consume(s, topic, n, timeout=60):
    "The values of the first `n` records of `topic`, read by a fresh consumer group."
    c = make_consumer(s, topic, group_id=f'test-{uuid.uuid4().hex[:8]}')
    got, deadline = [], time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += [m.value for ms in c.poll(500).values() for m in ms]
    finally: c.close()
    return got

def partition_info(s, topic):
    "describe_topics of partition 0: leader, replicas, isr."
    a = make_admin(s)
    try: return a.describe_topics([topic])[0]['partitions'][0]
    finally: a.close()

def topic_config(s, topic, key):
    "A topic's config value as the brokers report it."
    a = make_admin(s)
    try: return a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])['topic'][topic][key]['value']
    finally: a.close()


def test_topics_get_three_replicas_and_min_insync_two(sasl):
    made = create_topics(sasl)
    assert set(made.values()) == {'created'}
    for t in sasl.topics.all():
        p = partition_info(sasl, t)
        assert len(p['replica_nodes']) == 3 and sorted(p['isr_nodes']) == [1, 2, 3]
        assert topic_config(sasl, t, 'min.insync.replicas') == '2'
    assert set(create_topics(sasl).values()) == {'exists'}


def test_create_topics_script_agrees(kafka3, tmp_path):
    topics = unique_topics('s')
    env = {**os.environ, **client_env(kafka3, (USER, PASSWORD), tmp_path/'client.json'), 'STREAMML_HOME': str(tmp_path/'home'),
           **{f'STREAMML_{f.upper()}': getattr(topics, f) for f in topics.__dataclass_fields__}}
    r = subprocess.run(['bash', 'scripts/create-topics.sh'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f'{topics.event_topic}: created' in r.stdout
    assert 'replication factor 3, min.insync.replicas=2' in r.stdout
    s = cluster_settings(kafka3, (USER, PASSWORD), STREAMML_HOME=tmp_path/'home').with_(topics=topics)
    assert len(partition_info(s, topics.model_update_topic)['replica_nodes']) == 3
    assert topic_config(s, topics.event_topic, 'min.insync.replicas') == '2'


def test_idempotent_acks_all_produce_and_consume_over_scram(sasl):
    cfg = kafka_config(sasl, 'producer')
    assert (cfg['enable_idempotence'], cfg['acks'], cfg['security_protocol']) == (True, 'all', 'SASL_PLAINTEXT')
    create_topics(sasl)
    want = [f'{{"type":"training","payload":"{i},4,5,6"}}'.encode() for i in range(200)]
    p = make_producer(sasl)
    for v in want: p.send(sasl.topics.event_topic, v)
    p.flush(60); p.close()
    assert consume(sasl, sasl.topics.event_topic, len(want)) == want


def test_leader_killed_produce_and_consume_go_on_then_it_rejoins(kafka3, sasl):
    create_topics(sasl)
    topic = sasl.topics.prediction_request_topic
    first, second, third = ([f'{tag}-{i}'.encode() for i in range(50)] for tag in 'abc')
    p = make_producer(sasl)
    for v in first: p.send(topic, v)
    p.flush(60)
    old = kafka3.leader(topic)
    assert kafka3.kill(old) == -signal.SIGKILL
    t0 = time.monotonic()
    for v in second: p.send(topic, v)
    p.flush(90)                                               # acks=all with 2 of 3 in sync: accepted
    failover = time.monotonic() - t0
    new = kafka3.leader(topic)
    assert new not in (old, -1)
    assert consume(sasl, topic, 100) == first + second        # nothing lost, nothing twice (idempotent producer)
    kafka3.restart(old)
    assert live_brokers(describe(kafka3.bootstrap)) == [1, 2, 3]
    wait_for(lambda: sorted(partition_info(sasl, topic)['isr_nodes']) == [1, 2, 3], 60, 'the restarted node back in sync')
    for v in third: p.send(topic, v)
    p.flush(60); p.close()
    assert consume(sasl, topic, 150) == first + second + third
    print(f'failover after kill -9 of node {old}: produce resumed in {failover:.1f} s, node {new} leads')


def test_scram_right_password_works_and_wrong_one_fails_fast(kafka3, tmp_path):
    good = cluster_settings(kafka3, (USER, PASSWORD), STREAMML_HOME=tmp_path/'home')
    assert check_login(good, timeout=10) >= (4, 0)
    assert sorted(b['port'] for b in describe(kafka3.sasl_bootstrap, 5_000, **good.kafka_overrides['common'])['brokers']) \
        == sorted(kafka3.sasl_port(i) for i in kafka3.ids)
    bad = cluster_settings(kafka3, (USER, 'wrong-password'), STREAMML_HOME=tmp_path/'home2')
    t0 = time.monotonic()
    with pytest.raises(KafkaAuthError, match='credentials|SASL'): check_login(bad, timeout=10)
    assert time.monotonic() - t0 < 10
    # why check_login exists: kafka-python's own clients turn the refusal into a bootstrap timeout
    with pytest.raises(KafkaTimeoutError): make_admin(bad, bootstrap_timeout_ms=2_000)


def test_connect_standalone_writes_exactly_the_values_produced(kafka3, sasl, tmp_path):
    create_topics(sasl)
    t = sasl.topics
    sinks = sorted((ROOT/'config').glob('connect-file-sink-*.properties'))
    events = [f'{{"type":"training","payload":"{i},1,2,3"}}'.encode() for i in range(20)]
    rows = [f'{i},1,2,3'.encode() for i in range(30)]
    with ConnectStandalone(kafka3.sasl_bootstrap, sinks, tmp_path/'connect', tmp_path/'files', credentials=(USER, PASSWORD),
                           topics={'event_topic': t.event_topic, 'training_data_topic': t.training_data_topic}) as cw:
        p = make_producer(sasl)
        for v in events: p.send(t.event_topic, v)
        for v in rows: p.send(t.training_data_topic, v)
        p.flush(60); p.close()
        files = cw.files()
        want = {'event-archive-sink': [v.decode() for v in events], 'training-data-sink': [v.decode() for v in rows]}
        read = lambda: {n: f.read_text().splitlines() if f.exists() else [] for n, f in files.items()}
        wait_for(lambda: read() == want, 60, 'both sink files to hold exactly the values produced', every=0.2)
    assert cw.proc is None


def test_cli_kafka_engine_runs_and_stops_on_sigterm(tmp_path):
    port = free_ports(1)
    env = {**os.environ, 'STREAMML_HOME': str(tmp_path/'home'), 'PYTHONUNBUFFERED': '1'}
    err = open(tmp_path/'stderr.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'streamml.cli', 'broker', '--engine', 'kafka', '--nodes', '1', '--port', str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines = []
    threading.Thread(target=lambda: [lines.append(l.strip()) for l in proc.stdout], daemon=True).start()
    try:
        wait_for(lambda: any('stops every node' in l for l in lines) or proc.poll() is not None, 120, 'the cluster to be up')
        assert proc.poll() is None, (tmp_path/'stderr.log').read_text()
        assert f'bootstrap: 127.0.0.1:{port}' in lines
        pid = int(next(l for l in lines if l.startswith('node 1: pid ')).split()[3].rstrip(','))
        assert 'kafka.Kafka' in psutil.Process(pid).cmdline()
        cluster_id = next(l for l in lines if l.startswith('kafka cluster ')).split()[2]
        assert describe(f'127.0.0.1:{port}', 5_000)['cluster_id'] == cluster_id
        assert (tmp_path/'home'/'kafka'/'cluster.json').exists()       # data under $STREAMML_HOME/kafka
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0                                      # within the 15 s grace period and then some
        wait_for(lambda: 'kafka cluster stopped' in lines, 5, 'the last line')
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        mine = [p for p in psutil.process_iter(['cmdline']) if str(tmp_path) in ' '.join(p.info['cmdline'] or [])]
        assert mine == [], mine
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
        err.close()
