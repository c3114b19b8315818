"""Apache Kafka 4.4 on a real 3-node KRaft cluster with a SCRAM listener: the engine itself (replication, failover,
SCRAM, Kafka Connect standalone with the config/ sinks, `streamml broker --engine kafka` as a process), and the real
loop on it: kill -9 of a partition leader under `streamml events` and under `streamml predictions`, the whole loop
through SCRAM with a wrong password failing in seconds, and Kafka Connect's sink files against streamml's archive.

Real JVMs, real child processes and kafka-python, no mocks; every wait polls for its condition with a deadline. One
cluster serves the module (the fault, authentication and Connect tests share it; started once, ~10-15 s on 2 cores);
a test that kills a node restarts it, so later tests see three brokers again. The nodes listen below the ephemeral
port range (`conftest.quiet_ports`), so a killed node's port is still free when it restarts.
"""
import json, os, signal, subprocess, sys, threading, time, uuid
import psutil, pytest, sqlalchemy as sa
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaTimeoutError
from streamml.broker import create_topics
from streamml.cluster import (KafkaCluster, check_login, client_env, cluster_settings, describe, free_ports, live_brokers,
                              write_client_config)
from streamml.jvm import fetch_jars
from streamml.config import child_env, load_settings, kafka_config, make_admin, make_consumer, make_producer
from streamml.db import make_engine, init_db, training_data, runs
from streamml.messages import training_event, prediction_request
from streamml.connect import ConnectStandalone
from streamml.errors import KafkaAuthError
from conftest import ROOT, unique_topics, wait_for, streamml, quiet_ports
from test_serving_helpers import dense_version, promote, Responses, send_raw

USER, PASSWORD = 'streamml-test', f'pw-{uuid.uuid4().hex[:16]}'

@pytest.fixture(scope='module')
def kafka3(tmp_path_factory):
    "Three combined broker+controller nodes with a SCRAM-SHA-512 listener, for the whole module."
    fetch_jars()
    with KafkaCluster(tmp_path_factory.mktemp('kafka3')/'kafka', nodes=3, port=quiet_ports(6), scram=(USER, PASSWORD)) as c:
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


# -- the real loop on the 3-node cluster: faults, SCRAM end to end, Kafka Connect ----------------------------------
# The services are child processes (`python -m streamml.cli ...` with `config.child_env(settings)`), never restarted
# by the tests; figures go to stdout (`-s`) and, one JSON line per test, to test-artifacts/kafka-cluster.jsonl.

ARTIFACTS = ROOT/'test-artifacts'

def report(name, **figures):
    "Print the figures of a test and append them as a JSON line to test-artifacts/kafka-cluster.jsonl."
    line = {'test': name, 'engine': 'kafka', 'nodes': 3, **{k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}}
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS/'kafka-cluster.jsonl', 'a') as f: f.write(json.dumps(line) + '\n')
    print(json.dumps(line))
    return line

