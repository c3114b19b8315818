"""HTTP API against real `streamml serve` processes on free ports: 503 until a champion, hot reload, the 2018 route,
statuses with reasons, hostile input, what the read routes show with and without the token, build and rollback,
run pages, several workers on one port, and no benchmark baseline in the production command."""
import json, re, socket, subprocess, sys
from contextlib import contextmanager
import httpx
from conftest import ROOT
from streamml.procs import free_port, terminate
from streamml.bench_http import start_server, wait_http
from streamml.testing import wait_for
from http_helpers import dense_version, tree_version, linear_version, promote, served_home, add_run

F2018 = {'input', 'result', 'accuracy', 'modelid', 'prediction-date'}
HOST = socket.gethostname()


@contextmanager
def serving(s, *extra, status=200):
    "A `streamml serve` child process answering `status` on /health; yields its base URL and process."
    port = free_port(); base = f'http://127.0.0.1:{port}'
    proc = start_server(s, port, *extra)
    try:
        wait_http(f'{base}/health', proc, status=status)
        yield base, proc
    finally: terminate(proc)


def strict(r: httpx.Response):
    "The body as JSON, failing on NaN or Infinity (Python writes them; JSON has no such numbers)."
    def refuse(c): raise AssertionError(f'{c} in the answer of {r.request.url}: {r.text[:300]}')
    return json.loads(r.text, parse_constant=refuse)


def test_real_server(settings, engine):
    s = settings
    with serving(s, status=503) as (base, proc):                 # up, but nothing to serve yet
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
        for body, status, why in [({'model': 'mlp', 'payload': '3,x,5'}, 422, 'payload: should be a CSV of numbers'),
                                  ({'model': 'mlp', 'payload': '3,4'}, 422, 'expected 3 values, got 2'),
                                  ({'model': 'xgb', 'payload': '3,4,5'}, 404, 'unknown model'),
                                  ({'model': 'dtr', 'payload': '3,4,5'}, 503, 'dtr has no champion yet'),
                                  ({'payload': '3,4,5'}, 422, 'model: Field required'),
                                  ('"text"', 422, 'body must be a JSON object or array')]:
            r = httpx.post(f'{base}/predict', json=body)
            assert r.status_code == status and why in r.json()['error'], (body, r.status_code, r.text)
        r = httpx.post(f'{base}/predict', content=b'{not json', headers={'Content-Type': 'application/json'})
        assert r.status_code == 422 and 'not JSON' in r.json()['error']
        r = httpx.post(f'{base}/predict', content=b'{"model":"mlp","payload":"' + b'1,' * 40000 + b'1"}')
        assert r.status_code == 413 and 'limit' in r.json()['error']
        r = httpx.get(f'{base}/api/predict/mlp/3,4,5,6')
        assert r.status_code == 422 and F2018 - {'result'} <= set(r.json())
        for r in (httpx.post(f'{base}/api/build/mlp'), httpx.get(f'{base}/api/build_mlp'), httpx.post(f'{base}/api/rollback/mlp')):
            assert r.status_code == 403 and 'STREAMML_API_TOKEN' in r.json()['error']   # no token configured: disabled
        v2 = promote(s, engine, dense_version(s, seed=2))           # a second promotion, served without a restart
        wait_for(lambda: httpx.get(f'{base}/health').json()['models'] == {'mlp': v2.version}, 60, 'the new champion over HTTP')
        assert httpx.get(f'{base}/api/predict/mlp/3,4,5').json()['version'] == v2.version
        m = httpx.get(f'{base}/metrics')
        assert m.headers['content-type'].startswith('text/plain')
        assert 'streamml_http_requests_total{route="/predict",status="422"}' in m.text
        assert f'streamml_model_serving{{model="mlp",version="{v2.version}"}} 1.0' in m.text
        models = {x['model']: x for x in httpx.get(f'{base}/models').json()}
        assert models['mlp']['serving']['version'] == v2.version and models['mlp']['holdout_metric'] == v2.metric
        assert [x['version'] for x in models['mlp']['versions']] == [v1.version, v2.version]
        assert 'live' in models['mlp'] and models['dtr']['serving'] is None
        assert httpx.get(f'{base}/docs').status_code == 200
        assert '/api/predict/{model}/{csv}' in httpx.get(f'{base}/openapi.json').json()['paths']


