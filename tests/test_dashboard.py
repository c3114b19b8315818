"""The dashboard served by real Voila and loaded in headless Chromium, driven through the DevTools protocol.

Chromium runs with the flags of issue 6; the tests poll the DOM (with a deadline) until the widgets have rendered:
a screenshot alone, or `--virtual-time-budget`, leaves them "Loading widget...". They check the accuracy plot and
the champion table on an empty database, then fill the database through the package's functions and wait for
the page to redraw itself (no reload: the page's own refresh); that a dashboard behind a token shows a visitor
without it no page (and starts no kernel for them) and renders with it; that visits beyond the kernel cap start
no kernel; that idle kernels are culled; that a failing page shows visitors no traceback. Screenshots go to
`test-artifacts/`.
"""
import base64, json, os, re, shutil, subprocess, tempfile, time, urllib.request
from pathlib import Path
import httpx, psutil, pytest, sqlalchemy as sa
from conftest import ROOT, settings_for
from streamml.procs import free_port, answers, terminate
from streamml import db as D
from streamml.dashboard import example_fill
from streamml.dashboard_launcher import start_dashboard, TOKEN_VAR
from streamml.testing import wait_for

ARTIFACTS = ROOT/'test-artifacts'
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
if not Path(CHROMIUM).exists():   # a real part of the test: never skipped, `make test` installs it
    raise RuntimeError('Debian chromium is not installed: run `make system-deps` (make test does)')

STATE_JS = """(() => {
  const img = document.querySelector('img.streamml-live-plot');
  const tab = document.querySelector('table.streamml-champions');
  return JSON.stringify({
    live: !!img && img.complete && img.naturalWidth > 0,
    champions: tab ? tab.innerText : null,
    empty: !!document.querySelector('.streamml-empty'),
    runs: [...document.querySelectorAll('table.streamml-runs a')].map(a => a.getAttribute('href')),
    loading: document.body ? document.body.innerText.includes('Loading widget') : true,
    path: location.pathname,
    login: !!document.querySelector('input[type=password]'),
    error: document.body ? /Traceback|Error in cell|Kernel error/i.test(document.body.innerText) : false,
    text: document.body ? document.body.innerText.slice(0, 800) : ''});
})()"""


