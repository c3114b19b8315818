#!/usr/bin/env bash
# Every test: package in step with notebooks, notebooks clean, README fresh, notebook tests (all flags on), pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export STREAMML_TEST_ROOT="${STREAMML_TEST_ROOT:-$(mktemp -d /tmp/streamml-test.XXXXXX)}"
export STREAMML_HOME="$STREAMML_TEST_ROOT/home"   # tests never touch var/
export MPLBACKEND=Agg TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
t0=$SECONDS
export STREAMML_TEST_MYSQL="$(bash scripts/start-mariadb.sh | tail -n 1)"
echo "== MariaDB set up in $((SECONDS - t0)) s ($STREAMML_TEST_MYSQL)"
bash scripts/setup-kafka.sh   # Apache Kafka 4.4 jars from Maven Central, cached (tests/test_cluster.py, #| kafka cells)
echo "== notebooks, package and README in step"
python scripts/check_sync.py
echo "== notebook tests (nbdev-test --flags 'broker mariadb kafka')"
nbdev-test --flags "broker mariadb kafka" --do-print --timing
echo "== pytest tests/"
python -m pytest tests/ -q -p no:cacheprovider --durations=30
