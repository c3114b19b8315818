"""Three hosts on one machine (issue 12): three homes that share nothing but a 3-node Apache Kafka cluster and a
MariaDB database. Host A ingests and builds; hosts B and C ingest and predict (over Kafka and HTTP).

20,000 training events and a steady prediction load; two builds promoted and one rollback on host A; host B's
services killed with SIGKILL mid-stream and started again. Then: exactly 20,000 rows and no duplicate, every
prediction request answered (deduplicated by id) by a version that was a champion, hosts B and C serving the
final champion — which they never built: its files came from the database.
"""
import json, signal, subprocess, sys, threading, time, uuid
from pathlib import Path
import httpx, pytest, sqlalchemy as sa
from conftest import ROOT
from streamml.broker import create_topics
from streamml.cluster import KafkaCluster, client_env, free_ports
from streamml.config import child_env, load_settings, make_producer
from streamml.db import make_engine, init_db, training_data, champion_history, champions
from streamml.messages import training_event
from streamml.predictions import PredictClient
from streamml.procs import free_port, terminate
from streamml.testing import wait_for, unique_topics
from test_deploy import procfile


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    "A 3-node Apache Kafka cluster for this module."
    with KafkaCluster(tmp_path_factory.mktemp('kafka'), nodes=3, port=free_ports(3)) as c: yield c


