"""Every long-running command stops cleanly on SIGTERM and on SIGINT (issue 11, item 8): idle and busy, exit code 0
within 2 s, and nothing it started left running — what systemd, a container runtime or `streamml up` expect.
"""
import signal, subprocess, sys, threading, time, uuid
import psutil, pytest
from conftest import ROOT, tansu_only
from streamml.broker import create_topics
from streamml.config import child_env, make_producer
from streamml.messages import training_event, prediction_request
from streamml.procs import free_port, answers
from streamml.testing import settings_for, unique_topics, stand_in_project, wait_for

STOP_WITHIN = 2.0


class Load:
    "Keeps a command busy from a thread: Kafka records, or HTTP requests."
    def __init__(self, s, kind, port=None):
        self.s, self.kind, self.port, self.on = s, kind, port, True
        self.th = threading.Thread(target=self.run, daemon=True)
    def run(self):
        if self.kind == 'http':
            import httpx
            while self.on:
                try: httpx.post(f'http://127.0.0.1:{self.port}/predict', json={'model': 'mlp', 'payload': '3,4,5'}, timeout=2)
                except httpx.HTTPError: pass
            return
        p, i = make_producer(self.s), 0
        topic = self.s.topics.event_topic if self.kind == 'events' else self.s.topics.prediction_request_topic
        while self.on:
            p.send(topic, training_event(f'{i % 10},1,2,{i % 11}') if self.kind == 'events' else prediction_request('mlp', '3,4,5', str(i)))
            i += 1
            if i % 200 == 0: p.flush()
        p.close(2)
    def __enter__(self): self.th.start(); return self
    def __exit__(self, *exc): self.on = False; self.th.join(10)


def command(name, s, port):
    "`(argv, ready(proc, output), load kind)` of each long-running command."
    said = lambda text: lambda p, out: text in out
    return {'broker':      (['broker', '--port', port], said('broker listening'), 'events'),
            'events':      (['events', '--no-builds'], said('consuming'), 'events'),
            'predictions': (['predictions'], said('consuming'), 'requests'),
            'serve':       (['serve', '--port', port], lambda p, out: answers('127.0.0.1', port), 'http'),
            'dashboard':   (['dashboard', '--port', port], lambda p, out: answers('127.0.0.1', port), None),
            'demo':        (['demo', '--rate', '200'], said('demo stream:'), None),
            'up':          (['up', '--broker-port', port, '--services', 'events,predictions'], said('streamml is up'), 'events')}[name]


BUSY = pytest.mark.parametrize('busy', [False, True], ids=['idle', 'busy'])
SIGNALS = pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])


@BUSY
@SIGNALS
@pytest.mark.parametrize('name', ['events', 'predictions', 'serve', 'demo'])
def test_stops_cleanly(name, sig, busy, broker, tmp_path):
    "A service talking to the session's broker (both engines) stops within 2 s."
    stops_cleanly(name, sig, busy, broker, tmp_path)


@BUSY
@SIGNALS
@tansu_only('the dashboard (Voila) reads the database only: it does not talk to a broker')
def test_dashboard_stops_cleanly(sig, busy, broker, tmp_path):
    stops_cleanly('dashboard', sig, busy, broker, tmp_path)


@BUSY
@SIGNALS
@pytest.mark.parametrize('name', ['broker', 'up'])
@tansu_only('`streamml broker` (no --engine) and `streamml up` start an embedded Tansu of their own; '
            '`broker --engine kafka` on SIGTERM is tests/test_cluster.py')
def test_own_broker_stops_cleanly(name, sig, busy, broker, tmp_path):
    stops_cleanly(name, sig, busy, broker, tmp_path)


def stops_cleanly(name, sig, busy, broker, tmp_path):
    port = free_port()
    s = settings_for(tmp_path/'home', broker if name != 'up' else f'127.0.0.1:{port}', topics=unique_topics(name))
    s = s.with_(project_root=stand_in_project(tmp_path/'proj')) if name in ('events', 'up') else s
    if name != 'up': create_topics(s)
    env = child_env(s)
    if name == 'up': env = {k: v for k, v in env.items() if k != 'STREAMML_BOOTSTRAP_SERVERS'}   # up starts its own broker
    argv, ready, load = command(name, s, str(port))
    p = subprocess.Popen([sys.executable, '-m', 'streamml.cli', *argv], env=env, cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = []
    threading.Thread(target=lambda: [out.append(line) for line in p.stdout], daemon=True).start()
    try:
        wait_for(lambda: ready(p, ''.join(out)) or p.poll() is not None, 120, f'{name} ready')
        assert p.poll() is None, ''.join(out)[-3000:]
        kids = psutil.Process(p.pid).children(recursive=True)
        with (Load(s if name != 'up' else s.with_(bootstrap_servers=f'127.0.0.1:{port}'), load, port) if busy and load else _nothing()):
            if busy: time.sleep(1.0)   # let the load reach the command (a duration of load, not a readiness wait)
            t0 = time.monotonic()
            p.send_signal(sig)
            code = p.wait(30)
            took = time.monotonic() - t0
        assert code == 0, f'{name} exited with {code}\n' + ''.join(out)[-3000:]
        assert took <= STOP_WITHIN, f'{name} took {took:.1f} s to stop'
        left = [k for k in kids if _running(k)]
        assert not left, f'{name} left {[(k.pid, k.cmdline()[:3]) for k in left]} running'
    finally:
        if p.poll() is None: p.kill(); p.wait()


class _nothing:
    def __enter__(self): return self
    def __exit__(self, *exc): pass

def _running(k: psutil.Process) -> bool:
    try: return k.is_running() and k.status() != psutil.STATUS_ZOMBIE
    except psutil.Error: return False
