#!/usr/bin/env bash
# Create the six streamml topics on the configured cluster, idempotently (see scripts/env.sh).
# Usage: scripts/create-topics.sh [--partitions N]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/streamml topics "$@"
