"""HTTP API: a real uvicorn server on a free port (503 until a champion, hot reload, 2018 route, limits, 403,
no TensorFlow), and route tests with FastAPI's TestClient (401, build, rollback, runs)."""
import json, subprocess, sys, uuid
import httpx, nbformat
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from streamml.procs import free_port
from streamml.scoring import Champions
from streamml.db import make_engine, init_db, runs, utcnow
from streamml.procs import terminate
from streamml.server import make_app, start_server, wait_http
from test_serving_helpers import dense_version, tree_version, linear_version, promote, wait_for

F2018 = {'input', 'result', 'accuracy', 'modelid', 'prediction-date'}

def test_real_server(settings, engine):
    s = settings
    port = free_port(); base = f'http://127.0.0.1:{port}'
    proc = start_server(s, port)
    try:
        wait_http(f'{base}/health', proc, status=503)              # up, but nothing to serve yet
        h = httpx.get(f'{base}/health').json()
        assert h['status'] == 'no model has a champion yet' and h['models'] == {}
        assert httpx.get(f'{base}/api/predict/mlp/3,4,5').status_code == 503
        v1 = promote(s, engine, dense_version(s, seed=1))           # announced: hot reload, no restart
        wait_http(f'{base}/health', proc, status=200)
        h = httpx.get(f'{base}/health').json()
        assert h['models'] == {'mlp': v1.version} and h['tensorflow_loaded'] is False
        r = httpx.get(f'{base}/api/predict/mlp/3,4,5')
        assert r.status_code == 200 and F2018 <= set(r.json()) and r.json()['modelid'] == v1.uuid
        assert isinstance(r.json()['result'], int) and r.json()['input'] == '3,4,5'
        one = httpx.post(f'{base}/predict', json={'model': 'mlp', 'payload': '3,4,5', 'id': 'a'}).json()
        assert one['id'] == 'a' and one['result'] == r.json()['result'] and one['version'] == v1.version
        many = httpx.post(f'{base}/predict', json={'model': 'mlp', 'rows': ['3,4,5', [1, 2, 3], '1,2']}).json()
        assert [('result' in x) for x in many] == [True, True, False] and 'expected 3 values' in many[2]['error']
        # validation: 4xx with reasons
        for body, status, why in [({'model': 'mlp', 'payload': '3,x,5'}, 422, 'not a number'),
                                  ({'model': 'mlp', 'payload': '3,4'}, 422, 'expected 3 values, got 2'),
                                  ({'model': 'xgb', 'payload': '3,4,5'}, 404, 'unknown model'),
                                  ({'model': 'dtr', 'payload': '3,4,5'}, 503, 'dtr has no champion yet'),
                                  ({'payload': '3,4,5'}, 422, '"model" must name a model'),
                                  ('"text"', 422, 'body must be a JSON object or array')]:
            r = httpx.post(f'{base}/predict', json=body)
            assert r.status_code == status and why in r.json()['error'], (body, r.status_code, r.text)
        r = httpx.post(f'{base}/predict', content=b'{not json', headers={'Content-Type': 'application/json'})
        assert r.status_code == 422 and 'not JSON' in r.json()['error']
        r = httpx.post(f'{base}/predict', content=b'{"model":"mlp","payload":"' + b'1,' * 40000 + b'1"}')
        assert r.status_code == 413 and 'limit' in r.json()['error']
        r = httpx.get(f'{base}/api/predict/mlp/3,4,5,6')
        assert r.status_code == 422 and F2018 - {'result'} <= set(r.json())
        # mutating routes without STREAMML_API_TOKEN: 403 saying how to enable them
        for r in (httpx.post(f'{base}/api/build/mlp'), httpx.get(f'{base}/api/build_mlp'), httpx.post(f'{base}/api/rollback/mlp')):
            assert r.status_code == 403 and 'STREAMML_API_TOKEN' in r.json()['error']
        # a second promotion is served without a restart
        v2 = promote(s, engine, dense_version(s, seed=2))
        wait_for(lambda: httpx.get(f'{base}/health').json()['models'] == {'mlp': v2.version}, 60, 'the new champion over HTTP')
        assert httpx.get(f'{base}/api/predict/mlp/3,4,5').json()['version'] == v2.version
        m = httpx.get(f'{base}/metrics').text
        assert 'streamml_http_requests_total{route="/predict",status="422"}' in m
        assert f'streamml_model_serving{{model="mlp",version="{v2.version}"}} 1.0' in m
        assert 'streamml_http_request_seconds_bucket' in m
        models = {x['model']: x for x in httpx.get(f'{base}/models').json()}
        assert models['mlp']['serving']['version'] == v2.version and models['mlp']['holdout_metric'] == v2.metric
        assert [x['version'] for x in models['mlp']['versions']] == [v1.version, v2.version]
        assert 'live' in models['mlp'] and models['dtr']['serving'] is None
        assert httpx.get(f'{base}/docs').status_code == 200
        assert '/api/predict/{model}/{csv}' in httpx.get(f'{base}/openapi.json').json()['paths']
    finally: terminate(proc)