class DevTools:
    "A minimal Chrome DevTools protocol client over one page target's websocket."
    def __init__(self, port: int, deadline: float):
        import websocket
        url = f'http://127.0.0.1:{port}/json/list'
        while True:   # poll until the browser answers and has a page target
            try:
                targets = json.load(urllib.request.urlopen(url, timeout=2))
                page = next(t for t in targets if t.get('type') == 'page')
                break
            except (OSError, ValueError, StopIteration):
                if time.monotonic() > deadline: raise AssertionError('chromium DevTools did not answer')
                time.sleep(0.1)
        self.ws, self.n = websocket.create_connection(page['webSocketDebuggerUrl'], timeout=30, suppress_origin=True), 0

    def call(self, method: str, **params) -> dict:
        "Send one command and return its result (events in between are skipped)."
        self.n += 1
        self.ws.send(json.dumps({'id': self.n, 'method': method, 'params': params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.n:
                if 'error' in msg: raise AssertionError(f'{method}: {msg["error"]}')
                return msg.get('result', {})

    def state(self) -> dict:
        r = self.call('Runtime.evaluate', expression=STATE_JS, returnByValue=True)
        return json.loads(r['result']['value'])

    def wait_for(self, what: str, ok, timeout: float) -> dict:
        "Poll the DOM until `ok(state)` holds; fail with the last state after `timeout` seconds."
        deadline, st = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            st = self.state()
            assert not st['error'], f'the page shows an error: {st["text"]}'
            if ok(st): return st
            time.sleep(0.25)
        raise AssertionError(f'{what}: not rendered within {timeout} s; last DOM state {st}')

    def new_tab(self, url: str) -> str:
        "Open `url` in a new tab (a visit of its own); its target id."
        return self.call('Target.createTarget', url=url)['targetId']

    def close_tab(self, target_id: str) -> None:
        self.call('Target.closeTarget', targetId=target_id)

    def screenshot(self, path: Path) -> Path:
        data = self.call('Page.captureScreenshot', format='png', captureBeyondViewport=True)['data']
        path.parent.mkdir(parents=True, exist_ok=True); path.write_bytes(base64.b64decode(data))
        return path


@pytest.fixture
def chromium(tmp_path):
    "Headless Chromium with the DevTools protocol on a free port; stopped afterwards."
    port = free_port()
    proc = subprocess.Popen([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                             '--disable-component-update', '--disable-sync', '--no-first-run', f'--remote-debugging-port={port}',
                             f'--user-data-dir={tmp_path/"chromium"}', '--window-size=1280,2000', 'about:blank'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        dt = DevTools(port, time.monotonic() + 60)
        dt.call('Page.enable'); dt.call('Runtime.enable')
        yield dt
        dt.ws.close()
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()


@pytest.fixture(params=['sqlite', 'mariadb'])
def voila(request, tmp_path):
    "Voila serving the dashboard for a fresh database (SQLite, or MariaDB) in a temporary home; yields (settings, url, engine)."
    port = free_port()
    url = request.getfixturevalue('mariadb_url') if request.param == 'mariadb' else None
    s = settings_for(tmp_path/'home', db_url=url, STREAMML_DASHBOARD_PORT=port)
    engine = D.make_engine(s); D.init_db(engine)
    proc = start_dashboard(s, port, log_path=tmp_path/'voila.log')
    try:
        url = f'http://{s.host}:{port}/'
        try: voila_up(s.host, port, proc)
        except AssertionError as e: raise AssertionError(f'{e}; log:\n{(tmp_path/"voila.log").read_text()[-3000:]}')
        yield s, url, engine
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        engine.dispose()


def test_dashboard_in_chromium(voila, chromium):
    s, url, engine = voila
    chromium.call('Page.navigate', url=url)
    # empty database: the friendly message, a drawn (placeholder) accuracy plot and an empty champion table
    st = chromium.wait_for('empty page', lambda st: st['live'] and st['champions'] is not None and not st['loading'], 120)
    assert st['empty'] and 'No data yet' in st['text']
    assert 'no champion yet' in st['champions']
    chromium.screenshot(ARTIFACTS/f'dashboard-empty-{s.db_url.split(":")[0].split("+")[0]}.png')
    # fill the database; the page redraws by itself (browser-driven ticks), without a reload
    filled = example_fill(s, engine)
    st = chromium.wait_for('filled page', lambda st: filled['versions'][0] in (st['champions'] or '') and st['runs'], 120)
    assert not st['empty'] and st['live']
    assert 'dtr' in st['champions'] and 'rows)' in st['champions']   # champion with its rolling live accuracy
    assert f'http://{s.host}:{s.http_port}/runs/{filled["runs"][0]}' in st['runs']
    shot = chromium.screenshot(ARTIFACTS/f'dashboard-filled-{s.db_url.split(":")[0].split("+")[0]}.png')
    assert shot.stat().st_size > 10_000


def kernels(proc) -> list:
    "The live page kernels (ipykernel processes) under a Voila process."
    out = []
    for c in psutil.Process(proc.pid).children(recursive=True):
        try:
            if c.status() != psutil.STATUS_ZOMBIE and 'ipykernel' in ' '.join(c.cmdline()): out.append(c)
        except psutil.Error: pass   # exited meanwhile
    return out


def voila_up(host: str, port: int, proc, timeout: float=90) -> None:
    "Wait until Voila listens and its preheated kernel runs: a readiness check that is not a page visit (each visit takes a kernel)."
    def up():
        if proc.poll() is not None: raise AssertionError(f'voila exited with {proc.returncode}')
        return answers(host, port) and len(kernels(proc)) >= 1
    wait_for(up, timeout, 'Voila listening with its preheated kernel')


def stop(proc):
    "Stop Voila (SIGTERM, then SIGKILL after 15 s)."
    terminate(proc, 15)


def test_preheated_kernel_outlives_the_idle_timeout_and_idle_kernels_are_culled(tmp_path, chromium):
    """A page load long after start gets a live preheated kernel (its idle time starts when it is handed out);
    once the browser leaves, the page's kernel is culled and only the preheated one stays."""
    port = free_port()
    s = settings_for(tmp_path/'home')
    D.init_db(D.make_engine(s))
    proc = start_dashboard(s, port, log_path=tmp_path/'voila.log', cull_idle_s=5)
    try:
        url = f'http://{s.host}:{port}/'
        voila_up(s.host, port, proc)
        # wait (on the clock, the condition under test) until the pooled kernel is older than the idle timeout
        deadline = time.monotonic() + 90
        while not (kernels(proc) and time.time() - min(k.create_time() for k in kernels(proc)) > 12) and time.monotonic() < deadline: time.sleep(0.5)
        chromium.call('Page.navigate', url=url)
        chromium.wait_for('page on an old preheated kernel', lambda st: st['live'] and st['champions'] is not None and not st['loading'], 120)
        for _ in range(2): urllib.request.urlopen(url, timeout=60).read()   # page loads whose browser never connects
        assert len(kernels(proc)) >= 3
        chromium.call('Page.navigate', url='about:blank')
        wait_for(lambda: len(kernels(proc)) <= 1, 90, 'idle kernels culled, only the preheated one left')
    finally: stop(proc)


TOKEN = 'd4shb0ard-t0ken-for-tests'

def test_behind_a_token_a_visitor_without_it_gets_no_page_and_with_it_the_page(tmp_path, chromium):
    port = free_port()
    s = settings_for(tmp_path/'home', STREAMML_DASHBOARD_PORT=port)
    engine = D.make_engine(s); D.init_db(engine)
    filled = example_fill(s, engine)
    proc = start_dashboard(s, port, log_path=tmp_path/'voila.log', token=TOKEN)
    try:
        base = f'http://{s.host}:{port}/'
        voila_up(s.host, port, proc)
        # the token is on no command line (anyone may read those) and not in the page kernels' environment (the
        # environment Voila started with holds it: only its own user may read that)
        assert TOKEN not in ' '.join(psutil.Process(proc.pid).cmdline())
        for k in kernels(proc): assert TOKEN not in ' '.join(k.cmdline()) and TOKEN_VAR not in k.environ()
        r = httpx.get(base)
        assert r.status_code == 302 and r.headers['location'].startswith('/login'), (r.status_code, r.headers)
        for url in (base, base + '?token=wrong'):
            chromium.call('Page.navigate', url=url)
            st = chromium.wait_for(f'the login form for {url}', lambda st: st['login'], 60)
            assert st['path'] == '/login' and st['champions'] is None and not st['live'] and 'streamml' not in st['text']
        assert len(kernels(proc)) == 1                          # nobody's page ran: still only the preheated kernel
        chromium.call('Page.navigate', url=base + f'?token={TOKEN}')
        st = chromium.wait_for('the page with the token', lambda st: filled['versions'][0] in (st['champions'] or '') and
                               st['live'] and not st['loading'], 120)
        assert 'dtr' in st['champions'] and st['runs']
        chromium.screenshot(ARTIFACTS/'dashboard-with-token.png')
    finally:
        stop(proc)
        engine.dispose()


def test_visits_beyond_the_kernel_cap_start_no_kernel(tmp_path, chromium):
    port = free_port()
    s = settings_for(tmp_path/'home')
    D.init_db(D.make_engine(s))
    proc = start_dashboard(s, port, log_path=tmp_path/'voila.log', max_kernels=2, cull_idle_s=10)
    try:
        base = f'http://{s.host}:{port}/'
        voila_up(s.host, port, proc)
        chromium.call('Page.navigate', url=base)                 # visit 1: the preheated kernel, and a refill
        chromium.wait_for('visit 1', lambda st: st['live'] and st['champions'] is not None and not st['loading'], 120)
        wait_for(lambda: len(kernels(proc)) == 2, 60, 'the preheat pool refilled')
        tabs = [chromium.new_tab(base) for _ in range(3)]       # visit 2 takes the refill; 3 and 4 are beyond the cap
        counts = []
        for _ in range(20):                                     # watch the kernels while the tabs load
            counts.append(len(kernels(proc))); time.sleep(0.25)
        r = httpx.get(base, timeout=60)                          # and one more visit, to read its answer
        assert r.status_code == 503 and 'Too many visitors' in r.text, (r.status_code, r.text[-500:])
        assert max(counts) == 2 and len(kernels(proc)) == 2, counts
        log = (tmp_path/'voila.log').read_text()
        assert log.count('limit of live kernels') >= 3, log[-2000:]   # tabs 3, 4 and the GET were refused
        # the visitors leave: their kernels are culled and the preheated kernel comes back
        for t in tabs: chromium.close_tab(t)
        chromium.call('Page.navigate', url='about:blank')
        wait_for(lambda: len(kernels(proc)) == 1 and httpx.get(base, timeout=60).status_code == 200, 120,
                 'kernels culled, the pool refilled, and a new visit served')
    finally: stop(proc)


def test_a_failing_page_shows_visitors_no_traceback(tmp_path, chromium):
    port = free_port()
    (tmp_path/'a-file').write_text('not a folder')
    s = settings_for(tmp_path/'home', db_url=f'sqlite:///{tmp_path}/a-file/streamml.db')   # the page cannot open its database
    proc = start_dashboard(s, port, log_path=tmp_path/'voila.log')
    try:
        base = f'http://{s.host}:{port}/'
        voila_up(s.host, port, proc)
        chromium.call('Page.navigate', url=base)
        deadline, st = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            st = chromium.state()
            if 'There was an error when executing cell' in st['text']: break
            time.sleep(0.25)
        else: raise AssertionError(f'no error notice: {st}')
        text = chromium.call('Runtime.evaluate', expression='document.documentElement.outerHTML', returnByValue=True)['result']['value']
        for secret in ('Traceback', 'OperationalError', 'unable to open database', str(tmp_path), 'File "'):
            assert secret not in text, secret
        assert 'Traceback' in (tmp_path/'voila.log').read_text()   # the traceback is in the log, for the operator
    finally: stop(proc)
