{{/*
Names. Every object name starts with the full name, so two releases in one cluster
never share a cluster-scoped object.
*/}}
{{- define "fanout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fanout.fullname" -}}
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

{{- define "fanout.operator.fullname" -}}
{{- printf "%s-operator" (include "fanout.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fanout.gateway.fullname" -}}
{{- printf "%s-gateway" (include "fanout.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ConfigMap the operator writes the gateway's routes into (the chart only mounts it). */}}
{{- define "fanout.gateway.routesConfigMap" -}}
{{- printf "%s-gateway-routes" (include "fanout.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret the operator mirrors the routes' bearer tokens into (the chart only mounts it). */}}
{{- define "fanout.gateway.tokensSecret" -}}
{{- printf "%s-gateway-tokens" (include "fanout.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The events port's name: https when it speaks TLS (meshes read the name). */}}
{{- define "fanout.gateway.portName" -}}
{{- ternary "https" "http" (not (empty .Values.gateway.tls.secretName)) }}
{{- end }}

{{/* Where the gateway's TLS Secret is mounted. */}}
{{- define "fanout.gateway.tlsDir" -}}/etc/fanout/gateway-tls{{- end }}

{{- define "fanout.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "fanout.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fanout.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "fanout.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels. `component` is "operator" or "gateway". */}}
{{- define "fanout.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fanout.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: fanout
{{- end }}

{{- define "fanout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fanout.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images. */}}
{{- define "fanout.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "fanout.dispatcherImage" -}}
{{- $repository := .Values.dispatcher.image.repository | default .Values.image.repository }}
{{- $tag := .Values.dispatcher.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/*
Values that JSON schema cannot express clearly; checked once, from the operator
Deployment (always rendered).
*/}}
{{- define "fanout.validate" -}}
{{- if and .Values.nats.credentials.secretName .Values.nats.token.secretName }}
{{- fail "nats.credentials.secretName and nats.token.secretName exclude each other: NATS authenticates with one of them" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (empty .Values.networkPolicy.nats.to) }}
{{- fail "networkPolicy.nats.to must list where NATS runs (NetworkPolicyPeers) when networkPolicy.enabled: every Fanout pod talks to NATS" }}
{{- end }}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: true (two active operators would fight over every route)" }}
{{- end }}
{{- end }}

{{/* Where the NATS secret files are mounted. */}}
{{- define "fanout.nats.dir" -}}/etc/fanout/nats{{- end }}

{{/* FANOUT_NATS_* variables shared by the operator and the gateway. */}}
{{- define "fanout.nats.env" -}}
- name: FANOUT_NATS_URL
  value: {{ .Values.nats.url | quote }}
{{- with .Values.nats.credentials.secretName }}
- name: FANOUT_NATS_CREDENTIALS_FILE
  value: {{ printf "%s/credentials/%s" (include "fanout.nats.dir" $) $.Values.nats.credentials.key | quote }}
{{- end }}
{{- with .Values.nats.token.secretName }}
- name: FANOUT_NATS_TOKEN_FILE
  value: {{ printf "%s/token/%s" (include "fanout.nats.dir" $) $.Values.nats.token.key | quote }}
{{- end }}
{{- with .Values.nats.ca.secretName }}
- name: FANOUT_NATS_CA_FILE
  value: {{ printf "%s/ca/%s" (include "fanout.nats.dir" $) $.Values.nats.ca.key | quote }}
{{- end }}
{{- end }}

{{- define "fanout.common.env" -}}
- name: FANOUT_LOG
  value: {{ .Values.logLevel | quote }}
- name: FANOUT_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}

{{- define "fanout.nats.volumeMounts" -}}
{{- range $kind := list "credentials" "token" "ca" }}
{{- if (get $.Values.nats $kind).secretName }}
- name: nats-{{ $kind }}
  mountPath: {{ printf "%s/%s" (include "fanout.nats.dir" $) $kind }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "fanout.nats.volumes" -}}
{{- range $kind := list "credentials" "token" "ca" }}
{{- $ref := get $.Values.nats $kind }}
{{- if $ref.secretName }}
- name: nats-{{ $kind }}
  secret:
    secretName: {{ $ref.secretName }}
    defaultMode: 0440
    items:
      - key: {{ $ref.key }}
        path: {{ $ref.key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
What the operator may do in each namespace it watches: every namespace (the
ClusterRole) or each of operator.watchNamespaces (a Role there). Each rule is a call
the operator makes; docs/security.md lists them, e2e/tests/chart.rs checks them with
`kubectl auth can-i`, and cli/tests/operator_rbac.rs runs the operator with exactly
these rights.
*/}}
{{- define "fanout.operator.watchedRules" -}}
# Watch routes and targets; patch adds and removes the route finalizer.
- apiGroups: ["fanout.dev"]
  resources: ["fanoutroutes", "apitargets"]
  verbs: ["list", "watch", "patch"]
# Status by server-side apply; a route's last status is read back while NATS is away.
- apiGroups: ["fanout.dev"]
  resources: ["fanoutroutes/status"]
  verbs: ["get", "patch"]
- apiGroups: ["fanout.dev"]
  resources: ["apitargets/status"]
  verbs: ["patch"]
# Run each FanOutReplay and write its progress into its status (no finalizer:
# deleting one stops its replay at once).
- apiGroups: ["fanout.dev"]
  resources: ["fanoutreplays"]
  verbs: ["list", "watch"]
- apiGroups: ["fanout.dev"]
  resources: ["fanoutreplays/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion on a route need update on its finalizers.
- apiGroups: ["fanout.dev"]
  resources: ["fanoutroutes/finalizers"]
  verbs: ["update"]
# Get by name: checks that the Secret keys a route and its targets reference
# exist, and reads the routes' ingest tokens for the gateway. No list or watch
# unless operator.watchSecrets (a metadata watch that tells the gateway sync when
# an ingest token was rotated; RBAC cannot narrow it to those Secrets).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: {{ ternary (list "get" "list" "watch") (list "get") (.Values.operator.watchSecrets | default false) | toJson }}
# Each route's dispatcher ServiceAccount and ConfigMap: get checks who owns one of
# that name; an apply that creates needs create. Never delete: garbage collection
# removes them with their route.
- apiGroups: [""]
  resources: ["configmaps", "serviceaccounts"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Events on routes and targets.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Watched namespaces, comma-separated; empty for every namespace. */}}
{{- define "fanout.operator.watchNamespaces" -}}
{{- join "," (uniq .Values.operator.watchNamespaces) }}
{{- end }}

{{/* Egress every Fanout pod needs: DNS and NATS. */}}
{{- define "fanout.networkPolicy.commonEgress" -}}
{{- with .Values.networkPolicy.dns.to }}
- to:
    {{- toYaml . | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end }}
- to:
    {{- toYaml .Values.networkPolicy.nats.to | nindent 4 }}
  ports:
    {{- range .Values.networkPolicy.nats.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}

{{/* Ingress on `port` from the metrics scrapers, when any are listed. */}}
{{- define "fanout.networkPolicy.metricsIngress" -}}
{{- with .root.Values.networkPolicy.metricsFrom }}
- from:
    {{- toYaml . | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ $.port }}}
{{- end }}
{{- end }}
