#!/usr/bin/env bash
# End-to-end test on a real two-node Kubernetes (v1.20.2 kubelets + containerd), offline:
# builds what it needs (Kubernetes once, cached in ~/.cache/pail-k8s), installs pail with
# helm, and drives the scenarios of tests/e2e/scenarios.sh with kubectl, as a user would.
# Every process runs in the lab's network namespaces (loopback and a bridge of their own, no
# route out; node B also in a mount namespace of its own). The teardown (also on
# failure) leaves no process, mount, namespace or cgroup and restores the kernel settings the
# kubelet changes. Needs root. Usage: tests/e2e/run.sh
set -Eeuo pipefail
trap 'log "failed: line $LINENO of ${BASH_SOURCE[0]##*/}: $BASH_COMMAND"' ERR
REPO=$(cd "$(dirname "$0")/../.." && pwd)
LAB=${PAIL_E2E_DIR:-/tmp/pail-e2e}
NETNS=${PAIL_E2E_NETNS:-pail-e2e}
K8S_CACHE=${PAIL_K8S_CACHE:-$HOME/.cache/pail-k8s}
export AWS_EC2_METADATA_DISABLED=true
# shellcheck source=tests/e2e/cluster.sh
. "$REPO/tests/e2e/cluster.sh"
# shellcheck source=tests/e2e/scenarios.sh
. "$REPO/tests/e2e/scenarios.sh"
# shellcheck source=tests/e2e/twonode.sh
. "$REPO/tests/e2e/twonode.sh"

[ "$(id -u)" = 0 ] || die "needs root (mounts, cgroups, network namespaces)"
[ -e /dev/fuse ] || die "needs /dev/fuse"
if ip netns list 2>/dev/null | grep -qw "$NETNS" || [ -d "$LAB" ]; then
  log "cleaning up a previous run"
  teardown || die "could not clean up the previous run"
fi
rm -rf "$LAB"
mkdir -p "$LAB"
started=$SECONDS

install_prerequisites
build_kubernetes
(cd "$REPO" && cargo build --locked --bin pail -q)
PAIL_BIN=${PAIL_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/pail}
build_images

note_host_state
on_exit() {
  local rc=$?
  if ((rc != 0)) && [ -n "${PAIL_E2E_PAUSE_ON_FAILURE:-}" ]; then
    log "paused for inspection; touch $LAB/continue to tear down (kubectl: $KUBECTL --kubeconfig $LAB/kubeconfig in the namespace $NETNS)"
    until [ -e "$LAB/continue" ]; do sleep 1; done
  fi
  if ((rc != 0)); then
    cp -r /var/log/pods "$LAB/logs/pods" 2>/dev/null || true
    cp -r "$LAB/state" "$LAB/logs/pail-state" 2>/dev/null || true
    cp -r "$LAB/$NODE_B/log-pods" "$LAB/logs/node-b-pods" 2>/dev/null || true
    cp -r "$LAB/$NODE_B/state" "$LAB/logs/node-b-pail-state" 2>/dev/null || true
    cp "$LAB"/s3/*.log "$LAB/logs/" 2>/dev/null || true
    cp -r "$LAB/logs" "${LAB}-logs" 2>/dev/null || true
  fi
  teardown || rc=1
  rm -rf "$LAB"
  if ((rc == 0)); then log "PASSED in $((SECONDS - started)) s"; else log "FAILED (exit $rc); logs in ${LAB}-logs"; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM
rm -rf "${LAB}-logs"

start_cluster
log "cluster up: node 127.0.0.1 Ready ($((SECONDS - started)) s)"
start_s3
run_scenarios
