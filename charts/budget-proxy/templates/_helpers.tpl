{{/* Names, labels and the proxy container shared by both modes. */}}

{{- define "budget-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "budget-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "budget-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "budget-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "budget-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "budget-proxy.labels" -}}
helm.sh/chart: {{ include "budget-proxy.chart" . }}
{{ include "budget-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{- define "budget-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "budget-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "budget-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The chart's own Secret exists unless an existing one is named. */}}
{{- define "budget-proxy.secretName" -}}
{{- default (include "budget-proxy.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "budget-proxy.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{- end }}
{{- end }}

{{- define "budget-proxy.checks" -}}
{{- $loopback := has .Values.proxy.host (list "127.0.0.1" "localhost" "::1") }}
{{- if and (not $loopback) (not .Values.secrets.adminToken) (not .Values.secrets.existingSecret) (not .Values.proxy.allowOpenAdmin) }}
{{- fail "proxy.host is not a loopback address, so the admin API is reachable from outside the pod: set secrets.adminToken (or secrets.existingSecret holding BUDGET_ADMIN_TOKEN), or proxy.allowOpenAdmin: true to run it open on purpose" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "budget-proxy.hasRedis" .)) }}
{{- fail "replicaCount > 1 needs the Redis store (redis.url or redis.existingSecret): with the embedded store every replica would keep budgets of its own" }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (not .Values.sidecar.app.image) }}
{{- fail "mode: sidecar needs sidecar.app.image (the application the proxy runs next to)" }}
{{- end }}
{{- end }}

{{/* The budget-proxy container; `sidecar` adds restartPolicy: Always (native sidecar). */}}
{{- define "budget-proxy.container" -}}
- name: budget-proxy
  image: {{ include "budget-proxy.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq .Values.mode "sidecar" }}
  restartPolicy: Always
  {{- end }}
  args: ["serve"]
  ports:
    - name: http
      containerPort: {{ .Values.proxy.port }}
      protocol: TCP
  env:
    - name: BUDGET_HOST
      value: {{ .Values.proxy.host | quote }}
    - name: BUDGET_PORT
      value: {{ .Values.proxy.port | quote }}
    - name: BUDGET_DATA_DIR
      value: /var/lib/budget-proxy
    {{- if .Values.proxy.allowOpenAdmin }}
    - name: BUDGET_ALLOW_OPEN_ADMIN
      value: "true"
    {{- end }}
    - name: BUDGET_FAIL_MODE
      value: {{ .Values.proxy.failMode | quote }}
    - name: BUDGET_TIMEZONE
      value: {{ .Values.proxy.timezone | quote }}
    - name: BUDGET_LOG_LEVEL
      value: {{ .Values.proxy.logLevel | quote }}
    {{- with .Values.proxy.component }}
    - name: BUDGET_COMPONENT
      value: {{ . | quote }}
    {{- end }}
    {{- with .Values.proxy.openaiBaseUrl }}
    - name: BUDGET_OPENAI_BASE_URL
      value: {{ . | quote }}
    {{- end }}
    {{- with .Values.proxy.anthropicBaseUrl }}
    - name: BUDGET_ANTHROPIC_BASE_URL
      value: {{ . | quote }}
    {{- end }}
    {{- if .Values.proxy.config }}
    - name: BUDGET_CONFIG
      value: /etc/budget-proxy/config/config.toml
    {{- end }}
    {{- if .Values.proxy.policies }}
    - name: BUDGET_POLICIES_DIR
      value: /etc/budget-proxy/policies
    {{- end }}
    {{- if .Values.redis.existingSecret }}
    - name: BUDGET_REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.redis.existingSecret }}
          key: {{ .Values.redis.existingSecretKey }}
    {{- end }}
    {{- with .Values.proxy.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  envFrom:
    - secretRef:
        name: {{ include "budget-proxy.secretName" . }}
  startupProbe:
    httpGet:
      path: /health
      port: http
    periodSeconds: 2
    failureThreshold: 60
  # readiness asks the store too (/api/health is 503 while it is unreachable)
  readinessProbe:
    httpGet:
      path: /api/health
      port: http
    periodSeconds: 10
    failureThreshold: 3
  # liveness is the socket only: a store outage must not restart the proxy
  livenessProbe:
    tcpSocket:
      port: http
    periodSeconds: 20
    failureThreshold: 3
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: data
      mountPath: /var/lib/budget-proxy
    - name: tmp
      mountPath: /tmp
    {{- if .Values.proxy.config }}
    - name: config
      mountPath: /etc/budget-proxy/config
      readOnly: true
    {{- end }}
    {{- if .Values.proxy.policies }}
    - name: policies
      mountPath: /etc/budget-proxy/policies
      readOnly: true
    {{- end }}
{{- end }}