def service(s, log, *argv, env=None):
    "A streamml service as a child process with the settings `s` (output to `log`)."
    env = {**child_env(s), 'PYTHONUNBUFFERED': '1', **(env or {})}
    with open(log, 'ab') as out:
        return subprocess.Popen([sys.executable, '-m', 'streamml.cli', *argv], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

def said(log, text) -> bool: return text in log.read_text(errors='replace')

def stop_service(p, log, timeout=30) -> None:
    "SIGTERM a service and check that it exits 0."
    if p.poll() is None: p.send_signal(signal.SIGTERM)
    try: code = p.wait(timeout)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert code == 0, f'{p.args[3]} exited with {code}:\n{log.read_text(errors="replace")[-3000:]}'

def count(s, table) -> int:
    eng = make_engine(s)
    try:
        with eng.connect() as c: return c.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    except sa.exc.DBAPIError: return 0      # tables not created yet
    finally: eng.dispose()

def training_rows(s) -> list:
    "`(source_offset, payload)` of every stored row, in offset order."
    eng = make_engine(s)
    try:
        with eng.connect() as c:
            return c.execute(sa.select(training_data.c.source_offset, training_data.c.payload).order_by(training_data.c.source_offset)).all()
    finally: eng.dispose()

class Sampler:
    "Samples a counter every 0.1 s in a thread: when it grew, for gaps and recovery times."
    def __init__(self, fn):
        self.fn, self.points, self.on = fn, [], True
        self.th = threading.Thread(target=self.run, daemon=True)
    def run(self):
        while self.on:
            self.points.append((time.monotonic(), self.fn())); time.sleep(0.1)   # sampling period
    def __enter__(self): self.th.start(); return self
    def __exit__(self, *exc): self.on = False; self.th.join(5)
    def first_growth_after(self, t) -> float|None:
        "Seconds from `t` until the counter first grew past its value at `t`."
        at = next((v for tt, v in reversed(self.points) if tt <= t), 0)
        return next((tt - t for tt, v in self.points if tt > t and v > at), None)
    def longest_stall(self, since) -> float:
        "The longest time after `since` during which the counter did not grow (while it still had to)."
        pts = [(t, v) for t, v in self.points if t >= since]
        longest, start = 0.0, pts[0] if pts else None
        for t, v in pts[1:]:
            if v > start[1]: longest, start = max(longest, t - start[0]), (t, v)
        return longest

def asking(fn, *args):
    "`fn(*args)`, or None while a node is down and the admin request happened to go to it."
    from kafka.errors import KafkaError
    try: return fn(*args)
    except KafkaError: return None

def await_isr(kafka3, s, topic, timeout=90):
    "Wait until every node is back in the ISR of `topic`[0]; the seconds it took."
    t0 = time.monotonic()
    wait_for(lambda: sorted((asking(partition_info, s, topic) or {}).get('isr_nodes', [])) == [1, 2, 3], timeout,
             f'all three nodes in sync on {topic}', every=0.2)
    return time.monotonic() - t0


def test_events_leader_killed_mid_stream_exactly_once(kafka3, tmp_path):
    "kill -9 of the node leading event_topic[0] while 20,000 events flow: exactly 20,000 rows, no duplicate; no restart."
    s = cluster_settings(kafka3, STREAMML_HOME=tmp_path/'home').with_(topics=unique_topics('fe'))
    create_topics(s)
    n, group, log = 20_000, f'fault-{uuid.uuid4().hex[:8]}', tmp_path/'events.log'
    payloads = [f'{i % 10},{(i // 10) % 10},{(i // 100) % 10},{i % 11}' for i in range(n)]
    ev = service(s, log, 'events', '--no-builds', '--no-scoring', '--group', group, '--max-records', '250')
    sent, errors = [0], []
    def feed():   # a steady stream (~2,000 events/s), idempotent and acks=all, through the failover
        p = make_producer(s)
        try:
            for i in range(0, n, 100):
                for r in payloads[i:i + 100]: p.send(s.topics.event_topic, training_event(r))
                p.flush(120); sent[0] = i + 100; time.sleep(0.05)   # pacing of the offered load
        except Exception as e: errors.append(e)
        finally: p.close(10)
    feeder = threading.Thread(target=feed, daemon=True)
    try:
        wait_for(lambda: said(log, 'consuming') or ev.poll() is not None, 60, 'events consuming')
        with Sampler(lambda: count(s, training_data)) as rows:
            feeder.start()
            wait_for(lambda: rows.points and rows.points[-1][1] >= 4_000, 120, '4,000 rows stored before the kill')
            victim = kafka3.leader(s.topics.event_topic)
            t_kill = time.monotonic(); assert kafka3.kill(victim) == -signal.SIGKILL
            at_kill = count(s, training_data)
            wait_for(lambda: asking(kafka3.leader, s.topics.event_topic) not in (victim, -1, None), 60, 'a new leader', every=0.2)
            new_leader_s = time.monotonic() - t_kill
            feeder.join(300)
            assert not errors, errors
            wait_for(lambda: count(s, training_data) >= n or ev.poll() is not None, 180, f'{n} rows')
            all_stored_s = time.monotonic() - t_kill
            pid = kafka3.restart(victim)
            rejoin_s = time.monotonic() - t_kill
            isr_s = await_isr(kafka3, s, s.topics.event_topic)
        assert ev.poll() is None, 'the events service stopped:\n' + log.read_text()[-3000:]
    finally:
        if feeder.is_alive(): feeder.join(60)
        stop_service(ev, log)
    got = training_rows(s)
    assert len(got) == n and len({o for o, _ in got}) == n                 # exactly n rows, no duplicate
    assert [o for o, _ in got] == list(range(n)) and sorted(p for _, p in got) == sorted(payloads)
    assert 0 < at_kill < n and pid
    report('events: leader of event_topic[0] killed mid-stream', events=n, rows=len(got), duplicates=0, killed_node=victim,
           rows_at_kill=at_kill, new_leader_s=new_leader_s, rows_again_after_s=rows.first_growth_after(t_kill),
           longest_stall_s=rows.longest_stall(t_kill - 1), all_stored_after_s=all_stored_s, node_back_after_s=rejoin_s,
           back_in_isr_s=isr_s, service_restarts=0)


def test_predictions_node_killed_at_steady_rate_every_request_answered(kafka3, tmp_path):
    "kill -9 of the node leading the request topic while 100 requests/s flow: every request answered; no restart."
    s = cluster_settings(kafka3, STREAMML_HOME=tmp_path/'home').with_(topics=unique_topics('fp'))
    create_topics(s)
    eng = make_engine(s); init_db(eng)
    promote(s, eng, dense_version(s), announce=False); eng.dispose()
    log, group = tmp_path/'predictions.log', f'fault-{uuid.uuid4().hex[:8]}'
    pr = service(s, log, 'predictions', '--group', group)
    resp, n, rate, retry_after = Responses(s), 2_000, 100.0, 10.0
    sent_at, answered_at, retries, errors, blocked, sending = {}, {}, [0], [], [0.0], [None]
    def ask(p, k): p.send(s.topics.prediction_request_topic, key=k.encode(), value=prediction_request('mlp', '3,4,5', k))
    try:
        wait_for(lambda: said(log, 'consuming') or pr.poll() is not None, 60, 'predictions consuming')
        send_raw(s, [('warm', prediction_request('mlp', '1,2,3', 'warm'))]); resp.wait_keys(['warm'], 60)
        def load():   # a steady rate; a request unanswered for 10 s is sent again (same id): a retry
            p = make_producer(s)
            try:
                t0 = time.monotonic()
                for i in range(n):
                    k = f'k{i}'; sent_at[k] = time.monotonic(); ask(p, k)
                    blocked[0] = max(blocked[0], time.monotonic() - sent_at[k])
                    time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))   # pacing of the offered load
                p.flush(120); sending[0] = time.monotonic() - t0
                while (late := [k for k in sent_at if k not in answered_at]) and time.monotonic() - t0 < n / rate + 180:
                    for k in late:
                        if time.monotonic() - sent_at[k] > retry_after: sent_at[k] = time.monotonic(); ask(p, k); retries[0] += 1
                    p.flush(60); time.sleep(0.5)
            except Exception as e: errors.append(e)
            finally: p.close(10)
        loader = threading.Thread(target=load, daemon=True)
        first_sent = time.monotonic(); loader.start()
        seen = [0]
        def collect():
            "When each request id was first answered (reads the responses that arrived since the last call)."
            recs = resp.poll()
            for r in recs[seen[0]:]:
                k = r.key.decode() if r.key else None
                if k and k not in answered_at: answered_at[k] = time.monotonic()
            seen[0] = len(recs)
            return answered_at
        wait_for(lambda: len(collect()) >= 1 + n // 5, 120, 'a fifth of the requests answered')
        victim = kafka3.leader(s.topics.prediction_request_topic)
        t_kill = time.monotonic(); assert kafka3.kill(victim) == -signal.SIGKILL
        wait_for(lambda: all(f'k{i}' in got for got in [collect()] for i in range(n)) or pr.poll() is not None, 300, f'answers to all {n} requests', every=0.2)
        all_answered_s = time.monotonic() - t_kill
        loader.join(60)
        assert not errors, errors
        pid = kafka3.restart(victim); isr_s = await_isr(kafka3, s, s.topics.prediction_request_topic)
        # after the node is back, the same service still answers
        send_raw(s, [('after', prediction_request('mlp', '1,2,3', 'after'))]); resp.wait_keys(['after'], 60)
        assert pr.poll() is None, 'the predictions service stopped:\n' + log.read_text()[-3000:]
    finally:
        resp.close(); stop_service(pr, log)
    by_id = resp.by_key()
    assert all('result' in by_id[f'k{i}'] for i in range(n)) and pid
    times = sorted(answered_at[f'k{i}'] for i in range(n))
    gaps = [b - a for a, b in zip(times, times[1:])]
    lat = sorted(answered_at[f'k{i}'] - sent_at[f'k{i}'] for i in range(n))   # from the last send of each request
    report('predictions: leader of prediction_request_topic[0] killed at a steady rate', requests=n, rate_per_s=rate,
           answered=n, responses=len(resp.records), duplicate_responses=len(resp.records) - len(by_id), retries=retries[0],
           killed_node=victim, sending_took_s=sending[0], longest_send_call_s=blocked[0], longest_gap_s=max(gaps), all_answered_after_s=all_answered_s, back_in_isr_s=isr_s,
           p50_ms=1000 * lat[len(lat) // 2], p99_ms=1000 * lat[int(len(lat) * 0.99)], max_ms=1000 * lat[-1], service_restarts=0)


def test_whole_loop_through_scram_and_a_wrong_password_fails_in_seconds(kafka3, tmp_path):
    "events, predictions, send, predict and a build command through the SCRAM listener; credentials only in the file."
    from streamml.testing import stand_in_project
    s = load_settings({**client_env(kafka3, (USER, PASSWORD), tmp_path/'client.json'), 'STREAMML_HOME': str(tmp_path/'home')})
    s = s.with_(topics=unique_topics('a'), project_root=stand_in_project(tmp_path/'proj'))
    env = child_env(s)
    assert s.bootstrap_servers == kafka3.sasl_bootstrap and env['STREAMML_KAFKA_CONFIG'] == str(tmp_path/'client.json')
    assert not any(PASSWORD in v for v in env.values()) and PASSWORD not in repr(s)   # only in the 0600 file
    assert 'refused' not in streamml('topics', env=env).stderr
    eng = make_engine(s); init_db(eng); promote(s, eng, dense_version(s), announce=False); eng.dispose()
    logs = {n: tmp_path/f'{n}.log' for n in ('events', 'predictions')}
    procs = [service(s, logs['events'], 'events', '--no-builds'), service(s, logs['predictions'], 'predictions')]
    try:
        for p, n in zip(procs, logs): wait_for(lambda: said(logs[n], 'consuming') or p.poll() is not None, 60, f'{n} consuming')
        streamml('send', '--training', '1,2,3,4', '--training', '5,6,7,8', '--command', 'build_mlp', env=env)
        wait_for(lambda: count(s, training_data) == 2 and count(s, runs) == 1, 60, 'two rows and a build request stored')
        r = streamml('predict', 'mlp', '3,4,5', env=env)
        assert json.loads(r.stdout)['result'] is not None and json.loads(r.stdout)['model'] == 'mlp'
        assert all(p.poll() is None for p in procs)
    finally:
        for p, n in zip(procs, logs): stop_service(p, logs[n])
    # the same commands with a wrong password: exit 1 within 5 s, saying who was refused and where the credentials come from
    bad = {**env, 'STREAMML_KAFKA_CONFIG': str(write_client_config(tmp_path/'bad.json', USER, 'not-the-password'))}
    took = {}
    for argv in (['events', '--no-builds'], ['predictions'], ['send', '--training', '1,2,3,4'], ['predict', 'mlp', '3,4,5'],
                 ['up', '--services', 'events,predictions']):
        t0 = time.monotonic()
        r = streamml(*argv, env=bad, check=False, timeout=60)
        took[argv[0]] = time.monotonic() - t0
        assert r.returncode == 1, (argv, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
        assert took[argv[0]] < 5, f'{argv[0]} took {took[argv[0]]:.1f} s to fail'
        err = r.stderr
        assert err.startswith('error: ') or '\nerror: ' in err, err[-2000:]
        assert 'refused the credentials' in err and repr(USER) in err and 'STREAMML_KAFKA_CONFIG' in err, err[-2000:]
        assert 'Traceback' not in err and 'not-the-password' not in err + r.stdout, err[-2000:]
    # `serve` answers HTTP without Kafka, so it runs on; its champions follower says the login was refused, and stops trying
    from streamml.procs import free_port
    log = tmp_path/'serve.log'
    sv = service(s, log, 'serve', '--port', str(free_port()), env={'STREAMML_KAFKA_CONFIG': bad['STREAMML_KAFKA_CONFIG']})
    t0 = time.monotonic()
    try:
        wait_for(lambda: said(log, 'refused the credentials') or sv.poll() is not None, 30, 'the follower to say the login was refused')
        took['serve_follower'] = time.monotonic() - t0
        assert sv.poll() is None and 'not following' in log.read_text() and 'retrying' not in log.read_text()
    finally:
        sv.terminate(); sv.wait(30)
    report('scram: wrong password', **{f'{k}_fails_in_s': v for k, v in took.items()})


def test_connect_sinks_hold_exactly_what_streamml_archived_and_stored(kafka3, tmp_path):
    "Kafka Connect's FileStreamSinks (config/) beside `streamml events`: the same events and the same training rows."
    from streamml.archive import archive_files, read_archives
    s = cluster_settings(kafka3, (USER, PASSWORD), STREAMML_HOME=tmp_path/'home').with_(topics=unique_topics('c'))
    create_topics(s)
    t = s.topics
    sinks = sorted((ROOT/'config').glob('connect-file-sink-*.properties'))
    log = tmp_path/'events.log'
    ev = service(s, log, 'events', '--no-builds', '--no-scoring')
    good = [training_event(f'{i % 10},{i % 7},{i % 5},{i % 11}') for i in range(400)]
    bad = [b'not json', b'{"type":"training","payload":"1,2,3"}', b'{"type":"training","payload":"1,2,x,4"}',
           b'{"type":"command","payload":"build_xgb"}', b'[1,2,3]']
    values = [v for i, g in enumerate(good) for v in ([g, bad[i // 10 % len(bad)]] if i % 10 == 0 else [g])]
    try:
        with ConnectStandalone(kafka3.sasl_bootstrap, sinks, tmp_path/'connect', tmp_path/'files', credentials=(USER, PASSWORD),
                               topics={'event_topic': t.event_topic, 'training_data_topic': t.training_data_topic}) as cw:
            wait_for(lambda: said(log, 'consuming') or ev.poll() is not None, 60, 'events consuming')
            p = make_producer(s)
            for v in values: p.send(t.event_topic, v)
            p.flush(60); p.close()
            wait_for(lambda: count(s, training_data) == len(good) or ev.poll() is not None, 90, 'every good row stored')
            files = cw.files()
            archived = lambda: [a.value.decode() for a in read_archives(archive_files(s), t.event_topic)]
            stored = lambda: [p for _, p in training_rows(s)]
            lines = lambda n: files[n].read_text().splitlines() if files[n].exists() else []
            wait_for(lambda: len(archived()) == len(values), 30, 'every event archived by streamml')
            wait_for(lambda: lines('event-archive-sink') == archived() and lines('training-data-sink') == stored(), 90,
                     'both Connect sink files to hold exactly what streamml archived and stored', every=0.5)
        assert ev.poll() is None
    finally: stop_service(ev, log)
    assert len(lines('event-archive-sink')) == len(values) and len(lines('training-data-sink')) == len(good)
    report('connect: FileStreamSinks vs streamml', events=len(values), invalid=len(values) - len(good),
           connect_event_lines=len(lines('event-archive-sink')), archived=len(archived()),
           connect_training_lines=len(lines('training-data-sink')), stored_rows=len(stored()), identical=True)
