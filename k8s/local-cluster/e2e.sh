#!/usr/bin/env bash
# Paygate's chart on the running local cluster (up.sh), end to end:
#   helm install --wait (default values, plus values-local.yaml), a merchant from the operator
#   CLI, a payment through the gateway Service over REST and over gRPC, every ServiceMonitor's
#   endpoint scraped, the NetworkPolicies, the HPA reading metrics, payments at 3 replicas
#   (the share of payments each takes is measured), a rolling restart of payments under load
#   with no failed or lost payment and the books reconciled, helm test, helm upgrade (the
#   database password kept), helm uninstall leaving nothing behind.
#
# All traffic stays in the cluster: the clients are Pods (tests/cluster/load.mjs in the Paygate
# image; busybox and grpcurl in a toolbox image). Every wait is bounded.
#
# Prints "ok"/"FAIL" per check, the time of each phase, and "N passed, N failed" last; exit
# code 1 when a check failed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
use_cluster

NS=paygate
RELEASE=paygate
CHART=$REPO_ROOT/charts/paygate
VALUES=$LC_DIR/values-local.yaml
# The clients' namespace, and the scraper's: the chart's NetworkPolicies let the namespace
# "monitoring" scrape (monitoring.namespaceSelector), and anyone call the gateway.
CLIENTS=paygate-e2e
SCRAPER=monitoring
GATEWAY=http://$RELEASE-gateway.$NS.svc.cluster.local:8080
GATEWAY_GRPC=$RELEASE-gateway.$NS.svc.cluster.local:8080
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
TOOLBOX_IMAGE=local/toolbox:grpcurl-v$GRPCURL_VERSION
RUN=e2e$(date +%s)
OUT=${PAYGATE_K8S_LOGS:-$CACHE/logs}
mkdir -p "$OUT"

passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
info() { echo "     $*"; }
indent() { sed 's/^/     /'; }
# check "WHAT" CMD...: ok when CMD succeeds, FAIL when it does not; its output is shown.
check() {
  local what=$1 output status=0
  shift
  output=$("$@" 2>&1) || status=$?
  if ((status == 0)); then ok "$what"; else fail "$what"; fi
  if [[ -n $output ]]; then indent <<<"$output"; fi
  return 0
}
finish() {
  finished=1
  echo "$passed passed, $failed failed"
  if ((failed == 0)); then exit 0; else exit 1; fi
}
# phase NAME: starts timing a phase; the previous one is recorded.
phase_name="" phase_start=$SECONDS
phase() {
  if [[ -n $phase_name ]]; then record "e2e: $phase_name" $((SECONDS - phase_start)); fi
  phase_name=$1 phase_start=$SECONDS
  if [[ -n $phase_name ]]; then say "== $phase_name"; fi
}

k() { kubectl -n "$NS" "$@"; }
toolbox() { kubectl -n "$CLIENTS" exec toolbox -- "$@"; }
scraper() { kubectl -n "$SCRAPER" exec toolbox -- "$@"; }
admin_cli() { k exec "deploy/$RELEASE-gateway" -c gateway -- node dist/services/gateway/admin-cli.js "$@"; }
# json EXPR: evaluates EXPR on the JSON read from stdin (bound to v).
json() { node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const v=JSON.parse(s);const r=($1);console.log(typeof r==='string'?r:JSON.stringify(r))})"; }
# until_true SECONDS CMD...: polls CMD every 2 s until it succeeds, or fails after SECONDS.
until_true() {
  local limit=$1 t=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - t > limit)); then return 1; fi
    sleep 2
  done
}

# Whatever happens, what the cluster looked like at the end, for the log; a run stopped by an
# unexpected error says where, and counts as failed.
finished=0 err_line=""
on_exit() {
  local status=$?
  {
    kubectl get pods -A -o wide
    kubectl get events -A --sort-by=.lastTimestamp | tail -80
  } >"$OUT/e2e-cluster-state.txt" 2>&1 || true
  if ((finished == 0)); then
    echo "FAIL e2e.sh stopped by an unexpected error (exit $status, line ${err_line:-?})"
    echo "$passed passed, $((failed + 1)) failed"
    exit 1
  fi
}
trap 'err_line=$LINENO' ERR
trap on_exit EXIT

