{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "paygate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: "paygate" for a release named paygate, else "<release>-paygate". */}}
{{- define "paygate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "paygate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "paygate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paygate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels --------------------------------------------------------------------------------- */}}

{{- define "paygate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "paygate.labels" -}}
helm.sh/chart: {{ include "paygate.chart" . }}
{{ include "paygate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paygate
{{- end }}

{{/* A component's labels; the argument is (dict "root" $ "name" "payments"). The component
     label is also the `job` Prometheus gives its metrics (ServiceMonitor jobLabel), which the
     dashboards and alerts use as the service's name. */}}
{{- define "paygate.componentSelectorLabels" -}}
{{ include "paygate.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "paygate.componentLabels" -}}
{{ include "paygate.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "paygate.componentName" -}}
{{- printf "%s-%s" (include "paygate.fullname" .root) .name }}
{{- end }}

{{/* Architecture ------------------------------------------------------------------------ */}}

{{/* Which services each one calls (README, Architecture). The upstream URLs, the egress and
     the ingress NetworkPolicies all follow from this one table. */}}
{{- define "paygate.calls" -}}
gateway: [payments, fx, wallet, risk]
payments: [fx, wallet, risk]
risk: [fx]
fx: []
wallet: []
{{- end }}

{{/* The services that call `name`. */}}
{{- define "paygate.callers" -}}
{{- $callers := list }}
{{- range $caller, $callees := include "paygate.calls" . | fromYaml }}
{{- if has $.name $callees }}{{ $callers = append $callers $caller }}{{ end }}
{{- end }}
{{- toJson (sortAlpha $callers) }}
{{- end }}

{{/* The variable prefix of a service's own settings: PAYMENTS_PORT, GATEWAY_PORT, … */}}
{{- define "paygate.envPrefix" -}}
{{- .name | upper }}
{{- end }}

{{/* Where a component serves /healthz, /readyz and /metrics: its admin port, or for the
     gateway its one port. */}}
{{- define "paygate.adminPortName" -}}
{{- if .c.adminPort }}admin{{ else }}rpc{{ end }}
{{- end }}

{{/* Image ------------------------------------------------------------------------------- */}}

{{- define "paygate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Database ---------------------------------------------------------------------------- */}}

{{- define "paygate.postgresql.enabled" -}}
{{- if not .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{- define "paygate.postgresql.name" -}}
{{- printf "%s-postgresql" (include "paygate.fullname" .) }}
{{- end }}

{{/* The Secret and key holding DATABASE_URL. */}}
{{- define "paygate.database.secretName" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecret }}{{ else }}{{ include "paygate.postgresql.name" . }}{{ end }}
{{- end }}

{{- define "paygate.database.secretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}DATABASE_URL{{ end }}
{{- end }}

{{- define "paygate.database.env" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "paygate.database.secretName" . }}
      key: {{ include "paygate.database.secretKey" . }}
{{- end }}

{{/* Pods -------------------------------------------------------------------------------- */}}

{{/* Covers the preStop sleep, the drain delay, the in-flight calls' time and the rest of the
     shutdown (cutting off late calls, closing the database, flushing traces). */}}
{{- define "paygate.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown }}
{{- add $s.preStopSleepSeconds (div (add $s.drainDelayMs $s.timeoutMs 999) 1000) $s.overheadSeconds }}
{{- end }}

{{- define "paygate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "paygate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: {{ not .Values.devMode }}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Runs `node dist/services/gateway/admin-cli.js wait-for-database` before a service starts,
     so that services do not crash-loop while PostgreSQL starts. */}}
{{- define "paygate.waitForDatabase" -}}
- name: wait-for-database
  image: {{ include "paygate.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["node", "dist/services/gateway/admin-cli.js", "wait-for-database", "--timeout-seconds", {{ .Values.database.waitTimeoutSeconds | int | quote }}]
  env:
    {{- include "paygate.database.env" . | nindent 4 }}
  resources:
    requests: { cpu: 10m, memory: 64Mi }
    limits: { memory: 128Mi }
  securityContext:
    {{- include "paygate.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
