"""Scale-out: two `streamml predictions` processes share a 3-partition request topic; one is killed with SIGKILL
mid-load and every request is still answered (duplicates allowed, no gaps)."""
import os, signal, subprocess, sys, threading, time, uuid
import httpx
from streamml.broker import create_topics
from streamml.procs import free_port
from streamml.config import child_env, make_producer
from streamml.db import make_engine, init_db
from conftest import ROOT, settings_for, unique_topics
from test_serving_helpers import dense_version, promote, wait_for, Responses, send_raw

def start(s, group, *extra):
    env = child_env(s); env['STREAMML_LOG_LEVEL'] = 'WARNING'
    return subprocess.Popen([sys.executable, '-m', 'streamml.cli', 'predictions', '--group', group, *map(str, extra)], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def test_two_predictors_one_killed(tmp_path, broker):
    s = settings_for(tmp_path/'home', broker, topics=unique_topics('scale'))
    create_topics(s, 3)
    eng = make_engine(s); init_db(eng)
    v = promote(s, eng, dense_version(s), announce=False)
    group = f'scale-{uuid.uuid4().hex[:8]}'
    mport = free_port()
    procs = [start(s, group), start(s, group, '--metrics-port', mport)]
    resp = Responses(s)
    try:
        # both joined: every partition's warm-up request answered
        warm = [f'w{i}' for i in range(12)]
        send_raw(s, [(k, f'{{"model":"mlp","payload":"1,2,3","id":"{k}"}}'.encode()) for k in warm])
        resp.wait_keys(warm, 90)
        assert all(p.poll() is None for p in procs)
        keys, done = [f'k{i}' for i in range(400)], threading.Event()
        def load():
            p = make_producer(s)
            for k in keys:
                p.send(s.topics.prediction_request_topic, key=k.encode(), value=f'{{"model":"mlp","payload":"3,4,5","id":"{k}"}}'.encode())
                time.sleep(0.005)   # pacing the offered load
            p.flush(); p.close(); done.set()
        t = threading.Thread(target=load); t.start()
        wait_for(lambda: len(resp.poll()) > len(warm) + 100, 60, 'load to be answered')
        os.kill(procs[0].pid, signal.SIGKILL); procs[0].wait()
        t.join()
        got = resp.wait_keys(keys, 120)   # the survivor takes over the dead one's partitions
        assert all('result' in got[k] and got[k]['version'] == v.version for k in keys)
        ids = [r.key.decode() for r in resp.records]
        assert set(keys) <= set(ids)   # no gaps; duplicates of the killed batch are allowed
        m = httpx.get(f'http://127.0.0.1:{mport}/metrics').text   # the survivor's own Prometheus metrics
        assert 'streamml_predictions_total{outcome="prediction"}' in m and 'streamml_predictions_consumer_lag' in m
    finally:
        resp.close()
        for p in procs:
            if p.poll() is None: p.terminate(); p.wait(30)
        eng.dispose()
