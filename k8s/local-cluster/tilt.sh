#!/usr/bin/env bash
# `tilt ci` with the repository's Tiltfile, unchanged, on the running local cluster (up.sh):
# the Tiltfile's docker_build, helm template of the chart with k8s/paygate-dev-values.yaml, the
# add-ons of k8s/, and every resource Ready. kube-prometheus-stack is left out
# (`-- --no-monitoring`): its chart is fetched from the internet.
#
# What stands in for a laptop's Docker and kind, on this machine only:
#   - Tilt v$TILT_VERSION built from source (headless: the module has no web assets, so a stub
#     page is embedded and Tilt runs with --web-mode prod);
#   - the Docker API: podman's API service (runc, the host's network for RUN steps);
#   - kind: the kube context and cluster are named kind-paygate, as kind-config.yaml's would be, and
#     a `kind` on PATH whose `load docker-image` copies the image from podman into containerd;
#   - registry.k8s.io/metrics-server/metrics-server:v0.8.0 (k8s/metrics-server.yaml) is the
#     metrics-server build.sh made from the same version;
#   - postgres:17.6-bookworm is the STAND-IN of standin/postgres (Debian's PostgreSQL 15), and
#     its claim gets a volume made here (no storage provisioner).
# The Tiltfile runs in a copy of the repository's files (its proto resource regenerates
# services/gen), which is removed afterwards, as is everything Tilt deployed (tilt down).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
go_env
HK=$(helm_kubectl_dir)
TILT_DIR=$CACHE/bin/tilt-v$TILT_VERSION-$GO_VERSION
W=$STATE/tilt
PODMAN_SOCK=$RUNDIR/podman.sock
mkdir -p "$W/bin"