def test_hostile_input_is_refused_with_a_reason_and_nothing_non_finite_is_written(settings):
    s = settings
    engine = served_home(s, r2=float('nan'))                        # slr: slope 2, its stored R² NaN
    with serving(s) as (base, _):
        r = httpx.get(f'{base}/api/predict/slr/1e308')              # beyond the served float32 range: refused, never computed
        body = strict(r)
        assert r.status_code == 422 and 'float32 range' in body['error'] and 'result' not in body, r.text
        assert body['input'] == '1e308' and body['model'] == 'slr' and body['accuracy'] is None   # NaN R² written as null
        for payload in ([1e39, 1, 1], '3.5e38,1,1', '1,1,-1e39'):  # beyond float32, the dtype the mlp computes in
            r = httpx.post(f'{base}/predict', json={'model': 'mlp', 'payload': payload})
            assert r.status_code == 422 and 'float32 range' in strict(r)['error'], (payload, r.text)
        assert httpx.post(f'{base}/predict', json={'model': 'mlp', 'payload': [3e38, 1, 1]}).status_code == 200
        rows = strict(httpx.post(f'{base}/predict', json={'model': 'slr', 'rows': ['1', '1e308']}))
        assert rows[0]['result'] == 3.0 and 'float32 range' in rows[1]['error'] and 'result' not in rows[1]
        bounded = [('post', '/predict', dict(content=b'{"model":"mlp","payload":[NaN,1,1]}'), 'finite number'),
                   ('post', '/predict', dict(content=b'[' * 60_000), 'recursion limit'),
                   ('post', '/predict', dict(json=[{'model': 'slr', 'payload': '1'}] * 1001), 'at most 1000 items'),
                   ('post', '/predict', dict(json={'model': 'mlp', 'payload': '1', 'id': 'x' * 201}), 'id'),
                   ('get', '/api/predict/mlp/' + '1,' * 2100 + '1', {}, 'path parameter csv'),
                   ('get', '/api/predict/mlp/1,nan,3', {}, 'path parameter csv'),
                   ('get', '/api/predict/MLP/1,2,3', {}, 'path parameter model'),
                   ('get', '/runs?limit=100000', {}, 'query parameter limit'),
                   ('get', '/runs?model=' + 'a' * 40, {}, 'query parameter model'),
                   ('get', '/runs/' + 'r' * 65, {}, 'path parameter run_id')]
        for method, url, kw, why in bounded:
            r = getattr(httpx, method)(f'{base}{url}', **kw)
            assert r.status_code == 422 and why in strict(r)['error'], (url[:60], r.status_code, r.text[:300])
        r = httpx.get(f'{base}/models')
        assert r.status_code == 200 and {x['model']: x for x in strict(r)}['slr']['holdout_metric'] is None
    engine.dispose()


def test_read_routes_show_server_details_only_with_the_token(settings):
    s = settings.with_(api_token='r3ad-t0ken')
    engine = served_home(s)
    broken = promote(s, engine, tree_version(s, depth=3), announce=False)   # a champion that cannot be served...
    (broken.path/'serving.npz').unlink()                                     # ...and whose error names a file
    run_id = add_run(s, engine, f'home is {s.home} on {HOST}\n', host=f'{HOST}:971357', status='failed',
                     error=f'papermill failed: {s.home}/runs/x.ipynb (pid 971357) on {HOST}')
    leaks = lambda text: [x for x in (str(s.home), '971357', 'rss_mb', '"pid"') if x in text] + re.findall(rf'(?<![\w.-]){re.escape(HOST)}(?![\w-])', text)
    auth = {'Authorization': 'Bearer r3ad-t0ken'}
    with serving(s) as (base, proc):
        for path in ('/health', '/models', '/runs', f'/runs/{run_id}'):
            for headers in ({}, {'Authorization': 'Bearer wrong'}):
                r = httpx.get(f'{base}{path}', headers=headers, timeout=60)   # a run page's first render imports nbconvert
                assert r.status_code == 200 and not leaks(r.text), (path, leaks(r.text))
        run = httpx.get(f'{base}/runs').json()[0]
        assert 'host' not in run and 'notebook_path' not in run and run['error'].startswith('papermill failed: <path>')
        why = {x['model']: x for x in httpx.get(f'{base}/models').json()}['dtr']['why_not_serving']
        assert 'serving.npz' not in why and '<path>' in why, why
        h = httpx.get(f'{base}/health', headers=auth).json()           # with the token: the details are there
        assert h['pid'] == proc.pid and h['rss_mb'] > 10
        run = httpx.get(f'{base}/runs', headers=auth).json()[0]
        assert run['host'] == f'{HOST}:971357' and run['notebook_path'] == str(s.path('runs', f'{run_id}.ipynb'))
        assert str(s.home) in httpx.get(f'{base}/runs/{run_id}', headers=auth).text
        assert str(broken.path) in {x['model']: x for x in httpx.get(f'{base}/models', headers=auth).json()}['dtr']['why_not_serving']
    engine.dispose()


