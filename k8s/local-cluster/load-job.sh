#!/usr/bin/env bash
# `npm run load:k8s` on the running local cluster (up.sh): the load runner as a Job in Paygate's
# image against the gateway Service, twice —
#   1. REST payments with thresholds a healthy release meets: exit 0 expected;
#   2. gRPC payments (schema from the gateway's reflection) with a threshold no run can meet
#      (p(99) under a microsecond): exit 99 expected;
# and after each, no ConfigMap, Secret, Job or pod of the run left in the namespace.
#
# Uses the release `paygate` in namespace `paygate` when it is installed (as e2e.sh leaves it
# while running); otherwise installs it as e2e.sh does (default values plus values-local.yaml)
# and uninstalls it at the end. The payments go between two accounts of a merchant made here
# with the operator CLI, so demo data is not needed. Prints ok/FAIL per check; exit 1 when one
# failed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
use_cluster

NS=paygate
RELEASE=paygate
RUN=load$(date +%s)
passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
k() { kubectl -n "$NS" "$@"; }
admin_cli() { k exec "deploy/$RELEASE-gateway" -c gateway -- node dist/services/gateway/admin-cli.js "$@"; }
json() { node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(($1)(JSON.parse(s))))"; }

installed_here=0
cleanup_release() {
  if ((installed_here == 1)); then
    say "uninstalling the release this script installed"
    helm uninstall "$RELEASE" --namespace "$NS" --cascade foreground --wait --timeout 5m >/dev/null || true
    drop_pv paygate-load-postgresql
  fi
}
trap cleanup_release EXIT

if ! helm status "$RELEASE" --namespace "$NS" >/dev/null 2>&1; then
  say "installing the release (values-local.yaml)"
  static_pv paygate-load-postgresql
  installed_here=1
  helm install "$RELEASE" "$REPO_ROOT/charts/paygate" --namespace "$NS" --create-namespace \
    -f "$LC_DIR/values-local.yaml" --wait --timeout 10m >/dev/null
fi

# A merchant with two USD accounts: the payer funded, the payee empty.
api_key=$(admin_cli create-merchant --id "$RUN" --name "load-job merchant" --json | json 'v => v.apiKey')
admin_cli open-account --merchant "$RUN" --currency USD --account "${RUN}_usd" --opening-balance 100000.00 --json >/dev/null
admin_cli open-account --merchant "$RUN" --currency USD --account "${RUN}_usd2" --json >/dev/null
export API_KEY=$api_key CUSTOMER_ID=${RUN}_usd DESTINATION=${RUN}_usd2 AMOUNT=1.00

# left: what any run of load:k8s left in the namespace (its objects carry managed-by=paygate-load-k8s).
left() { k get configmaps,secrets,jobs,pods -l app.kubernetes.io/managed-by=paygate-load-k8s -o name; }

# load_k8s EXPECTED WHAT ARGS...: runs npm run load:k8s, checks its exit code and that nothing is left.
load_k8s() {
  local expected=$1 what=$2 status=0 leftovers
  shift 2
  (cd "$REPO_ROOT" && timeout 900 npm run -s load:k8s -- --release "$RELEASE" --namespace "$NS" "$@") || status=$?
  if ((status == expected)); then ok "$what: exit $status"; else fail "$what: exit $status, expected $expected"; fi
  leftovers=$(left)
  if [[ -z $leftovers ]]; then ok "$what: no ConfigMap, Secret, Job or pod of the run left"; else fail "$what: left behind: $leftovers"; fi
}

load_k8s 0 "REST, thresholds met" --script rest --vus 4 --duration 20s --iterations 200 \
  --thresholds 'error_rate<0.01,captured_rate>0.99,p(99)<5000'
load_k8s 99 "gRPC by reflection, an impossible threshold" --script grpc --vus 2 --duration 10s --iterations 20 \
  --thresholds 'error_rate<0.01,p(99)<0.001'

echo "$passed passed, $failed failed"
((failed == 0))