# A release or clients left by an earlier run go first.
if helm status "$RELEASE" --namespace "$NS" >/dev/null 2>&1; then
  say "removing the release left by an earlier run"
  helm uninstall "$RELEASE" --namespace "$NS" --wait --timeout 5m >/dev/null
fi
kubectl delete namespace "$CLIENTS" "$SCRAPER" --ignore-not-found --wait=true --timeout=120s >/dev/null
drop_pv paygate-e2e-postgresql

# ---- helm install ----------------------------------------------------------------------------
phase "helm install"
# The volume the chart's PostgreSQL claims (persistence is on by default).
static_pv paygate-e2e-postgresql
# The namespace enforces the restricted Pod Security Standard, as the README says it can.
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NS" --overwrite pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted >/dev/null
t=$SECONDS
if helm install "$RELEASE" "$CHART" --namespace "$NS" --create-namespace -f "$VALUES" \
  --wait --timeout 10m >"$OUT/helm-install.txt" 2>&1; then
  ok "helm install --wait: every object of the release Ready after $((SECONDS - t))s, in a namespace enforcing the restricted Pod Security Standard"
else
  fail "helm install --wait (after $((SECONDS - t))s)"
  tail -20 "$OUT/helm-install.txt" | indent
  k get pods -o wide | indent
  finish
fi
k get pods -o wide | indent
check "the PostgreSQL claim is bound (persistence on, as by default)" \
  test "$(k get pvc -l app.kubernetes.io/component=postgresql -o jsonpath='{.items[0].status.phase}')" = Bound

# ---- the clients: a toolbox Pod (busybox, grpcurl) as the payer and one as the scraper -------
phase "clients"
kubectl create namespace "$CLIENTS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create namespace "$SCRAPER" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
for ns in "$CLIENTS" "$SCRAPER"; do
  kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: toolbox, labels: {app.kubernetes.io/part-of: paygate-e2e}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: toolbox
      image: $TOOLBOX_IMAGE
      imagePullPolicy: Never
      command: ["sleep", "3600"]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}
YAML
done
kubectl -n "$CLIENTS" wait --for=condition=Ready pod/toolbox --timeout=120s >/dev/null
kubectl -n "$SCRAPER" wait --for=condition=Ready pod/toolbox --timeout=120s >/dev/null
# The load runs' script, in the Paygate image.
kubectl -n "$CLIENTS" create configmap load --from-file=load.mjs="$REPO_ROOT/tests/cluster/load.mjs" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# ---- a merchant, from the operator CLI ---------------------------------------------------------
phase "operator CLI"
merchant=$RUN
api_key=""
if created=$(admin_cli create-merchant --id "$merchant" --name "e2e merchant" --json 2>"$OUT/admin-cli.err") &&
  api_key=$(json 'v.apiKey' <<<"$created") && [[ $api_key == pgk_${merchant}_* ]]; then
  ok "operator CLI: merchant $merchant created, API key issued (shown once)"
else
  fail "operator CLI: create-merchant"
  indent <<<"$created"
  indent <"$OUT/admin-cli.err"
  finish
fi
# open_account ACCOUNT CURRENCY [OPENING]: the operator CLI in a gateway pod, as documented
# (WALLET_URL names the wallet by host name). When that form fails, the wallet's ClusterIP is
# given instead (WALLET_ENV), so that the checks after it still run.
WALLET_ENV=()
open_account() {
  k exec "deploy/$RELEASE-gateway" -c gateway -- "${WALLET_ENV[@]}" node dist/services/gateway/admin-cli.js \
    open-account --merchant "$merchant" --currency "$2" --account "$1" ${3:+--opening-balance "$3"} --json
}
if out=$(open_account "${merchant}_usd" USD 100000.00 2>&1); then
  ok "operator CLI: open-account (100000.00 USD)"
