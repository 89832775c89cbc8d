#!/usr/bin/env bash
# Starts a real one-node Kubernetes on this machine, with nothing reaching beyond it:
# containerd (Debian's, a private instance), etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kube-proxy built by build.sh, then CoreDNS, metrics-server and
# the prometheus-operator CRDs. Images come from tarballs (images.sh), never from a registry.
#
# Safety: the node's address sits on a bridge with no ports (k8s0), pods have no default
# route and no upstream DNS, every forwarded packet other than pod to pod is dropped, no
# address of the cluster answers from outside, and the sysctls the kubelet changes are saved
# for down.sh to restore. Run down.sh to stop it (also after a failed start).
#
# Idempotent: what already runs is left running.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
HK=$(helm_kubectl_dir)
export PATH=$KUBE_BIN:$HK:$PATH KUBECONFIG=$KUBECONFIG_ADMIN
PKI=$STATE/pki LOGS=$STATE/log
mkdir -p "$STATE" "$LOGS" "$RUNDIR/containerd"

for b in "$KUBE_BIN/kube-apiserver" "$ADDON_BIN/coredns" "$HK/kubectl" /usr/bin/containerd /usr/bin/etcd /usr/lib/cni/bridge; do
  [[ -x $b ]] || { echo "missing $b: run packages.sh and build.sh first" >&2; exit 1; }
done
# Our fixed addresses must be ours: refuse to start beside another user of them.
if ip -4 addr show | grep -v ' k8s0$' | grep -q "inet $NODE_IP/"; then
  echo "$NODE_IP is already in use on this machine" >&2
  exit 1
fi
if ip route show "$CLUSTER_CIDR" | grep -qv cni0 || ip route show "$SVC_CIDR" | grep -qv k8s0; then
  echo "a route to $CLUSTER_CIDR or $SVC_CIDR already exists that is not ours" >&2
  exit 1
fi

# start NAME CMD...: runs CMD in the background, its pid in $STATE/NAME.pid; does nothing when
# that pid still runs.
start() {
  local name=$1
  shift
  if [[ -f $STATE/$name.pid ]] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then return 0; fi
  nohup "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}
# wait_for NAME SECONDS CMD...: until CMD succeeds, or fails the run with NAME's log.
wait_for() {
  local name=$1 limit=$2 t=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - t > limit)); then
      echo "$name: not ready after ${limit}s; last lines of its log:" >&2
      tail -20 "$LOGS/$name.log" >&2 || true
      exit 1
    fi
    sleep 1
  done
  say "$name ready"
}
# Writes stdin to FILE only when it differs: kube-proxy exits when its config file changes.
write_if_changed() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

# ---- sysctls: the kubelet sets kernel.panic, kernel.panic_on_oops, vm.overcommit_memory… ----
if [[ ! -f $STATE/sysctl.saved ]]; then
  modprobe br_netfilter 2>/dev/null || true
  for k in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory vm.panic_on_oom \
    kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
    if v=$(sysctl -n "$k" 2>/dev/null); then echo "$k=$v"; fi
  done >"$STATE/sysctl.saved"
fi

# ---- network ---------------------------------------------------------------------------------
# The node's address on a bridge without ports (this kernel has no dummy interface): the
# apiserver, the kubelet and NodePorts listen there, unreachable from any other machine.
if ! ip link show k8s0 >/dev/null 2>&1; then
  ip link add k8s0 type bridge
  ip addr add "$NODE_IP/32" dev k8s0
  ip link set k8s0 up
fi
# ClusterIPs are routed into k8s0, so a packet kube-proxy did not translate goes nowhere.
ip route show "$SVC_CIDR" | grep -q k8s0 || ip route add "$SVC_CIDR" dev k8s0 src "$NODE_IP"
# Guard 1: nothing is forwarded except between pods on cni0 (no pod reaches eth0, nothing
# from eth0 reaches a pod).
iptables -t mangle -N PAYGATE-K8S-FORWARD 2>/dev/null || true
iptables -t mangle -F PAYGATE-K8S-FORWARD
iptables -t mangle -A PAYGATE-K8S-FORWARD -i cni0 -o cni0 -j RETURN
iptables -t mangle -A PAYGATE-K8S-FORWARD -j DROP
iptables -t mangle -C FORWARD -j PAYGATE-K8S-FORWARD 2>/dev/null || iptables -t mangle -I FORWARD -j PAYGATE-K8S-FORWARD
# Guard 2: the cluster's addresses answer only on loopback and its own bridges.
iptables -t mangle -N PAYGATE-K8S-INPUT 2>/dev/null || true
iptables -t mangle -F PAYGATE-K8S-INPUT
for i in lo cni0 k8s0; do iptables -t mangle -A PAYGATE-K8S-INPUT -i "$i" -j RETURN; done
for d in "$NODE_IP/32" "$CLUSTER_CIDR" "$SVC_CIDR"; do iptables -t mangle -A PAYGATE-K8S-INPUT -d "$d" -j DROP; done
iptables -t mangle -C PREROUTING -j PAYGATE-K8S-INPUT 2>/dev/null || iptables -t mangle -I PREROUTING -j PAYGATE-K8S-INPUT
# Forwarding is needed for pod to ClusterIP to pod; bridge netfilter for kube-proxy's rules.
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1

