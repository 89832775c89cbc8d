#!/usr/bin/env bash
# Stops the local cluster and undoes everything up.sh did: the processes it started (by their
# pid files only), the pods' containers, network namespaces and interfaces, kube-proxy's and
# the guards' iptables chains, mounts and cgroups, and the sysctls the kubelet changed. Then
# removes the cluster's state ($STATE), unless KEEP_STATE=1. The caches ($CACHE) stay.
# Safe to run at any time, also after a failed or partial start.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

stop() { # stop NAME: the process of $STATE/NAME.pid, politely then firmly.
  local f=$STATE/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    say "stopped $1"
  fi
  rm -f "$f"
}

stop kube-proxy
stop kubelet
stop podman-service
# The pods' containers, through our containerd (this also tears down their networks).
if [[ -S $CSOCK ]]; then
  ctr_() { ctr -a "$CSOCK" -n k8s.io "$@"; }
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$c" >/dev/null 2>&1; done
  sleep 2
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1; done
  for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1; done
fi
stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd
stop containerd
# Shims our containerd started (their command line names our socket, and nothing else's).
for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $CSOCK"); do kill "$p" 2>/dev/null; done

# Network: the pods' namespaces, the bridges, the guards and kube-proxy's chains.
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$ns"; done
ip link del cni0 2>/dev/null
ip link del k8s0 2>/dev/null
for guard in FORWARD:PAYGATE-K8S-FORWARD PREROUTING:PAYGATE-K8S-INPUT; do
  iptables -t mangle -D "${guard%%:*}" -j "${guard#*:}" 2>/dev/null
  iptables -t mangle -F "${guard#*:}" 2>/dev/null
  iptables -t mangle -X "${guard#*:}" 2>/dev/null
done
for cmd in iptables ip6tables; do
  for t in filter nat mangle; do
    # Rules of the built-in chains that jump to KUBE-/CNI- chains, then those chains.
    $cmd-save -t $t 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE|CNI)-' | sed 's/^-A/-D/' |
      while read -r rule; do eval "$cmd -t $t $rule" 2>/dev/null; done
    chains=$($cmd-save -t $t 2>/dev/null | grep -oE '^:(KUBE|CNI)-[^ ]+' | tr -d :)
    for ch in $chains; do $cmd -t $t -F "$ch" 2>/dev/null; done
    for ch in $chains; do $cmd -t $t -X "$ch" 2>/dev/null; done
  done
done

# Mounts under our directories (volumes, overlays, shm), deepest first.
grep -E " ($STATE|$RUNDIR)[/ ]" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
for m in $(grep -o "/run/netns/cni-[^ ]*" /proc/mounts); do umount "$m" 2>/dev/null; rm -f "$m"; done
# The kubelet's cgroups (cgroup v1 hierarchies), leaves first.
for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
  [[ -d $c ]] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
done
# CNI's result cache and the runtime folders containerd's shims make outside its state dir.
rm -f /var/lib/cni/results/paygate-k8s-* /var/lib/cni/results/cni-loopback-*
find /var/lib/cni /run/containerd /run/netns -depth -type d -empty -delete 2>/dev/null

if [[ -f $STATE/sysctl.saved ]]; then
  while IFS== read -r k v; do sysctl -qw "$k=$v"; done <"$STATE/sysctl.saved"
  rm -f "$STATE/sysctl.saved"
  say "sysctls restored"
fi
if [[ ${KEEP_STATE:-0} != 1 ]]; then
  rm -rf "$STATE" "$RUNDIR"
fi
# Anything left is reported, not hidden.
left=$(pgrep -af "$STATE|$CSOCK" | grep -v pgrep || true)
if [[ -n $left ]]; then echo "still running:" >&2; echo "$left" >&2; exit 1; fi
say "cluster down"