else
  fail "operator CLI: open-account, as documented (WALLET_URL by host name)"
  indent <<<"$out"
  WALLET_ENV=(env "WALLET_URL=http://$(k get svc "$RELEASE-wallet" -o jsonpath='{.spec.clusterIP}'):9093")
  if out=$(open_account "${merchant}_usd" USD 100000.00 2>&1); then
    info "the same with WALLET_URL=<the wallet Service's ClusterIP> works: the host name is the trigger; the rest uses that"
  else
    indent <<<"$out"
  fi
fi
open_accounts() { open_account "${merchant}_usd2" USD && open_account "${merchant}_eur" EUR; }
check "operator CLI: two more accounts opened (USD, EUR)" open_accounts
kubectl -n "$CLIENTS" create secret generic e2e-key --from-literal=API_KEY="$api_key" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# ---- a payment through the gateway Service: REST and gRPC --------------------------------------
phase "payments through the Service"
rest_payment() {
  toolbox timeout 20 wget -q -O - --header "authorization: Bearer $api_key" --header 'content-type: application/json' \
    --post-data "{\"id\":\"$RUN-rest-$1\",\"currency\":\"USD\",\"amount\":12.34,\"source_account\":\"${merchant}_usd\",\"destination_account\":\"${merchant}_eur\"}" \
    "$GATEWAY/payments"
}
rest=$(rest_payment 1 2>&1) || true
if [[ $(json 'v.status + " " + v.settlement_currency' <<<"$rest" 2>/dev/null) == "CAPTURED EUR" ]]; then
  ok "REST POST /payments through Service $RELEASE-gateway: CAPTURED (12.34 USD -> $(json 'v.settlement_amount' <<<"$rest") EUR)"
else
  fail "REST POST /payments through Service $RELEASE-gateway"
  indent <<<"$rest"
fi
grpc=$(toolbox grpcurl -plaintext -max-time 20 -H "authorization: Bearer $api_key" -H "idempotency-key: $RUN-grpc-1" \
  -d "{\"source_account_id\":\"${merchant}_usd\",\"destination_account_id\":\"${merchant}_usd2\",\"amount\":{\"currency\":\"USD\",\"amount_minor\":\"500\"}}" \
  "$GATEWAY_GRPC" paygate.payments.v1.PaymentsService/CreatePayment 2>&1) || true
if [[ $(json 'v.payment.status' <<<"$grpc" 2>/dev/null) == PAYMENT_STATUS_CAPTURED ]]; then
  ok "gRPC PaymentsService/CreatePayment through Service $RELEASE-gateway (grpcurl, schema by reflection): CAPTURED"
else
  fail "gRPC PaymentsService/CreatePayment through Service $RELEASE-gateway"
  indent <<<"$grpc"
fi
balance=$(toolbox grpcurl -plaintext -max-time 20 -H "authorization: Bearer $api_key" -d "{\"account_id\":\"${merchant}_usd2\"}" \
  "$GATEWAY_GRPC" paygate.wallet.v1.WalletService/GetBalance 2>&1) || true
check "gRPC WalletService/GetBalance: the payee holds the 5.00 USD" grep -q '"500"' <<<"$balance"

