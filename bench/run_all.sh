#!/usr/bin/env bash
# Run every benchmark in sequence. Uses $PYTHON, else the project's .venv, else python3.
# PostgreSQL: HYBRIDSTORE_BENCH_DSN (default postgresql://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

status=0
for script in bench/bench_local.py bench/bench_primary.py bench/bench_sync.py bench/bench_visibility.py bench/bench_backup.py bench/bench_recovery.py bench/bench_web.py; do
    echo "=== $script"
    "$PYTHON" "$script" || { status=$?; echo "!!! $script failed (exit $status)" >&2; }
    echo
done
exit "$status"
