# shellcheck shell=bash
# The end-to-end scenarios, driven with kubectl and helm only, as a user would. Sourced by
# tests/e2e/run.sh after the cluster and the S3 server are up.

DRIVER=s3.csi.pail.dev
S3_ENDPOINT=http://127.0.0.1:18333
FILER=http://127.0.0.1:21333 # SeaweedFS's filer: reads the bucket without pail

# The object KEY of the test bucket, read straight from the S3 server's filer.
bucket_object() { in_ns curl -sf "$FILER/buckets/pail-test/$1"; }
bucket_has() { bucket_object "$1" >/dev/null; }

# Pail FUSE mounts under the kubelet's root dir, one per line.
pail_mounts() { awk -v root="$LAB/kubelet/" '$3 == "fuse.pail" && index($2, root) == 1 {print $2}' /proc/mounts; }
no_pail_mounts() { [ -z "$(pail_mounts)" ]; }
# Live `pail mount` processes (any container, any cgroup).
mount_processes() { pgrep -f "^/usr/bin/pail mount " || true; }
no_mount_processes() { [ -z "$(mount_processes)" ]; }

apply() { # manifest file under tests/e2e/manifests, placeholders filled
  sed -e "s#@S3_ENDPOINT@#$S3_ENDPOINT#g" -e "s#@DRIVER@#$DRIVER#g" \
    "$REPO/tests/e2e/manifests/$1" | kc apply -f - >/dev/null
}

pod_phase() { kc get pod "$1" -o 'jsonpath={.status.phase}'; }
pvc_bound() { [ "$(kc get pvc "$1" -o 'jsonpath={.status.phase}')" = Bound ]; }
# Wait for a pod to succeed; on failure show its log and events.
wait_succeeded() { # pod seconds
  local deadline=$((SECONDS + $2)) phase
  while :; do
    phase=$(pod_phase "$1" 2>/dev/null || true)
    [ "$phase" = Succeeded ] && return 0
    if [ "$phase" = Failed ] || ((SECONDS > deadline)); then
      kc logs "$1" >&2 || true
      kc describe pod "$1" | tail -20 >&2 || true
      die "pod $1 did not succeed (phase ${phase:-none})"
    fi
    sleep 0.5
  done
}
wait_running() { kc wait --for=condition=Ready "pod/$1" --timeout="${2}s" >/dev/null || { kc describe pod "$1" | tail -20 >&2; die "pod $1 not ready"; }; }

node_plugin_pod() { kc get pods -n kube-system -l app.kubernetes.io/component=node -o 'jsonpath={.items[0].metadata.name}'; }
driver_registered() { kc get csinode 127.0.0.1 -o 'jsonpath={.spec.drivers[*].name}' | grep -qw "$DRIVER"; }

helm_install() {
  log "helm install (node plugin registers itself with the kubelet; images local)"
  hm install pail "$REPO/charts/pail" --namespace kube-system --wait --timeout 120s \
    --set image.repository=localhost/pail --set image.tag=e2e --set image.pullPolicy=Never \
    --set kubeletDir="$LAB/kubelet" --set node.registration=self --set node.stateDir="$LAB/state" \
    --set controller.enabled=false >/dev/null
  wait_until "CSINode 127.0.0.1 to list $DRIVER" 60 driver_registered
}

scenario_static_pv() {
  log "scenario: Secret + static PV + PVC, one pod writes, another reads"
  apply secret.yaml
  apply static.yaml
  wait_until "PVC e2e-static to bind" 60 pvc_bound e2e-static
  apply writer.yaml
  wait_succeeded writer 120
  apply reader.yaml
  wait_succeeded reader 120
  [ "$(kc logs reader)" = "hello from the writer pod" ] || die "reader read: $(kc logs reader)"
  [ "$(bucket_object static/hello.txt)" = "hello from the writer pod" ] || die "static/hello.txt is not in the bucket"
}

run_scenarios() {
  helm_install
  scenario_static_pv
}