# ---- metrics through each ServiceMonitor's endpoint ------------------------------------------
phase "ServiceMonitors"
monitors=$(k get servicemonitors -l "app.kubernetes.io/instance=$RELEASE" -o name)
check "a ServiceMonitor per service (5)" test "$(wc -l <<<"$monitors")" -eq 5
# As Prometheus does: the Services the monitor selects, the port it names, every endpoint.
for sm in $monitors; do
  name=${sm#*/}
  selector=$(k get "$sm" -o json | json 'Object.entries(v.spec.selector.matchLabels).map(([a,b])=>a+"="+b).join(",")')
  port_name=$(k get "$sm" -o json | json 'v.spec.endpoints[0].port')
  path=$(k get "$sm" -o json | json 'v.spec.endpoints[0].path || "/metrics"')
  scraped=0 endpoints=0 problems=""
  for svc in $(k get svc -l "$selector" -o name); do
    port=$(k get "$svc" -o json | json "(v.spec.ports.find(p=>p.name==='$port_name')||{}).targetPort")
    # The port's number on the pods, from the EndpointSlices of the Service.
    for addr_port in $(k get endpointslices -l "kubernetes.io/service-name=${svc#*/}" -o json |
      json "v.items.flatMap(s=>{const p=(s.ports||[]).find(p=>p.name==='$port_name');return (s.endpoints||[]).filter(e=>e.conditions.ready).flatMap(e=>e.addresses.map(a=>a+':'+(p&&p.port)))}).join(' ')"); do
      endpoints=$((endpoints + 1))
      body=$(scraper timeout 10 wget -q -O - "http://$addr_port$path" 2>&1) || true
      if grep -q '^process_cpu_user_seconds_total' <<<"$body" && grep -q '^# TYPE rpc_server_requests_total' <<<"$body"; then
        scraped=$((scraped + 1))
      else
        problems+=" $addr_port($(head -c 120 <<<"$body"))"
      fi
    done
  done
  if ((endpoints > 0 && scraped == endpoints)); then
    ok "ServiceMonitor $name: port $port_name ($port) $path scraped on all $endpoints endpoints"
  else
    fail "ServiceMonitor $name: $scraped of $endpoints endpoints answered with metrics;$problems"
  fi
done

# ---- NetworkPolicies ---------------------------------------------------------------------------
phase "NetworkPolicies"
policies=$(k get networkpolicies -l "app.kubernetes.io/instance=$RELEASE" -o name)
if grep -q "networkpolicy.networking.k8s.io/$RELEASE-default-deny" <<<"$policies" && (($(wc -l <<<"$policies") == 8)); then
  ok "8 NetworkPolicies applied: default deny, one per service, the database's and helm test's"
else
  fail "NetworkPolicies: expected $RELEASE-default-deny and 7 more"
fi
indent <<<"$policies"
info "not enforced here: the CNI bridge plugin has no NetworkPolicy controller (objects checked, traffic not)"

# ---- the HPA reads metrics (metrics-server) ----------------------------------------------------
phase "HPA"
hpa_reads() {
  [[ -n $(k get hpa "$RELEASE-payments" -o jsonpath='{.status.currentMetrics[0].resource.current.averageUtilization}') ]]
}
if until_true 240 hpa_reads; then
  ok "HPA $RELEASE-payments reads CPU from metrics-server: $(k get hpa "$RELEASE-payments" -o jsonpath='{.status.currentMetrics[0].resource.current.averageUtilization}')% of requests (target $(k get hpa "$RELEASE-payments" -o jsonpath='{.spec.metrics[0].resource.target.averageUtilization}')%), $(k get hpa "$RELEASE-payments" -o jsonpath='{.status.currentReplicas}') replicas"
else
  fail "HPA $RELEASE-payments reads no metric after 240s"
  k describe hpa "$RELEASE-payments" | tail -8 | indent
fi

# ---- payments at 3 replicas: who gets the traffic ----------------------------------------------
# load NAME PAYMENTS SECONDS CONCURRENCY: starts a Job running tests/cluster/load.mjs with fresh
# accounts of its own (payer funded with 100000.00 USD).
load() {
  local name=$1 payments=$2 seconds=$3 concurrency=$4
  open_account "${merchant}_${name}_from" USD 100000.00 >/dev/null || return 1
  open_account "${merchant}_${name}_to" USD >/dev/null || return 1
  kubectl -n "$CLIENTS" delete job "load-$name" --ignore-not-found --wait=true >/dev/null
  kubectl -n "$CLIENTS" apply -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: load-$name, labels: {app.kubernetes.io/part-of: paygate-e2e}}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: $((seconds + 300))
  template:
    metadata: {labels: {app.kubernetes.io/part-of: paygate-e2e, job: load-$name}}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: load
          image: paygate:$APP_VERSION
          imagePullPolicy: IfNotPresent
          command: ["node", "/e2e/load.mjs"]
          env:
            - {name: GATEWAY_URL, value: "$GATEWAY"}
            - {name: API_KEY, valueFrom: {secretKeyRef: {name: e2e-key, key: API_KEY}}}
            - {name: PAYER, value: "${merchant}_${name}_from"}
            - {name: PAYEE, value: "${merchant}_${name}_to"}
            - {name: PAYER_OPENING, value: "100000.00"}
            - {name: RUN, value: "$RUN-$name"}
            - {name: PAYMENTS, value: "$payments"}
            - {name: SECONDS, value: "$seconds"}
            - {name: CONCURRENCY, value: "$concurrency"}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
          resources: {requests: {cpu: 50m, memory: 96Mi}, limits: {memory: 256Mi}}
          volumeMounts: [{name: script, mountPath: /e2e, readOnly: true}]
      volumes: [{name: script, configMap: {name: load}}]
YAML
}
# load_result NAME TIMEOUT: waits for the Job, prints its summary (the last line of its log).
load_result() {
  local job=load-$1
  done_() { [[ -n $(kubectl -n "$CLIENTS" get job "$job" -o jsonpath='{.status.succeeded}{.status.failed}') ]]; }
  until_true "$2" done_ || echo "load-$1 still running after $2 s" >&2
  kubectl -n "$CLIENTS" logs "job/$job" --tail=1
}
# The CreatePayment calls each payments pod has served (its own /metrics), "pod count" lines.
payments_served() {
  local pod ip
  for pod in $(k get pods -l app.kubernetes.io/component=payments --field-selector=status.phase=Running -o name); do
    ip=$(k get "$pod" -o jsonpath='{.status.podIP}')
    printf '%s %s\n' "${pod#*/}" "$(scraper timeout 10 wget -q -O - "http://$ip:9101/metrics" |
      awk '/^rpc_server_requests_total\{/ && /rpc_method="CreatePayment"/ {s += $NF} END {printf "%d", s}')"
  done
}

