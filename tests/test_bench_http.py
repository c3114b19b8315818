"""`streamml bench http` runs end to end with tiny sizes (figures are not asserted, only that they are produced):
wrk against `streamml serve` and the constant baseline, single-process and with two workers each."""
from streamml.bench_http import bench_http


def test_bench_http_smoke(settings):
    lines = bench_http(settings, ['--seconds', '1', '--rounds', '1', '--workers', '2'])
    assert [(l['system'], l['workers']) for l in lines] == [('streamml', 1), ('constant', 1), ('streamml', 2), ('constant', 2)]
    assert all(l['bench'] == 'http' and l['throughput'] > 0 and l['failed'] == 0 and l['p99_ms'] for l in lines), lines
    assert all({'ratio', 'p99_ratio', 'cpu_ratio'} <= set(l) for l in lines if l['system'] == 'constant')
