#!/usr/bin/env bash
# Long soak tests (opt-in, not in CI): 1,000 publish/unpublish cycles with the node plugin's
# memory checked, against the test servers started here on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
state=$(mktemp -d /tmp/pail-soak.XXXXXX)
trap 'scripts/test-servers.sh stop "$state"; rm -rf "$state"' EXIT
eval "$(scripts/test-servers.sh start "$state")"
cargo nextest run --locked --run-ignored only "$@"
