"""The deployment files in deploy/ say what the suite runs: every Procfile line and every systemd unit's ExecStart is
a `streamml` command line its parser accepts, every variable a unit expands is set in the example environment
file, and every STREAMML_* variable there is one the package reads. tests/test_hosts.py runs the Procfiles' commands
on three hosts."""
import re, shlex
from pathlib import Path
import pytest
from streamml.cli import parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT/'deploy'


def procfile(role: str) -> dict:
    "`{process: argv after 'streamml'}` of deploy/Procfile.<role>."
    lines = [l for l in (DEPLOY/f'Procfile.{role}').read_text().splitlines() if l.strip() and not l.startswith('#')]
    out = {}
    for l in lines:
        name, cmd = l.split(':', 1); argv = shlex.split(cmd)
        assert argv[0] == 'streamml', l
        out[name.strip()] = argv[1:]
    return out


def env_file() -> dict:
    pairs = [l.split('=', 1) for l in (DEPLOY/'streamml.env').read_text().splitlines() if l.strip() and not l.startswith('#')]
    return {k: v for k, v in pairs}


def units() -> dict:
    return {p.stem: dict(re.findall(r'^(\w+)=(.*)$', p.read_text(), re.M)) for p in sorted((DEPLOY/'systemd').glob('*.service'))}


def accepted(argv: list[str]):
    ns = parser(argv).parse_args(argv)
    assert ns.command == argv[0]
    return ns


@pytest.mark.parametrize('role', ['builder', 'predictor'])
def test_procfile_commands_parse(role):
    procs = procfile(role)
    assert 'events' in procs
    for name, argv in procs.items(): accepted(argv)
    assert accepted(procs['events']).no_builds == (role == 'predictor')   # builds run on builder hosts only


def test_units_run_streamml_with_the_example_environment():
    env, seen = env_file(), set()
    assert {u: v['EnvironmentFile'] for u, v in units().items()} == {u: '/etc/streamml/streamml.env' for u in units()}
    for role_args in ('', '--no-builds'):     # STREAMML_EVENTS_ARGS on builder and predictor hosts
        for name, u in units().items():
            exe, *argv = shlex.split(u['ExecStart'])
            assert exe.endswith('/.venv/bin/streamml'), name
            seen |= {a[1:] for a in argv if a.startswith('$')}
            argv = [x for a in argv for x in ((env | {'STREAMML_EVENTS_ARGS': role_args})[a[1:]].split() if a.startswith('$') else [a])]
            accepted(argv)
            assert name == f'streamml-{argv[0]}'
    assert seen <= env.keys()


def test_example_environment_names_only_real_variables():
    code = ' '.join(p.read_text() for p in (ROOT/'streamml').glob('*.py'))
    documented = (ROOT/'scripts'/'env.sh').read_text()
    for k in env_file():
        if k == 'STREAMML_EVENTS_ARGS': continue   # the units' own
        assert k in code, k
        assert k in documented, k
