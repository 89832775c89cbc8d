#!/usr/bin/env bash
# The images of the local cluster, as `docker save` tarballs in $IMAGES (up.sh imports every
# one into containerd's k8s.io namespace; when the cluster already runs, this script imports
# them at once). No registry is reachable, so nothing is pulled:
#   - pause (the pod sandbox), compiled from the Kubernetes source build.sh downloaded;
#   - a toolbox (Debian's static busybox and grpcurl), the in-cluster client of e2e.sh;
#   - CoreDNS and metrics-server, from the binaries build.sh made;
#   - paygate:<appVersion>: Paygate's own image, built with podman from the repository's
#     Dockerfile, unchanged;
#   - STAND-INS, for this local cluster only (see standin/*/Dockerfile): the Dockerfile's base
#     node:20.19.5-bookworm-slim is made from Debian (debootstrap) plus this machine's
#     Node.js, and PostgreSQL 15 from Debian's packages stands in for the chart's postgres:17.6.
# Every image but Paygate's is cached by version; Paygate's is built each run (podman's layer
# cache and npm cache make an unchanged rebuild quick). SKIP_PAYGATE=1 skips it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
go_env
mkdir -p "$IMAGES"
MK=$LC_DIR/mkimage.sh
# podman: runc (crun refuses this kernel's hybrid cgroups), the host's network for RUN steps
# (npm and apt reach their registries directly; no bridge, no NAT), rlimits it may set
# without CAP_SYS_RESOURCE, never a pull.
PODMAN=(podman --runtime runc)
PODMAN_BUILD=(nice -n 19 "${PODMAN[@]}" build --pull=never --network host
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --layers)
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO_ROOT/charts/paygate/Chart.yaml")
NODE_BASE=$(sed -n 's/^ARG NODE_IMAGE=//p' "$REPO_ROOT/Dockerfile")
DEBIAN_BASE=localhost/paygate-local/debian:$DEBIAN_SUITE-minbase
POSTGRES_STANDIN=local/postgres-standin:15-$DEBIAN_SUITE
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- from binaries ---------------------------------------------------------------------------
pause_image() {
  local src=$GOMODCACHE/k8s.io/kubernetes@v$KUBE_VERSION/build/pause/linux/pause.c
  mkdir -p "$work/pause"
  gcc -Os -static -o "$work/pause/pause" "$src"
  "$MK" "$work/pause" registry.k8s.io/pause:3.10 "$IMAGES/pause-3.10.tar" null '["/pause"]'
}
busybox_rootfs() { # busybox_rootfs DIR
  mkdir -p "$1/bin" "$1/tmp" "$1/etc"
  cp /bin/busybox "$1/bin/"
  for a in $("$1/bin/busybox" --list); do [[ $a == busybox ]] || ln -sf busybox "$1/bin/$a"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$1/etc/passwd"
  echo 'nobody:x:65534:65534::/:/bin/false' >>"$1/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$1/etc/group"
  chmod 1777 "$1/tmp"
}
# busybox and grpcurl: the in-cluster client and scraper of e2e.sh.
toolbox_image() {
  busybox_rootfs "$work/toolbox"
  cp "$TOOLS_BIN/grpcurl-v$GRPCURL_VERSION" "$work/toolbox/bin/grpcurl"
  "$MK" "$work/toolbox" "local/toolbox:grpcurl-v$GRPCURL_VERSION" "$IMAGES/toolbox-grpcurl-v$GRPCURL_VERSION.tar" '["/bin/sh"]'
}
addon_image() { # addon_image NAME VERSION
  local r=$work/$1
  mkdir -p "$r/etc" "$r/tmp"
  chmod 1777 "$r/tmp"
  cp "$ADDON_BIN/$1" "$r/"
  echo 'nobody:x:65534:65534::/:/sbin/nologin' >"$r/etc/passwd"
  "$MK" "$r" "local/$1:v$2" "$IMAGES/$1-v$2.tar" null "[\"/$1\"]"
}

