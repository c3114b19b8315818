#!/usr/bin/env bash
# Fetch Apache Kafka 4.4 (broker) and Kafka Connect jars from Maven Central into the cache, once:
# ${STREAMML_KAFKA_CACHE:-${XDG_CACHE_HOME:-~/.cache}/streamml/kafka-4.4.0}. A stamp file makes a second run cost
# milliseconds. Needs Java 17+ and Maven (`make system-deps` installs both). Prints the time taken.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "setup-kafka: $tool is missing (make system-deps installs it)" >&2; exit 1; }
done
t0=$(date +%s.%N)
"$PY" -m streamml.cli broker --engine kafka --fetch-only
awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN { printf "== Apache Kafka jars ready in %.1f s\n", t1 - t0 }'
