"""The two engines of the integration suite get what they need: Tansu its client profile with the workarounds, Apache
Kafka the `kafka` profile (idempotent producer, `acks=all`, no fetch-wait or session-timeout workaround), and the
`broker` fixture really is the engine it says. `streamml bench --engine` names the engine in every line."""
import json
from streamml.broker import cluster_id
from streamml.config import KAFKA_PROFILES, kafka_config
from conftest import streamml, ROOT


def test_each_engine_gets_its_client_profile(settings, broker, engine_name):
    producer, consumer = kafka_config(settings, 'producer'), kafka_config(settings, 'consumer')
    assert cluster_id(settings) == broker.cluster_id                       # the fixture's broker answers
    if engine_name == 'kafka':
        assert settings.kafka_profile == 'kafka' and type(broker).__name__ == 'KafkaCluster'
        assert (producer['enable_idempotence'], producer['acks']) == (True, 'all')
        assert 'fetch_max_wait_ms' not in consumer                         # Apache Kafka wakes a waiting fetch: its default
        assert consumer['session_timeout_ms'] == 10_000                    # not kafka-python's 45 s: a restart after a crash resumes sooner
    else:
        assert settings.kafka_profile == 'embedded' and type(broker).__name__ == 'EmbeddedBroker'
        assert producer['acks'] == 1 and consumer['fetch_max_wait_ms'] == KAFKA_PROFILES['embedded']['consumer']['fetch_max_wait_ms']


def test_bench_engine_option_names_the_engine(tmp_path):
    env = {'STREAMML_HOME': str(tmp_path/'home'), 'PATH': '/usr/bin:/bin'}
    r = streamml('bench', 'ingest', '--engine', 'tansu', '--n', '200', '--rounds', '1', '--mysql', 'none', '--mirrors', 'batch', env=env)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith('{')]
    assert lines and {l['engine'] for l in lines} == {'tansu'} and {l['n'] for l in lines} == {200}
    bad = streamml('bench', 'ingest', '--engine', 'redpanda', env=env, check=False)
    assert bad.returncode == 1 and '--engine must be tansu or kafka' in bad.stderr
