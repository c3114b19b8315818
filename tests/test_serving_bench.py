"""The serving benchmarks run end to end with tiny sizes (figures are not asserted, only that they are produced
and that swaps fail nothing). The HTTP bench has its own test: tests/test_bench_http.py."""
from streamml.bench_predict import bench_predict, bench_swap

def test_bench_swap(settings):
    lines = bench_swap(settings, ['--swaps', '3', '--rate', '100', '--interval', '0.3'])
    assert [l['system'] for l in lines] == ['streamml', 'no-swap']
    assert lines[0]['failed'] == 0 and lines[0]['versions'] >= 2 and lines[0]['p99_ms'] is not None

def test_bench_predict(settings):
    lines = bench_predict(settings, ['--n', '300', '--naive-n', '3', '--rate', '100', '--seconds', '1'])
    got = {(l['system'], l['metric']): l for l in lines}
    assert set(got) == {('streamml', 'throughput'), ('echo', 'throughput'), ('naive', 'throughput'),
                        ('streamml', 'latency'), ('echo', 'latency')}
    assert got['streamml', 'throughput']['n'] == 300 and got['naive', 'throughput']['n'] == 3
    assert got['streamml', 'latency']['failed'] == 0 and got['echo', 'latency']['failed'] == 0