phase "payments at 3 replicas"
# The HPA owns the replica count: held at 3 for the measurement (helm upgrade restores it).
k patch hpa "$RELEASE-payments" --type merge -p '{"spec":{"minReplicas":3,"maxReplicas":3}}' >/dev/null
three_ready() { [[ $(k get deploy "$RELEASE-payments" -o jsonpath='{.status.readyReplicas}') == 3 ]]; }
if until_true 240 three_ready; then
  ok "payments scaled to 3 replicas, all Ready"
  # Callers find a new replica through the headless Service's DNS name, once the cluster DNS's
  # cached answer (TTL 30 s) lists it; the gateway resolves the name again within 5 s.
  listed() { [[ $(toolbox nslookup "$RELEASE-payments-replicas.$NS.svc.cluster.local" 2>/dev/null | awk '/^Name:/ {n = 1} n && /^Address/ {c++} END {print c + 0}') == 3 ]]; }
  t=$SECONDS
  if until_true 90 listed; then
    info "the headless Service's name lists 3 addresses after $((SECONDS - t))s"
    sleep 6
  else
    info "the headless Service's name did not list 3 addresses within 90s"
  fi
  before=$(payments_served)
  spread='{"error":"the load Job could not start"}'
  if load spread 300 60 8; then spread=$(load_result spread 200); fi
  after=$(payments_served)
  check "300 payments at 3 replicas: all CAPTURED, none lost, balances exact" \
    test "$(json 'v.passed' <<<"$spread" 2>/dev/null)" = true
  indent <<<"$spread"
  shares=$(join <(sort <<<"$before") <(sort <<<"$after") | awk '{printf "%s=%d ", $1, $3 - $2; if ($3 - $2 > 0) n++} END {printf "| replicas with traffic: %d of %d\n", n, NR}')
  if [[ $shares == *"replicas with traffic: 3 of 3"* ]]; then
    ok "traffic reaches all 3 payments replicas: $shares"
  else
    fail "traffic does not reach all 3 payments replicas: $shares"
  fi
else
  fail "payments did not reach 3 Ready replicas in 240s"
fi

