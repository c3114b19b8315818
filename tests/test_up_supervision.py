"""`streamml up` supervises the broker it started (issue 14, item 3): kill -9 of its embedded Tansu while `events`
and the demo stream run; up restarts it on the same port, creates the topics again with the intended partition count
(1, not the 4 Tansu gives a topic it creates by itself), and training rows are stored again without restarting a
service. Tansu only, by nature: it is the broker `up` starts by default, and a restarted Tansu is a new, empty
cluster (new id), which is exactly what up has to cope with. The figures go to test-artifacts/up-supervision.jsonl.
"""
import json, os, re, signal, subprocess, sys, threading, time
import psutil, sqlalchemy as sa
from conftest import ROOT, quiet_ports
from streamml.config import load_settings, make_admin
from streamml.db import make_engine, training_data
from streamml.testing import stand_in_project, wait_for


def rows(db_url) -> int:
    eng = make_engine(load_settings({'STREAMML_DB_URL': db_url}))
    try:
        with eng.connect() as c: return c.execute(sa.select(sa.func.count()).select_from(training_data)).scalar()
    except sa.exc.DBAPIError: return 0
    finally: eng.dispose()

def tansu_child(up_pid: int) -> psutil.Process:
    "The embedded broker among `up`'s children."
    kids = [k for k in psutil.Process(up_pid).children() if '--cluster-id' in k.cmdline()]
    assert len(kids) == 1, [k.cmdline()[:3] for k in psutil.Process(up_pid).children()]
    return kids[0]


def test_up_restarts_its_killed_broker_and_rows_are_stored_again(tmp_path):
    proj, port = stand_in_project(tmp_path/'proj'), quiet_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith('STREAMML_')} | {'STREAMML_PROJECT': str(proj), 'PYTHONUNBUFFERED': '1'}
    p = subprocess.Popen([sys.executable, '-m', 'streamml.cli', 'up', '--demo', '--broker-port', str(port), '--services', 'events,demo'],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    threading.Thread(target=lambda: [out.append(l) for l in p.stdout], daemon=True).start()
    text = lambda: ''.join(out)
    db = f'sqlite:///{proj}/var/demo/streamml.db'
    try:
        wait_for(lambda: 'streamml is up' in text() or p.poll() is not None, 120, 'up ready')
        wait_for(lambda: rows(db) >= 50 or p.poll() is not None, 120, '50 demo rows stored')
        assert p.poll() is None, text()[-3000:]
        services = {k.pid for k in psutil.Process(p.pid).children() if '--cluster-id' not in k.cmdline()}
        old = tansu_child(p.pid)
        t_kill = time.monotonic(); old.kill(); old.wait(10)
        m = wait_for(lambda: re.search(r'broker +died; restarted in ([\d.]+) s .*topics created again \((\d+) partition', text()),
                     60, 'the restart line')
        restarted_s = time.monotonic() - t_kill
        assert m.group(2) == '1'
        again = wait_for(lambda: re.search(r'training rows stored again ([\d.]+) s after the broker restarted', text()), 120,
                         'rows stored again')
        new = tansu_child(p.pid)
        assert new.pid != old.pid and p.poll() is None
        a = make_admin(load_settings({'STREAMML_BOOTSTRAP_SERVERS': f'127.0.0.1:{port}', 'STREAMML_KAFKA_PROFILE': 'embedded'}))
        try:
            topics = [t for t in a.list_topics() if not t.startswith('_')]
            parts = {d['name']: len(d['partitions']) for d in a.describe_topics(topics)}
        finally: a.close()
        assert len(parts) == 6 and set(parts.values()) == {1}, parts
        assert services == {k.pid for k in psutil.Process(p.pid).children() if '--cluster-id' not in k.cmdline()}, text()[-4000:]   # none restarted
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0, text()[-3000:]
    finally:
        if p.poll() is None:
            kids = psutil.Process(p.pid).children(recursive=True)
            p.kill(); p.wait()
            for k in kids:
                try: k.kill()
                except psutil.Error: pass
    line = {'test': 'up: embedded broker killed', 'engine': 'tansu', 'restart_took_s': float(m.group(1)),
            'restart_line_after_s': round(restarted_s, 2), 'rows_stored_again_after_restart_s': float(again.group(1)),
            'partitions': parts[next(iter(parts))]}
    (ROOT/'test-artifacts').mkdir(exist_ok=True)
    with open(ROOT/'test-artifacts'/'up-supervision.jsonl', 'a') as f: f.write(json.dumps(line) + '\n')
    print(json.dumps(line))