# ---- Tilt from source ------------------------------------------------------------------------
# Needs cgo (tree-sitter); its module's replace directives are copied into a wrapper module;
# the checksum database does not serve tilt-dev modules through the proxy.
build_tilt() {
  local mod=$CACHE/src/tilt-v$TILT_VERSION dir
  export CGO_ENABLED=1 GONOSUMDB=github.com/tilt-dev
  mkdir -p "$mod"
  dir=$("$GO" mod download -json github.com/tilt-dev/tilt@v"$TILT_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  rm -rf "$mod/tilt" && cp -r "$dir" "$mod/tilt" && chmod -R u+w "$mod/tilt"
  echo '<!doctype html><title>Tilt (headless build)</title>' >"$mod/tilt/pkg/assets/build/index.html"
  cat >"$mod/go.mod" <<MOD
module paygate.local/tilt

go 1.23.0

require github.com/tilt-dev/tilt v$TILT_VERSION

replace (
	github.com/tilt-dev/tilt => ./tilt
	github.com/emicklei/go-restful/v3 => github.com/emicklei/go-restful/v3 v3.9.0
	github.com/pkg/browser => github.com/tilt-dev/browser v0.0.1
	k8s.io/apimachinery => github.com/tilt-dev/apimachinery v0.32.0-tilt-20250103
)
MOD
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/tilt-dev/tilt/cmd/tilt"\n' >"$mod/tools.go"
  (cd "$mod" && "$GO" mod tidy && rm -rf "$TILT_DIR.partial" && mkdir -p "$TILT_DIR.partial" &&
    nice -n 19 "$GO" build -p 2 -trimpath -ldflags "-s -w" -o "$TILT_DIR.partial/tilt" github.com/tilt-dev/tilt/cmd/tilt)
  mv "$TILT_DIR.partial" "$TILT_DIR"
}
[[ -x $TILT_DIR/tilt ]] || timed "build tilt" build_tilt
[[ ${BUILD_ONLY:-0} == 1 ]] && exit 0

[[ -S $CSOCK ]] || { echo "the local cluster is not running (up.sh)" >&2; exit 1; }

# ---- the Docker API: podman's service --------------------------------------------------------
cat >"$W/containers.conf" <<CONF
[containers]
netns = "host"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$W/containers.conf
if ! [[ -f $STATE/podman-service.pid ]] || ! kill -0 "$(cat "$STATE/podman-service.pid")" 2>/dev/null; then
  nohup podman --runtime runc system service --time=0 "unix://$PODMAN_SOCK" >"$STATE/log/podman-service.log" 2>&1 &
  echo $! >"$STATE/podman-service.pid"
fi
for _ in $(seq 30); do [[ -S $PODMAN_SOCK ]] && break; sleep 1; done
stop_podman() {
  local pid
  pid=$(cat "$STATE/podman-service.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
  rm -f "$STATE/podman-service.pid"
}

# ---- kind: the context's name, and `kind load docker-image` --------------------------------
# Tilt knows kind by the name of the context's cluster (kind-<name>).
sed 's/paygate-local/kind-paygate/g' "$KUBECONFIG_ADMIN" >"$W/kubeconfig"
cat >"$W/bin/kind" <<KIND
#!/usr/bin/env bash
# kind for Tilt on the local cluster: load docker-image copies an image from podman into the
# cluster's containerd; the cluster is "paygate".
set -euo pipefail
case "\${1:-} \${2:-}" in
  "load docker-image")
    # As the kubelet names it: podman would store a short name under localhost/.
    ref=\$3
    case "\$ref" in
      */*) [[ \${ref%%/*} == *[.:]* || \${ref%%/*} == localhost ]] || ref=docker.io/\$ref ;;
      *) ref=docker.io/library/\$ref ;;
    esac
    podman --runtime runc tag "\$3" "\$ref"
    podman --runtime runc save --format docker-archive "\$ref" | ctr -a "$CSOCK" -n k8s.io images import - >&2 ;;
  "get clusters") echo paygate ;;
  "version "*) echo "kind v0.27.0 go1.24 linux/amd64" ;;
esac
KIND
chmod +x "$W/bin/kind"
ctr -a "$CSOCK" -n k8s.io images tag --force "docker.io/local/metrics-server:v$METRICS_SERVER_VERSION" \
  "registry.k8s.io/metrics-server/metrics-server:v$METRICS_SERVER_VERSION" >/dev/null
# k8s/paygate-dev-values.yaml keeps the chart's PostgreSQL image and its persistence: for this
# run only, the STAND-IN PostgreSQL (standin/postgres, Debian's PostgreSQL 15) is tagged in the
# cluster's containerd with the official name postgres:17.6-bookworm, and a volume is made for
# its claim (no storage provisioner here).
ctr -a "$CSOCK" -n k8s.io images tag --force docker.io/local/postgres-standin:15-"$DEBIAN_SUITE" \
  docker.io/library/postgres:17.6-bookworm >/dev/null

# ---- tilt ci in a copy of the repository -------------------------------------------------------
rm -rf "$W/src" && mkdir -p "$W/src"
(cd "$REPO_ROOT" && git ls-files -z | xargs -0 cp --parents -t "$W/src")
ln -s "$REPO_ROOT/node_modules" "$W/src/node_modules"
export PATH=$W/bin:$TILT_DIR:$HK:$PATH KUBECONFIG=$W/kubeconfig DOCKER_HOST=unix://$PODMAN_SOCK DOCKER_BUILDKIT=0
export TILT_DISABLE_ANALYTICS=1 HOME=$W/home
mkdir -p "$HOME"
static_pv paygate-tilt-postgresql
status=0
(cd "$W/src" && timeout 1200 tilt ci --timeout 15m --web-mode prod --port 10351 -- --no-monitoring) >"$W/tilt-ci.log" 2>&1 || status=$?
tail -40 "$W/tilt-ci.log"
(cd "$W/src" && timeout 300 tilt down --delete-namespaces=false -- --no-monitoring) >"$W/tilt-down.log" 2>&1 || true
stop_podman
# The stand-in's official name goes with the run; so does the volume.
ctr -a "$CSOCK" -n k8s.io images rm docker.io/library/postgres:17.6-bookworm >/dev/null 2>&1 || true
drop_pv paygate-tilt-postgresql
cp "$W/tilt-ci.log" "${PAYGATE_K8S_LOGS:-$CACHE/logs}/tilt-ci.log" 2>/dev/null || true
rm -rf "$W/src"
if ((status == 0)); then say "tilt ci: passed"; else say "tilt ci: FAILED ($status)"; fi
exit "$status"