def test_build_and_rollback_with_the_token(settings, engine):
    s = settings.with_(api_token='s3cret')
    v1 = promote(s, engine, dense_version(s, seed=1), announce=False)
    v2 = promote(s, engine, dense_version(s, seed=2), announce=False)
    promote(s, engine, linear_version(s), announce=False)
    auth = {'Authorization': 'Bearer s3cret'}
    with serving(s) as (base, _):
        for h in ({}, {'Authorization': 'Bearer nope'}, {'Authorization': 's3cret'}, {'Authorization': 'Basic s3cret'}):
            r = httpx.post(f'{base}/api/build/mlp', headers=h)
            assert r.status_code == 401 and r.headers['www-authenticate'] == 'Bearer' and 'bearer token' in r.json()['error']
        r = httpx.post(f'{base}/api/build/mlp', headers=auth)
        assert r.status_code == 202 and r.json()['status'] == 'requested'
        assert httpx.get(f'{base}/api/build_mlp', headers=auth).json()['status'] == 'merged'   # one waiting build per model
        assert httpx.post(f'{base}/api/build/xgb', headers=auth).status_code == 404
        assert httpx.post(f'{base}/api/build/Bad.Name', headers=auth).status_code == 422       # the declared name pattern
        assert httpx.post(f'{base}/api/build/..%2Fetc', headers=auth).status_code in (404, 422)  # no route, or not a name
        rows = httpx.get(f'{base}/runs').json()
        assert [(x['model'], x['trigger'], x['status']) for x in rows] == [('mlp', 'http', 'merged'), ('mlp', 'http', 'requested')]
        r = httpx.post(f'{base}/api/rollback/mlp', headers=auth)
        assert r.status_code == 200 and r.json()['version'] == v1.version and r.json()['replaced'] == v2.version
        wait_for(lambda: httpx.get(f'{base}/health').json()['models'].get('mlp') == v1.version, 60, 'the rolled-back champion served')
        r = httpx.post(f'{base}/api/rollback/slr', headers=auth)
        assert r.status_code == 409 and 'no earlier champion' in r.json()['error']


def test_run_page(settings, engine):
    s = settings
    run_id = add_run(s, engine, 'forty-two\n')
    outside = add_run(s, engine, None, notebook_path='/etc/passwd', status='failed')
    with serving(s, status=503) as (base, _):
        r = httpx.get(f'{base}/runs/{run_id}', timeout=60)   # the first page imports nbconvert
        assert r.status_code == 200 and r.headers['content-type'].startswith('text/html') and 'forty-two' in r.text
        for rid, status in ((outside, 404), ('1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed', 404), ('bad$id', 422)):
            r = httpx.get(f'{base}/runs/{rid}')
            assert r.status_code == status and r.headers['content-type'] == 'application/json', (rid, r.status_code, r.text)
        assert {x['run_id'] for x in httpx.get(f'{base}/runs').json()} == {run_id, outside}


def test_several_workers_share_one_port(settings, engine):
    s = settings.with_(api_token='w0rkers')
    v = promote(s, engine, dense_version(s, seed=1), announce=False)
    auth = {'Authorization': 'Bearer w0rkers'}
    with serving(s, '--workers', '2') as (base, proc):
        pids = set()
        def two_workers():   # new connections are spread over the workers by the kernel: poll until both answered
            with httpx.Client() as c: pids.add(c.get(f'{base}/health', headers=auth).json()['pid'])
            return len(pids) == 2
        wait_for(two_workers, 60, 'answers from two worker processes')
        assert proc.pid not in pids                                   # the supervisor only watches the workers
        for _ in range(20):
            with httpx.Client() as c:
                r = c.get(f'{base}/api/predict/mlp/3,4,5')
                assert r.status_code == 200 and r.json()['version'] == v.version


def test_production_serve_has_no_benchmark_baseline():
    r = subprocess.run([sys.executable, '-m', 'streamml.cli', 'serve', '--constant'], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and 'unrecognized arguments: --constant' in r.stderr
    code = ('import sys, streamml.server, streamml.http_io\n'
            'bad = [m for m in sys.modules if m == "streamml.testing" or m.startswith("streamml.bench")]\n'
            'assert not bad, bad\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