# ---- stand-in bases --------------------------------------------------------------------------
debian_base() {
  local tar=$CACHE/rootfs/debian-$DEBIAN_SUITE-minbase.tar
  if [[ ! -f $tar ]]; then
    mkdir -p "$CACHE/rootfs"
    nice -n 19 debootstrap --variant=minbase "$DEBIAN_SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
      { tail -20 "$work/debootstrap.log" >&2; return 1; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar --numeric-owner -C "$work/rootfs" -cf "$tar.partial" .
    mv "$tar.partial" "$tar"
    rm -rf "$work/rootfs"
  fi
  "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' "$tar" "$DEBIAN_BASE" >/dev/null
}
# The Dockerfile's base: the real image when this machine has it, else the stand-in (made
# again when its recipe changed: the recipe's hash is a label of the image).
NODE_RECIPE=$(cat "$LC_DIR/standin/node/Dockerfile" /usr/bin/node | sha256sum | cut -c1-16)
label() { "${PODMAN[@]}" image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true; }
node_base_current() {
  "${PODMAN[@]}" image exists "$NODE_BASE" &&
    { [[ -z $(label "$NODE_BASE" org.paygate.local-cluster.stand-in) ]] ||
      [[ $(label "$NODE_BASE" org.paygate.local-cluster.recipe) == "$NODE_RECIPE" ]]; }
}
node_base() {
  mkdir -p "$work/node"
  cp /usr/bin/node "$work/node/node"
  cp -a /usr/lib/node_modules/npm "$work/node/npm"
  cp -L "${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}" "$work/node/ca-certificates.crt"
  cp "$LC_DIR/standin/node/Dockerfile" "$work/node/"
  "${PODMAN_BUILD[@]}" --label "org.paygate.local-cluster.recipe=$NODE_RECIPE" -t "$NODE_BASE" "$work/node" \
    >"$work/node-build.log" 2>&1 || { tail -30 "$work/node-build.log" >&2; return 1; }
}
postgres_image() {
  "${PODMAN_BUILD[@]}" -t "docker.io/$POSTGRES_STANDIN" "$LC_DIR/standin/postgres" >"$work/pg-build.log" 2>&1 ||
    { tail -30 "$work/pg-build.log" >&2; return 1; }
  "${PODMAN[@]}" save --format docker-archive -o "$IMAGES/postgres-standin.tar.partial" "docker.io/$POSTGRES_STANDIN"
  mv "$IMAGES/postgres-standin.tar.partial" "$IMAGES/postgres-standin.tar"
}

# ---- Paygate ---------------------------------------------------------------------------------
# Tagged as the chart's default image (repository paygate, tag appVersion), which containerd
# stores as docker.io/library/paygate:<tag>.
# Built from the committed tree (HEAD), so the image is exactly the commit under test;
# FROM_WORKTREE=1 builds the work tree as it is, uncommitted changes included.
paygate_image() {
  local ref=docker.io/library/paygate:$APP_VERSION context=$REPO_ROOT
  if [[ ${FROM_WORKTREE:-0} != 1 ]]; then
    context=$work/paygate
    mkdir -p "$context"
    git -C "$REPO_ROOT" archive HEAD | tar -x -C "$context"
    # One fixed mtime: podman's layer cache keys COPY on file metadata too, and an unchanged
    # package-lock.json must keep its npm ci layer from one commit to the next.
    find "$context" -exec touch -h -d @0 {} +
    say "paygate image from commit $(git -C "$REPO_ROOT" rev-parse --short HEAD)"
  fi
  "${PODMAN_BUILD[@]}" -t "$ref" -f "$context/Dockerfile" "$context" >"$STATE_LOG/paygate-build.log" 2>&1 ||
    { tail -40 "$STATE_LOG/paygate-build.log" >&2; return 1; }
  "${PODMAN[@]}" save --format docker-archive -o "$IMAGES/paygate.tar.partial" "$ref"
  mv "$IMAGES/paygate.tar.partial" "$IMAGES/paygate.tar"
  say "paygate image: $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$ref" | numfmt --to=iec) ($ref)"
}
STATE_LOG=${PAYGATE_K8S_LOGS:-$CACHE/logs}
mkdir -p "$STATE_LOG"

"${PODMAN[@]}" image exists "$DEBIAN_BASE" || timed "stand-in debian base" debian_base
node_base_current || timed "stand-in node base" node_base
[[ -f $IMAGES/postgres-standin.tar ]] || timed "stand-in postgres image" postgres_image
[[ ${SKIP_PAYGATE:-0} == 1 ]] || timed "image paygate" paygate_image
if [[ ${SKIP_ADDONS:-0} != 1 ]]; then
  [[ -f $IMAGES/pause-3.10.tar ]] || timed "image pause" pause_image
  [[ -f $IMAGES/toolbox-grpcurl-v$GRPCURL_VERSION.tar ]] || timed "image toolbox" toolbox_image
  [[ -f $IMAGES/coredns-v$COREDNS_VERSION.tar ]] || timed "image coredns" addon_image coredns "$COREDNS_VERSION"
  [[ -f $IMAGES/metrics-server-v$METRICS_SERVER_VERSION.tar ]] ||
    timed "image metrics-server" addon_image metrics-server "$METRICS_SERVER_VERSION"
fi

# Into the running cluster's containerd at once (a stopped cluster imports them in up.sh).
if [[ -S $CSOCK ]]; then
  for t in "$IMAGES"/*.tar; do ctr -a "$CSOCK" -n k8s.io images import "$t" >/dev/null; done
  say "images imported into the running cluster"
fi
