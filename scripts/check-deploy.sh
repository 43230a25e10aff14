#!/usr/bin/env bash
# Checks of what ships to clusters, with the real tools: helm lint and template with default
# and non-default values, the values schema refusing bad values, kubernetes-validate
# (strict, Kubernetes 1.30) on every render, deploy/ and the examples, hadolint on the
# Dockerfile, and deploy/ in sync with the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
helm=$(scripts/tools.sh helm)
kv=$(scripts/tools.sh kubernetes-validate)
hadolint=$(scripts/tools.sh hadolint)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
K8S=1.30.0

"$helm" lint --strict charts/pail
"$helm" lint --strict charts/pail -f charts/pail/ci/nondefault-values.yaml
"$helm" template pail charts/pail --namespace kube-system >"$work/default.yaml"
"$helm" template pail charts/pail --namespace storage -f charts/pail/ci/nondefault-values.yaml >"$work/nondefault.yaml"
"$helm" template pail charts/pail --set controller.enabled=false --set storageClass.create=true >"$work/node-only.yaml"
# The ServiceMonitor (its CRD is not in kubernetes-validate's schemas: checked by kind).
"$helm" template pail charts/pail --set node.serviceMonitor.enabled=true >"$work/monitor.yaml"
grep -q '^kind: ServiceMonitor' "$work/monitor.yaml" || { echo "node.serviceMonitor.enabled renders no ServiceMonitor" >&2; exit 1; }
# The default install's sidecars against what their documentation asks (flags, sockets,
# RBAC), for the versions the chart pins.
python3 scripts/check-sidecars.py "$work/default.yaml"

# The schema refuses typos and bad values, naming them.
expect_refusal() { # what, helm args...
  local what=$1; shift
  if "$helm" template pail charts/pail "$@" >"$work/bad.out" 2>&1; then
    echo "helm accepted $* (expected a schema error about $what)" >&2; exit 1
  fi
  grep -q "$what" "$work/bad.out" || { echo "the error for $* does not name $what:" >&2; cat "$work/bad.out" >&2; exit 1; }
}
expect_refusal logFormat --set logFormat=xml
expect_refusal nodee --set nodee.resources.x=1
expect_refusal registration --set node.registration=maybe
expect_refusal driverName --set driverName=-bad-
expect_refusal colour --set storageClass.parameters.colour=blue
expect_refusal mountUids --set node.mountUids=0-100
expect_refusal maxMemoryLimit --set node.maxMemoryLimit=lots

for f in "$work"/default.yaml "$work"/nondefault.yaml "$work"/node-only.yaml deploy/kubernetes/pail.yaml deploy/examples/*.yaml; do
  "$kv" --quiet --strict -k "$K8S" "$f"
done
"$hadolint" Dockerfile
scripts/render-deploy.sh --check
echo "check-deploy: chart, manifests, examples and Dockerfile OK"
