#!/usr/bin/env bash
# The Helm chart (deploy/helm/herald) checked by the real tools:
#   - helm lint --strict, with the least values an install needs and with everything enabled;
#   - helm template with the default values must fail on the required settings (and on the
#     local stack's well-known key), and render with the CI values, with everything enabled
#     (KEDA, ServiceMonitor) and with an existing Secret;
#   - each render validated offline against the Kubernetes JSON schemas of the PyPI package
#     kubernetes-validate (strict: unknown fields fail; CRDs skipped with a note) and for how
#     its objects refer to each other (deploy/helm/check_rendered.py).
# Tools go to .local/tools the first time (Helm built with `go install`: minutes; then cached).
set -euo pipefail
cd "$(dirname "$0")/../.."

HELM_VERSION=v3.22.0
KUBERNETES_VALIDATE_VERSION=1.37.0
TOOLS=$PWD/.local/tools
# HERALD_HELM_CHART: check another copy of the chart (e.g. a broken one, to see this fail).
CHART=${HERALD_HELM_CHART:-deploy/helm/herald}
HELM=$TOOLS/bin/helm
VENV=$TOOLS/k8s-venv
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

install_helm() {
  # Everything Go writes stays under .local/tools; the caches go once the binary is built.
  local gopath=$TOOLS/go/helm-build
  local goenv=(env GOBIN="$TOOLS/bin" GOPATH="$gopath" GOMODCACHE="$gopath/mod"
    GOCACHE="$gopath/cache" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false)
  echo "installing helm $HELM_VERSION with go install (takes minutes the first time)"
  mkdir -p "$TOOLS/bin"
  # The version flags of Helm's own Makefile: without them `helm version` says v3.22 and
  # helm's default Kubernetes version (lint's deprecation checks) falls back to 1.20.
  local gomod client_go
  gomod=$("${goenv[@]}" "$GO" mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  client_go=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod")
  local x=helm.sh/helm/v3
  "${goenv[@]}" "$GO" install -trimpath -ldflags "-s -w \
    -X $x/internal/version.version=$HELM_VERSION -X $x/internal/version.metadata= \
    -X $x/pkg/chartutil.k8sVersionMajor=1 -X $x/pkg/chartutil.k8sVersionMinor=$client_go \
    -X $x/pkg/lint/rules.k8sVersionMajor=1 -X $x/pkg/lint/rules.k8sVersionMinor=$client_go" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  "${goenv[@]}" "$GO" clean -cache -modcache
  rm -rf "$gopath"
}

if ! { [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' | grep -qx "$HELM_VERSION"; }; then
  install_helm
fi
if ! "$VENV/bin/python" -c "import kubernetes_validate.version as v, sys
sys.exit(v.__version__ != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
# The newest Kubernetes whose schemas the package ships.
KUBE=$("$VENV/bin/python" -c 'from kubernetes_validate.utils import latest_version as v; print(v())')
echo "helm $("$HELM" version --template '{{.Version}}'), kubernetes-validate" \
  "$KUBERNETES_VALIDATE_VERSION, Kubernetes $KUBE"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
minimal=(-f "$CHART/ci/minimal-values.yaml")
full=(-f "$CHART/ci/minimal-values.yaml" -f "$CHART/ci/full-values.yaml")

echo "--- helm lint --strict"
"$HELM" lint --strict --kube-version "$KUBE" "$CHART" "${minimal[@]}"
"$HELM" lint --strict --kube-version "$KUBE" "$CHART" "${full[@]}"

# helm template must refuse: $1 what, $2 text the error must contain, then helm's arguments.
must_refuse() {
  local what=$1 expected=$2
  shift 2
  if "$HELM" template herald "$CHART" --kube-version "$KUBE" "$@" >"$out/refused.yaml" 2>"$out/err"; then
    echo "FAILED: helm template rendered $what; it must refuse" >&2
    exit 1
  fi
  if ! grep -qF -- "$expected" "$out/err"; then
    echo "FAILED: helm template refused $what, but without '$expected':" >&2
    cat "$out/err" >&2
    exit 1
  fi
  echo "refused as it must: $what ($(grep -oF -- "$expected" "$out/err" | head -1))"
}

echo "--- helm template"
must_refuse "the default values" "is required: "
must_refuse "no Kafka" "kafka.bootstrapServers is required" \
  "${minimal[@]}" --set kafka.bootstrapServers=
must_refuse "no credentials" "secrets.adminApiKeys is required" \
  --set kafka.bootstrapServers=kafka:9092
must_refuse "the local stack's admin key" "herald-local-admin-key" \
  "${minimal[@]}" --set secrets.adminApiKeys=herald-local-admin-key
must_refuse "HERALD_ENDPOINTS_ALLOW_PRIVATE in config" "never set it in a deployment" \
  "${minimal[@]}" --set config.HERALD_ENDPOINTS_ALLOW_PRIVATE=1
must_refuse "HERALD_ENDPOINTS_ALLOW_PRIVATE in a component's env" "never set it in a deployment" \
  "${minimal[@]}" --set webhookSender.env.HERALD_ENDPOINTS_ALLOW_PRIVATE=1
must_refuse "more router replicas than partitions" "router.replicaCount (7) is above 6" \
  "${minimal[@]}" --set router.replicaCount=7
"$HELM" template herald "$CHART" --kube-version "$KUBE" "${minimal[@]}" >"$out/minimal.yaml"
"$HELM" template herald "$CHART" --kube-version "$KUBE" "${full[@]}" >"$out/full.yaml"
"$HELM" template herald "$CHART" --kube-version "$KUBE" \
  --set kafka.bootstrapServers=kafka:9092 --set secrets.existingSecret=herald-credentials \
  >"$out/existing-secret.yaml"
# Today's monitoring: the APIs scraped, the workers' metrics on loopback (metrics.exposed false).
"$HELM" template herald "$CHART" --kube-version "$KUBE" "${minimal[@]}" \
  --set metrics.serviceMonitor.enabled=true >"$out/apis-monitored.yaml"

echo "--- kubernetes-validate (strict, Kubernetes $KUBE) and references"
"$VENV/bin/python" deploy/helm/check_rendered.py "$CHART" "$KUBE" \
  "$out/minimal.yaml" "$out/full.yaml" "$out/existing-secret.yaml" "$out/apis-monitored.yaml"
echo "helm chart: ok"
