#!/usr/bin/env bash
# The Debian packages the local cluster needs (Debian 12): containerd and runc, the CNI
# plugins, etcd, iptables and conntrack for kube-proxy, podman and debootstrap for the images,
# a static busybox and gcc (the pause binary, the toolbox), and what the scripts call.
# Quiet unless it fails; a no-op when everything is installed.
set -euo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
{
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    containerd runc containernetworking-plugins etcd-server iptables conntrack kmod \
    podman uidmap debootstrap busybox-static gcc libc6-dev curl unzip openssl iproute2 procps
} >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