class Host:
    "A home of its own, the shared cluster and database, and the streamml services it runs."
    def __init__(self, name, base, cluster, db_url, topics):
        env = {'STREAMML_HOME': str(base/name), 'STREAMML_DB_URL': db_url, 'STREAMML_PARTITIONS': '3', **client_env(cluster)}
        self.name, self.s, self.procs, self.port = name, load_settings(env).with_(topics=topics), {}, free_port()
        self.env = {**child_env(self.s), 'STREAMML_HTTP_PORT': str(self.port), 'STREAMML_BUILD_TOLERANCE': '1.0', 'STREAMML_LOG_LEVEL': 'WARNING',
                    'STREAMML_RETRAIN_POLICY': '{"default": {"drift_threshold": null}}'}   # only the builds the test asks for

    def start(self, *services):
        for svc in services:
            argv = procfile('builder' if self.name == 'A' else 'predictor')[svc]   # what the README's layout runs
            self.s.home.mkdir(parents=True, exist_ok=True)
            with open(self.s.home/f'{svc}.log', 'ab') as log:   # read when a wait times out
                self.procs[svc] = subprocess.Popen([sys.executable, '-m', 'streamml.cli', *argv], env=self.env, cwd=ROOT,
                                                   stdout=log, stderr=subprocess.STDOUT)

    def cli(self, *argv):
        r = subprocess.run([sys.executable, '-m', 'streamml.cli', *argv], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def serving(self) -> dict:
        try: return httpx.get(f'http://127.0.0.1:{self.port}/health', timeout=2).json().get('models', {})
        except (httpx.HTTPError, ValueError): return {}

    def kill(self):
        for p in self.procs.values(): p.send_signal(signal.SIGKILL); p.wait(10)

    def stop(self):
        terminate(list(self.procs.values()), grace=10)


class Load:
    "A steady prediction load over Kafka (ids kept) and HTTP (to hosts B and C), from threads."
    def __init__(self, s, hosts, rate=50):
        self.s, self.hosts, self.rate, self.on, self.sent, self.kafka, self.http = s, hosts, rate, True, [], {}, []
        self.threads = [threading.Thread(target=self.send_kafka, daemon=True), threading.Thread(target=self.send_http, daemon=True)]
    def send_kafka(self):
        with PredictClient(self.s, start_timeout=60) as c:
            while self.on:
                self.sent.append(c.send('dtr', '3,4,5'))
                for r in c.poll(1000 // self.rate): self.kafka.setdefault(r['id'], r)
            deadline = time.monotonic() + 90
            while set(self.sent) - set(self.kafka) and time.monotonic() < deadline:
                for r in c.poll(200): self.kafka.setdefault(r['id'], r)
    def send_http(self):
        while self.on:
            for h in self.hosts:
                try: self.http.append((h.name, httpx.get(f'http://127.0.0.1:{h.port}/api/predict/dtr/3,4,5', timeout=5).json()))
                except httpx.HTTPError: pass   # host B's server is down while it restarts
            time.sleep(0.1)                      # pacing the offered load
    def __enter__(self): [t.start() for t in self.threads]; return self
    def __exit__(self, *exc): self.on = False; [t.join(120) for t in self.threads]


def test_three_hosts_share_only_kafka_and_the_database(cluster, mariadb_url, tmp_path):
    topics = unique_topics('hosts')
    A, B, C = (Host(n, tmp_path, cluster, mariadb_url, topics) for n in 'ABC')
    create_topics(A.s)                           # 3 partitions, replication factor 3, min.insync.replicas 2
    eng = make_engine(A.s); init_db(eng)
    def scalar(q):
        with eng.connect() as c: return c.execute(q).scalar()   # each poll gives its connection back
    rows = lambda: scalar(sa.select(sa.func.count()).select_from(training_data))
    n, produced = 20_000, []
    def produce(lo, hi):
        p = make_producer(A.s)
        for i in range(lo, hi):
            p.send(topics.event_topic, training_event(f'{i % 10},{(i // 10) % 10},{(i // 7) % 10},{(i * 3 + i // 10) % 11}'))
            if i % 500 == 499: p.flush(); time.sleep(0.25)   # a stream over ~5 s per half, not a readiness wait
        p.flush(); p.close(); produced.append(hi)
    feed = lambda lo, hi: threading.Thread(target=produce, args=(lo, hi), daemon=True).start()
    try:
        A.start('events'); B.start('events', 'predictions', 'serve'); C.start('events', 'predictions', 'serve')
        feed(0, n // 2)
        wait_for(lambda: rows() >= n // 2, 120, 'the first half of the rows')
        A.cli('build', 'dtr')
        champ = lambda: scalar(sa.select(champions.c.version).where(champions.c.model == 'dtr'))
        v1 = wait_for(champ, 60, 'a first champion')
        wait_for(lambda: B.serving().get('dtr') == v1 and C.serving().get('dtr') == v1, 120, 'B and C serving the first champion')
        assert (B.s.path('models', 'dtr', v1)/'manifest.json').exists() and (C.s.path('models', 'dtr', v1)/'manifest.json').exists()   # fetched
        with Load(A.s, [B, C]) as load:
            wait_for(lambda: len(load.kafka) >= 50, 60, 'answers under load')
            feed(n // 2, n)
            wait_for(lambda: rows() >= n // 2 + 1_000, 120, 'the second half flowing')
            B.kill()                                 # mid-stream, mid-load
            B.start('events', 'predictions', 'serve')
            wait_for(lambda: len(produced) == 2 and rows() >= n, 300, f'{n} rows')
            A.cli('build', 'dtr')                    # new rows: a new version (same rows would be 'unchanged')
            v2 = wait_for(lambda: champ() if champ() != v1 else None, 180, 'the second champion')
            A.cli('rollback', 'dtr')
            wait_for(lambda: champ() == v1, 30, 'the rollback')
            wait_for(lambda: B.serving().get('dtr') == v1 and C.serving().get('dtr') == v1, 120, 'B and C on the final champion')
        with eng.connect() as c:
            dup = c.execute(sa.select(sa.func.count()).select_from(sa.select(training_data.c.source_partition, training_data.c.source_offset)
                            .group_by(training_data.c.source_partition, training_data.c.source_offset).having(sa.func.count() > 1).subquery())).scalar()
            ever = set(c.execute(sa.select(champion_history.c.version).where(champion_history.c.model == 'dtr')).scalars())
        assert rows() == n and dup == 0
        assert ever == {v1, v2}
        missing = set(load.sent) - set(load.kafka)
        assert not missing, f'{len(missing)} of {len(load.sent)} requests unanswered'
        kafka_versions = {r.get('version') for r in load.kafka.values() if 'result' in r}
        assert kafka_versions <= ever and kafka_versions, kafka_versions
        assert {r.get('version') for _, r in load.http if 'result' in r} <= ever
        print(json.dumps(dict(test='three hosts', rows=rows(), requests=len(load.sent), http=len(load.http), versions=sorted(kafka_versions))))
    finally:
        for h in (A, B, C): h.stop()
        for log in sorted(tmp_path.glob('*/*.log')): print(f'--- {log}', *log.read_text(errors='replace').splitlines()[-15:], sep='\n')   # shown on failure
        eng.dispose()
