"""Serving over Kafka: every error path answered, dead letters, commits, the 2018 message, the client and CLI,
no TensorFlow in the predictor, artifact equal to Keras."""
import json, os, subprocess, sys, uuid
from pathlib import Path
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from streamml.config import child_env, kafka_config
from streamml.db import make_engine, init_db, event_counters, dead_letters
from streamml.messages import parse_request
from streamml.scoring import Champions
from streamml.scoring import answer
from streamml.predictions import predict, PredictionTimeout
from conftest import ROOT, streamml
from test_serving_helpers import dense_version, tree_version, linear_version, promote, wait_for, Service, Responses, send_raw
import sqlalchemy as sa

def test_every_request_is_answered(settings, engine):
    s = settings
    vd, clf = tree_version(s); promote(s, engine, vd, announce=False)
    vs = promote(s, engine, linear_version(s), announce=False)
    cases = {   # key -> (value, expected result or error fragment)
        'ok1': (b'{"model":"dtr","payload":"3,4,5","id":"i1"}', int(clf.predict([[3., 4., 5.]])[0])),
        'ok2': (b'{"model":"dtr","payload":"9,9,9"}', int(clf.predict([[9., 9., 9.]])[0])),
        'slr': (b'{"model":"slr","payload":"4,1"}', 3.0),
        'count': (b'{"model":"dtr","payload":"3,4"}', 'expected 3 values, got 2'),
        'nonnum': (b'{"model":"dtr","payload":"3,x,5"}', 'column 2 is not a number'),
        'inf': (b'{"model":"dtr","payload":"3,inf,5"}', 'must be finite'),
        'unknown': (b'{"model":"xgb","payload":"1,2,3"}', "unknown model 'xgb'"),
        'nochamp': (b'{"model":"mlp","payload":"1,2,3"}', 'mlp has no champion yet'),
        'nomodel': (b'{"payload":"1,2,3"}', '"model" must name a model'),
        'json': (b'{"model":', 'not JSON'),
        'utf8': (b'\xff\xfe', 'not UTF-8'),
        'array': (b'[1,2,3]', 'not a JSON object'),
        'empty': (None, 'empty message'),
        'big': (b'{"model":"dtr","payload":"' + b'1,' * 40000 + b'1"}', 'exceeds the 65536-byte limit'),
    }
    send_raw(s, [(k, v) for k, (v, _) in cases.items()])
    resp = Responses(s)
    with Service(s, check_interval=3600) as svc:
        got = resp.wait_keys(cases)
        for k, (_, want) in cases.items():
            r = got[k]
            if isinstance(want, str): assert 'result' not in r and want in r['error'], (k, r)
            else: assert r['result'] == want and 'error' not in r, (k, r)
            assert set(r) >= {'id', 'model', 'input', 'accuracy', 'modelid', 'version', 'prediction-date'}, r
        assert got['ok1']['id'] == 'i1' and got['ok1']['version'] == vd.version and got['ok1']['modelid'] == vd.uuid
        assert got['slr']['version'] == vs.version and got['count']['version'] == vd.version
        # undecodable bytes are also dead letters, with the source coordinates
        dl = Responses(s, s.topics.dead_letter_topic)
        wait_for(lambda: len(dl.poll()) >= 5, 30, 'dead letters')
        heads = [dict(r.headers) for r in dl.records]
        assert {h['source_topic'] for h in heads} == {s.topics.prediction_request_topic.encode()}
        assert sorted(r.value or b'' for r in dl.records) == sorted((cases[k][0] or b'')[:16384] for k in ('json', 'utf8', 'array', 'empty', 'big'))
        assert all(set(h) >= {'error', 'source_topic', 'source_partition', 'source_offset', 'value_size', 'value_sha256'} for h in heads)
        dl.c.close()
        # offsets are committed once the responses are acknowledged
        c = KafkaConsumer(**kafka_config(s, 'consumer', group_id=svc.group))
        tp = TopicPartition(s.topics.prediction_request_topic, 0)
        wait_for(lambda: c.committed(tp) == len(cases), 30, 'committed offset')
        c.close()
    resp.close()
    with engine.connect() as c:   # counters and dead letters are in the database once the service stopped
        kinds = dict(c.execute(sa.select(event_counters.c.kind, sa.func.sum(event_counters.c.n)).group_by(event_counters.c.kind)).all())
        assert kinds == {'prediction': 3, 'error': 11, 'dead_letter': 5}, kinds
        assert c.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar() == 5

