"""The serving benchmarks run end to end with tiny sizes (figures are not asserted, only that they are produced
and that swaps fail nothing)."""
import shutil
import pytest
from streamml.bench_predict import bench_predict, bench_swap
from streamml.server import bench_http

def test_bench_swap(settings):
    lines = bench_swap(settings, ['--swaps', '3', '--rate', '100', '--interval', '0.3'])
    assert [l['system'] for l in lines] == ['streamml', 'no-swap']
    assert lines[0]['failed'] == 0 and lines[0]['versions'] >= 2 and lines[0]['p99_ms'] is not None

@pytest.mark.skipif(not shutil.which('wrk'), reason='wrk not installed (make system-deps)')
def test_bench_http(settings):
    lines = bench_http(settings, ['--seconds', '1', '--rounds', '1'])
    assert [l['system'] for l in lines] == ['streamml', 'constant']
    assert all(l['throughput'] > 0 and l['failed'] == 0 for l in lines) and 'ratio' in lines[1]

def test_bench_predict(settings):
    lines = bench_predict(settings, ['--n', '300', '--naive-n', '3', '--rate', '100', '--seconds', '1'])
    got = {(l['system'], l['metric']): l for l in lines}
    assert set(got) == {('streamml', 'throughput'), ('echo', 'throughput'), ('naive', 'throughput'),
                        ('streamml', 'latency'), ('echo', 'latency')}
    assert got['streamml', 'throughput']['n'] == 300 and got['naive', 'throughput']['n'] == 3
    assert got['streamml', 'latency']['failed'] == 0 and got['echo', 'latency']['failed'] == 0