# ---- rolling restart of payments under load --------------------------------------------------
phase "rolling restart under load"
restart='{"error":"the load Job could not start"}'
# The load outlasts the rollout: 3 pods, each Ready minReadySeconds (40 s) before the next goes.
load restart 20000 240 4 || fail "the load Job for the restart could not start"
# Restart once the load runs.
load_running() { [[ $(kubectl -n "$CLIENTS" get pods -l job=load-restart -o jsonpath='{.items[0].status.phase}') == Running ]]; }
until_true 120 load_running || true
sleep 10
t=$SECONDS
k rollout restart "deploy/$RELEASE-payments" >/dev/null
if k rollout status "deploy/$RELEASE-payments" --timeout=420s >/dev/null 2>&1; then
  ok "rolling restart of payments (3 replicas) completed in $((SECONDS - t))s under load"
  check "the load ran through the whole rollout" load_running
else
  fail "rolling restart of payments did not complete in 420s"
fi
if kubectl -n "$CLIENTS" get job load-restart >/dev/null 2>&1; then restart=$(load_result restart 500); fi
check "payments during the restart: all CAPTURED, none lost, balances exact" \
  test "$(json 'v.passed' <<<"$restart" 2>/dev/null)" = true
indent <<<"$restart"
retried=$(json 'v.retries' <<<"$restart" 2>/dev/null || echo "?")
if [[ $retried == 0 ]]; then
  ok "no call failed during the restart (no retry needed)"
else
  fail "$retried calls had to be retried during the restart (see transientErrors): the payments were kept, but clients saw errors"
fi
# Where calls failed: every pod's RPC counters whose code is not ok, from its own /metrics
# (the payments pods are the restarted ones; the gateway's count its calls to payments).
failed_rpcs() {
  local pod ip port
  for pod in $(k get pods -l "app.kubernetes.io/instance=$RELEASE" --field-selector=status.phase=Running -o name); do
    ip=$(k get "$pod" -o jsonpath='{.status.podIP}')
    port=$(k get "$pod" -o jsonpath='{.spec.containers[0].ports[?(@.name=="admin")].containerPort}')
    [[ -n $port ]] || port=$(k get "$pod" -o jsonpath='{.spec.containers[0].ports[?(@.name=="rpc")].containerPort}')
    [[ -n $port && $port != 5432 ]] || continue
    scraper timeout 10 wget -q -O - "http://$ip:$port/metrics" 2>/dev/null |
      grep -E '^rpc_(client|server)_requests_total\{' | grep -v 'code="ok"' | sed "s|^|${pod#*/} |" || true
  done
}
failed_rpcs >"$OUT/failed-rpcs-after-restart.txt"
if [[ -s $OUT/failed-rpcs-after-restart.txt ]]; then
  info "RPCs that did not end ok, per pod (from /metrics, $OUT/failed-rpcs-after-restart.txt):"
  indent <"$OUT/failed-rpcs-after-restart.txt"
fi
reconcile=$(k exec "deploy/$RELEASE-wallet" -c wallet -- node -e \
  "fetch('http://127.0.0.1:9103/reconcile',{signal:AbortSignal.timeout(60000)}).then(r=>r.text()).then(t=>console.log(t))" 2>"$OUT/reconcile.err") || true
check "the wallet's books reconcile (admin /reconcile)" test "$(json 'v.balanced' <<<"$reconcile" 2>/dev/null)" = true
indent <<<"$(head -c 400 <<<"$reconcile")"

# ---- helm test -------------------------------------------------------------------------------
phase "helm test"
if helm test "$RELEASE" --namespace "$NS" --timeout 5m --logs >"$OUT/helm-test.txt" 2>&1; then
  ok "helm test: $(grep -c '^ok ' "$OUT/helm-test.txt") checks of the test pod passed"
else
  fail "helm test"
fi
grep -E '^(ok|FAIL) |helm test' "$OUT/helm-test.txt" | indent || true

# ---- the load runner as a Job in the cluster (npm run load:k8s, load-job.sh) ------------------
phase "in-cluster load Job"
if "$LC_DIR/load-job.sh" >"$OUT/load-job.txt" 2>&1; then
  ok "npm run load:k8s: $(grep -c '^ok ' "$OUT/load-job.txt") checks passed (a Job meeting its thresholds exits 0, one failing them 99, nothing left)"