def test_2018_prediction_message(settings, engine):
    "messages/prediction_request.json and the 2018 form without id give the 2018 fields."
    s = settings
    promote(s, engine, dense_version(s), announce=False)
    raw = (ROOT/'messages'/'prediction_request.json').read_bytes().strip()
    send_raw(s, [('file', raw), ('old', b'{"model":"mlp","payload":"3,4,5"}')])
    resp = Responses(s)
    with Service(s, check_interval=3600):
        got = resp.wait_keys(['file', 'old'])
    resp.close()
    for r in got.values():
        assert {'input', 'result', 'accuracy', 'modelid', 'prediction-date'} <= set(r)
        assert r['input'] == '3,4,5' and isinstance(r['result'], int) and 0 <= r['result'] <= 10
    assert got['file']['id'] == json.loads(raw)['id'] and got['old']['id'] is None

def test_client_and_cli(settings, engine, tmp_path):
    s = settings
    v = promote(s, engine, dense_version(s), announce=False)
    with Service(s, check_interval=3600):
        r = wait_for(lambda: _try_predict(s), 60, 'a first answer')
        assert r['version'] == v.version and isinstance(r['result'], int)
        out = streamml('predict', 'mlp', '3,4,5', env=child_env(s))
        cli = json.loads(out.stdout)
        assert cli['result'] == r['result'] and cli['input'] == '3,4,5' and cli['modelid'] == v.uuid
        bad = streamml('predict', 'mlp', '3,4', env=child_env(s), check=False)
        assert bad.returncode == 1 and 'expected 3 values, got 2' in json.loads(bad.stdout)['error']
    # nobody answers: a clear timeout
    r = streamml('predict', 'mlp', '3,4,5', '--timeout', '1', env=child_env(s), check=False)
    assert r.returncode == 1 and 'no response to request' in r.stderr and 'is `streamml predictions` running' in r.stderr, r.stderr

def _try_predict(s):
    try: return predict(s, 'mlp', '3,4,5', timeout=2)
    except PredictionTimeout: return None

def test_predictor_process_does_not_import_tensorflow():
    code = ('import sys, streamml.predictions, streamml.server, streamml.scoring, streamml.cli\n'
            'from streamml.cli import resolve; resolve("predictions"); resolve("serve")\n'
            'bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]\n'
            'assert not bad, bad\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr

def test_artifact_equals_keras(tmp_path):
    "The mlp artifact served without TensorFlow gives Keras's outputs to 1e-5."
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import keras
    from conftest import settings_for
    from streamml.registry import save_version, Trained, dense_from_keras, load_version
    s = settings_for(tmp_path/'home')
    eng = make_engine(s); init_db(eng)
    rng = np.random.default_rng(0)
    X = rng.integers(1, 11, size=(300, 3)).astype(float); y = np.round(X.mean(axis=1)).astype(int)
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization(); norm.adapt(X)
    km = keras.Sequential([keras.Input((3,)), norm, keras.layers.Dense(16, activation='tanh'),
                           keras.layers.Dense(16, activation='tanh'), keras.layers.Dense(11, activation='softmax')])
    v = save_version(s, 'mlp', Trained(task='classification', serving=dense_from_keras(km, np.arange(11)), metric_name='accuracy',
                     metrics={'accuracy': 0.5}, holdout=(X[:50], y[:50])), files={'model.keras': km.save})
    promote(s, eng, v, announce=False)
    ch = Champions(s, eng, follow=False); ch.refresh_all()
    p = ch.get('mlp')
    want = km.predict_on_batch(X)
    assert np.abs(p.proba(X) - want).max() < 1e-5
    got = answer(ch, [parse_request({'model': 'mlp', 'payload': ','.join(map(str, row))}) for row in X])
    assert [r['result'] for r, _ in got] == want.argmax(axis=1).tolist()
    assert np.abs(load_version(v.path).proba(X) - keras.models.load_model(v.path/'model.keras').predict_on_batch(X)).max() < 1e-5
    eng.dispose()