# Pods: addresses from $POD_CIDR on cni0, routes to the cluster's ranges only (no default
# route), no masquerading.
mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam"
write_if_changed "$STATE/cni/net.d/10-paygate.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "paygate-k8s", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "10.244.0.1"}]],
            "routes": [{"dst": "$CLUSTER_CIDR"}, {"dst": "$SVC_CIDR"}, {"dst": "$NODE_IP/32"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
# No upstream resolvers: CoreDNS answers cluster.local only.
echo '# no upstream resolvers on the local cluster' >"$STATE/resolv.conf"

# ---- containerd --------------------------------------------------------------------------
# Every pull goes to a closed port on loopback: an image that was not imported fails at once.
mkdir -p "$STATE/containerd/certs.d/_default"
write_if_changed "$STATE/containerd/certs.d/_default/hosts.toml" <<'TOML'
server = "http://127.0.0.1:9"
[host."http://127.0.0.1:9"]
  capabilities = ["pull", "resolve"]
TOML
# restrict_oom_score_adj: without CAP_SYS_RESOURCE every sandbox fails to start otherwise.
write_if_changed "$STATE/containerd/config.toml" <<TOML
version = 2
root = "$STATE/containerd/root"
state = "$RUNDIR/containerd"
[grpc]
  address = "$CSOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  enable_unprivileged_ports = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$STATE/containerd/certs.d"
TOML
start containerd containerd --config "$STATE/containerd/config.toml"
wait_for containerd 60 ctr -a "$CSOCK" version
for t in "$IMAGES"/*.tar; do
  ctr -a "$CSOCK" -n k8s.io images import "$t" >/dev/null
done
say "images imported: $(ctr -a "$CSOCK" -n k8s.io images ls -q | grep -vc '^sha256:')"

# ---- certificates, etcd --------------------------------------------------------------------
"$LC_DIR/pki.sh" "$PKI" "$NODE_NAME" "$NODE_IP"
start etcd etcd --name "$NODE_NAME" --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync --quota-backend-bytes 2147483648
wait_for etcd 60 curl -sf http://127.0.0.1:2379/health

# ---- control plane -----------------------------------------------------------------------
# --kubelet-preferred-address-types=InternalIP: logs, exec and port-forward reach the kubelet
# at the node's address, not through a lookup of its name. The front-proxy settings serve
# metrics-server's API through the aggregation layer.
start kube-apiserver kube-apiserver --advertise-address="$NODE_IP" --bind-address="$NODE_IP" --secure-port=6443 \
  --etcd-servers=http://127.0.0.1:2379 --service-cluster-ip-range="$SVC_CIDR" --service-node-port-range=30000-32767 \
  --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction --allow-privileged=true --enable-aggregator-routing=true \
  --kubelet-preferred-address-types=InternalIP \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-extra-headers-prefix=X-Remote-Extra- --requestheader-group-headers=X-Remote-Group \
  --requestheader-username-headers=X-Remote-User --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" --profiling=false
wait_for kube-apiserver 180 kubectl get --raw /readyz
start kube-controller-manager kube-controller-manager --kubeconfig="$PKI/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" --use-service-account-credentials=true \
  --leader-elect=false --controllers='*,bootstrapsigner,tokencleaner' --cluster-cidr="$CLUSTER_CIDR" \
  --service-cluster-ip-range="$SVC_CIDR" --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --horizontal-pod-autoscaler-sync-period=10s --profiling=false
start kube-scheduler kube-scheduler --kubeconfig="$PKI/scheduler.kubeconfig" \
  --authentication-kubeconfig="$PKI/scheduler.kubeconfig" --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false

# ---- the node ----------------------------------------------------------------------------
# cgroupfs and cgroup v1 (this kernel's hierarchy), swap tolerated, no host resolvers, pod
# logs and volumes under $STATE.
mkdir -p "$STATE/kubelet" "$STATE/pod-logs"
write_if_changed "$STATE/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-server.crt
tlsPrivateKeyFile: $PKI/kubelet-server.key
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $STATE/resolv.conf
podLogsDir: $STATE/pod-logs
containerRuntimeEndpoint: unix://$CSOCK
imageServiceEndpoint: unix://$CSOCK
podCIDR: $POD_CIDR
maxPods: 60
serializeImagePulls: false
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%"}
imageGCHighThresholdPercent: 100
registerNode: true
YAML
start kubelet kubelet --config="$STATE/kubelet-config.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
  --root-dir="$STATE/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
write_if_changed "$STATE/kube-proxy-config.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
start kube-proxy kube-proxy --config="$STATE/kube-proxy-config.yaml"
node_ready() {
  [[ $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
wait_for kubelet 180 node_ready

# ---- add-ons -----------------------------------------------------------------------------
kubectl apply --server-side -f "$CRDS" >/dev/null
for f in coredns metrics-server; do
  sed -e "s/@COREDNS_VERSION@/$COREDNS_VERSION/" -e "s/@METRICS_SERVER_VERSION@/$METRICS_SERVER_VERSION/" \
    "$LC_DIR/$f.yaml" | kubectl apply -f - >/dev/null
done
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl -n kube-system rollout status deploy/coredns --timeout=180s >/dev/null
kubectl -n kube-system rollout status deploy/metrics-server --timeout=180s >/dev/null
kubectl wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=180s >/dev/null
say "cluster up: $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion}'), KUBECONFIG=$KUBECONFIG_ADMIN"