else
  fail "npm run load:k8s (see $OUT/load-job.txt)"
fi
grep -E '^(ok|FAIL) |payments/s|p99' "$OUT/load-job.txt" | indent || true

# ---- helm upgrade: every service rolled, the database and its password kept -------------------
phase "helm upgrade"
k patch hpa "$RELEASE-payments" --type merge -p '{"spec":{"minReplicas":2,"maxReplicas":6}}' >/dev/null
password=$(k get secret "$RELEASE-postgresql" -o jsonpath='{.data.password}')
gateway_rs=$(k get rs -l app.kubernetes.io/component=gateway -o name | sort)
t=$SECONDS
if helm upgrade "$RELEASE" "$CHART" --namespace "$NS" -f "$VALUES" \
  --set-string "podAnnotations.paygate-e2e/upgraded=$RUN" --wait --timeout 10m >"$OUT/helm-upgrade.txt" 2>&1; then
  ok "helm upgrade --wait (new pod template for every service) in $((SECONDS - t))s"
else
  fail "helm upgrade"
  tail -20 "$OUT/helm-upgrade.txt" | indent
fi
check "the database password is kept across the upgrade" test "$(k get secret "$RELEASE-postgresql" -o jsonpath='{.data.password}')" = "$password"
check "the gateway rolled to a new ReplicaSet" test "$(k get rs -l app.kubernetes.io/component=gateway -o name | sort)" != "$gateway_rs"
after_upgrade=$(rest_payment 2 2>&1) || true
check "after the upgrade, the merchant's key still pays (data and password kept)" \
  test "$(json 'v.status' <<<"$after_upgrade" 2>/dev/null)" = CAPTURED
check "helm history: 2 revisions, deployed" bash -c "helm history $RELEASE -n $NS | tail -1 | grep -q deployed"

# ---- helm uninstall: nothing left ------------------------------------------------------------
phase "helm uninstall"
kubectl delete namespace "$CLIENTS" "$SCRAPER" --wait=true --timeout=120s >/dev/null || true
t=$SECONDS
# Foreground: the Deployments go once their pods have (each pod's preStop and drain included).
if helm uninstall "$RELEASE" --namespace "$NS" --cascade foreground --wait --timeout 5m >"$OUT/helm-uninstall.txt" 2>&1; then
  ok "helm uninstall --cascade foreground --wait in $((SECONDS - t))s"
else
  fail "helm uninstall"
  tail -5 "$OUT/helm-uninstall.txt" | indent
fi
# Every kind the API serves that can be listed, namespaced or not, with the release's label
# (given up to 2 minutes to finish terminating).
kinds=$(kubectl api-resources --verbs=list -o name | grep -v -e '^events' -e 'metrics.k8s.io$' -e '^componentstatuses$' | paste -sd, -)
leftovers() { kubectl get "$kinds" -A -l "app.kubernetes.io/instance=$RELEASE" -o name 2>"$OUT/leftovers-stderr.txt"; }
# Done terminating: nothing left, or only a failed helm test pod (which stays, see below).
settled() { [[ -z $(leftovers | grep -v "^pod/$RELEASE-test-payment$") ]]; }
until_true 120 settled || true
left=$(leftovers || true)
check "no object with the release's label is left (all kinds, all namespaces) $((SECONDS - t))s after the uninstall began" test -z "$left"
[[ -z $left ]] || indent <<<"$left"
if [[ $left == *"pod/$RELEASE-test-payment"* ]]; then
  info "the helm test pod stays when the test failed (hook-delete-policy keeps a failed one for its logs; hooks are not release objects)"
fi
check "no PersistentVolumeClaim is left in $NS (the chart's retention policy deletes it)" test -z "$(k get pvc -o name)"
drop_pv paygate-e2e-postgresql
check "no pod is left in $NS" test -z "$(k get pods -o name)"

phase ""
finish