def test_routes_with_token(settings, engine):
    s = settings.with_(api_token='s3cret')
    v1 = promote(s, engine, dense_version(s, seed=1), announce=False)
    v2 = promote(s, engine, dense_version(s, seed=2), announce=False)
    ch = Champions(s, engine, follow=False); ch.refresh_all()
    auth = {'Authorization': 'Bearer s3cret'}
    with TestClient(make_app(s, engine, ch)) as c:
        for h in ({}, {'Authorization': 'Bearer nope'}, {'Authorization': 's3cret'}, {'Authorization': 'Basic s3cret'}):
            r = c.post('/api/build/mlp', headers=h)
            assert r.status_code == 401 and r.headers['www-authenticate'] == 'Bearer' and 'bearer token' in r.json()['error']
        r = c.post('/api/build/mlp', headers=auth)
        assert r.status_code == 202 and r.json()['status'] == 'requested'
        assert c.get('/api/build_mlp', headers=auth).json()['status'] == 'merged'     # merge rule: one waiting build
        assert c.post('/api/build/xgb', headers=auth).status_code == 404
        assert c.post('/api/build/..%2Fetc', headers=auth).status_code in (404, 422)
        rows = c.get('/runs').json()
        assert [(x['model'], x['trigger'], x['status']) for x in rows] == [('mlp', 'http', 'merged'), ('mlp', 'http', 'requested')]
        assert c.get('/runs?limit=0').status_code == 422
        r = c.post('/api/rollback/mlp', headers=auth)
        assert r.status_code == 200 and r.json()['version'] == v1.version and r.json()['replaced'] == v2.version
        ch.refresh_all(); assert ch.versions() == {'mlp': v1.version}
        assert c.post('/api/rollback/slr', headers=auth).status_code in (404, 503)

def test_run_page(settings, engine):
    s = settings
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('print(42)', outputs=[
        nbformat.v4.new_output('stream', name='stdout', text='forty-two\n')])])
    run_id = str(uuid.uuid4()); path = s.path('runs', f'{run_id}.ipynb'); path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    outside = str(uuid.uuid4())
    with engine.begin() as c:
        c.execute(runs.insert(), [dict(run_id=run_id, model='mlp', trigger='cli', status='succeeded', notebook_path=str(path), requested_at=utcnow()),
                                  dict(run_id=outside, model='mlp', trigger='cli', status='failed', notebook_path='/etc/passwd', requested_at=utcnow())])
    ch = Champions(s, engine, follow=False); ch.refresh_all()
    with TestClient(make_app(s, engine, ch)) as c:
        r = c.get(f'/runs/{run_id}')
        assert r.status_code == 200 and r.headers['content-type'].startswith('text/html') and 'forty-two' in r.text
        assert c.get(f'/runs/{outside}').status_code == 404
        assert c.get(f'/runs/{uuid.uuid4()}').status_code == 404
        assert c.get('/runs/bad$id').status_code == 422
        assert {x['run_id'] for x in c.get('/runs').json()} == {run_id, outside}
