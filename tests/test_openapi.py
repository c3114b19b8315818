"""The OpenAPI document tells the truth: Schemathesis, with every one of its checks, against a real `streamml serve`.

The server is a child process on a free port, with a champion for every model (mlp twice, so it can roll back;
slr's stored R² is NaN, a non-finite figure `/models` must still answer), a run with an executed notebook, and a
bearer token, so the build and rollback routes are exercised too: Schemathesis sends the token where the document
declares the bearer scheme, and checks that those routes refuse requests without it or with a wrong one.

`--checks all`: no 5xx; every status, content type and header documented; every response body matching its
schema; schema-valid requests accepted and schema-violating ones refused; stateful sequences (GET /runs → GET
/runs/{run_id} through the document's link). Two settings, each a statement about the API rather than an excuse:
- a body over STREAMML_MAX_MESSAGE_BYTES is refused with 413 before its shape is read, so 413 counts as refusing
  schema-violating data (an array with more items than declared is also more bytes than allowed);
- a prediction request can fit the document and still be refused with 422 for its values: how many values a
  model takes, the range of the dtype it computes in and whether the result is finite depend on the serving
  model, which OpenAPI cannot state per model. So 422 counts as an answer to valid data on the two prediction
  routes only (`positive_data_acceptance`), and there only.
The seed is random (Schemathesis prints it; STREAMML_SCHEMATHESIS_SEED replays a run).
"""
import os, re, subprocess, sys
from pathlib import Path
import sqlalchemy as sa
from streamml.procs import free_port, terminate
from streamml.db import runs
from streamml.bench_http import start_server, wait_http
from http_helpers import served_home, add_run

ST = Path(sys.executable).parent/'st'
TOKEN = 'sch3ma-t0ken'
CONFIG = f'''
[auth.openapi.HTTPBearer]
bearer = "{TOKEN}"

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
include-path-regex = "^/(predict|api/predict/)"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "404", "422"]
'''
MAX_EXAMPLES = 40   # per operation and phase: ~800 requests, ~20 s on 2 cores


def _short(text: str) -> str:
    "Schemathesis output without the megabyte request bodies it reproduces (for an assertion message)."
    return '\n'.join(line[:300] for line in text.splitlines())[-8000:]


def test_schemathesis_finds_no_server_error_and_no_conformance_failure(settings, tmp_path):
    s = settings.with_(api_token=TOKEN)
    engine = served_home(s, r2=float('nan'))
    add_run(s, engine, 'forty-two\n', host='builder:4242')
    port = free_port(); base = f'http://127.0.0.1:{port}'
    proc = start_server(s, port)
    try:
        wait_http(f'{base}/health', proc)
        (tmp_path/'schemathesis.toml').write_text(CONFIG)
        seed = ['--seed', os.environ['STREAMML_SCHEMATHESIS_SEED']] if os.environ.get('STREAMML_SCHEMATHESIS_SEED') else []
        r = subprocess.run([str(ST), '--config-file', str(tmp_path/'schemathesis.toml'), '--no-color', 'run', f'{base}/openapi.json',
                            '--checks', 'all', '--workers', '2', '--max-examples', str(MAX_EXAMPLES), *seed],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
        summary = re.search(r'(\d+) generated, (\d+) passed', r.stdout)
        assert r.returncode == 0 and summary and summary.group(1) == summary.group(2), _short(r.stdout + r.stderr)
        assert int(summary.group(1)) > 300, summary.group(0)   # a real run, not a skipped one
        assert re.search(r'Operations:\s+10 selected / 10 total', r.stdout) and 'Tested: 10' in r.stdout, _short(r.stdout)
        seed_line = re.search(r'Seed: \d+', r.stdout)
        print(f'schemathesis: {summary.group(0)}; {seed_line.group(0) if seed_line else ""}')
        # the token reached the mutating routes: the API recorded build requests (trigger http)
        with engine.connect() as c:
            assert c.execute(sa.select(sa.func.count()).select_from(runs).where(runs.c.trigger == 'http')).scalar() > 0
    finally:
        terminate(proc)
        engine.dispose()
