"""Hot reload under load: no request fails, and each response is exactly what the version it names computes."""
import threading, time, uuid
import numpy as np
from streamml.db import make_engine, init_db
from streamml.registry import load_version
from test_serving_helpers import dense_version, promote, wait_for, Service, Responses, send_raw
from streamml.config import make_producer

def test_swaps_under_load(settings):
    s = settings
    eng = make_engine(s); init_db(eng)
    versions = {v.version: v for v in [promote(s, eng, dense_version(s, seed=0), announce=False)]}
    rng = np.random.default_rng(7)
    rows = rng.integers(1, 11, size=(600, 3))
    sent, done = {}, threading.Event()
    def load():   # ~200 requests/s while the swaps happen
        p = make_producer(s)
        for i, row in enumerate(rows):
            key = f'r{i}'; csv = ','.join(map(str, row)); sent[key] = row
            p.send(s.topics.prediction_request_topic, key=key.encode(), value=f'{{"model":"mlp","payload":"{csv}","id":"{key}"}}'.encode())
            time.sleep(0.005)   # pacing the offered load
        p.flush(); p.close(); done.set()
    resp = Responses(s)
    with Service(s, check_interval=3600):
        wait_for(lambda: _answered_once(s, resp), 60, 'the service to answer')
        t = threading.Thread(target=load); t.start()
        for seed in range(1, 6):   # five hot swaps while the load runs
            wait_for(lambda n=seed: len(resp.poll()) > n * 80, 60, 'responses between swaps')
            v = promote(s, eng, dense_version(s, seed=seed)); versions[v.version] = v
        t.join()
        got = resp.wait_keys(sent, 90)
        last = v.version
        wait_for(lambda: _answered_once(s, resp, last), 30, 'the last version to serve')
    resp.close()
    preds = {name: load_version(v.path) for name, v in versions.items()}
    used = set()
    for key, row in sent.items():
        r = got[key]
        assert 'error' not in r and r['version'] in versions, r       # never failed, always names its version
        assert r['result'] == int(preds[r['version']].predict(np.array([row], float))[0]), r   # computed by that version
        assert r['modelid'] == versions[r['version']].uuid
        used.add(r['version'])
    assert len(used) >= 3, used   # the load really spanned several swaps
    eng.dispose()

def _answered_once(s, resp, version=None):
    key = f'probe-{uuid.uuid4().hex[:6]}'
    send_raw(s, [(key, f'{{"model":"mlp","payload":"1,2,3","id":"{key}"}}'.encode())])
    try: r = resp.wait_keys([key], 5)[key]
    except AssertionError: return False
    return 'result' in r and (version is None or r['version'] == version)
