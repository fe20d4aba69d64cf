{{/* Chart name, truncated to a DNS label. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "kubetune.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "kubetune.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels every object of the release carries; the component label is added per object. */}}
{{- define "kubetune.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "kubetune.labels" -}}
{{ include "kubetune.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Selects the operator pod only (not the helm test pod, which has another component). */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount; validateValues refuses create=false without a name, so RBAC
     is never bound to a namespace's shared "default" account. */}}
{{- define "kubetune.serviceAccountName" -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* An image reference from repository, tag (the appVersion when empty) and digest: `repo:tag@sha256:...`
     when a digest is set (the registry then serves exactly that image; the tag is kept for people). */}}
{{- define "kubetune.reference" -}}
{{- $image := index . 0 }}
{{- $reference := printf "%s:%s" $image.repository (default (index . 1) $image.tag) }}
{{- if $image.digest }}{{ printf "%s@%s" $reference $image.digest }}{{ else }}{{ $reference }}{{ end }}
{{- end }}

{{- define "kubetune.image" -}}
{{- include "kubetune.reference" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{- define "kubetune.trainerImage" -}}
{{- include "kubetune.reference" (list .Values.trainerImage .Chart.AppVersion) }}
{{- end }}

{{/* The operator's namespaced rules: exactly what it calls, nothing more. tests/operator/test_rbac_usage.py
     compares them with every request the operator made over the whole operator suite, both ways. */}}
{{- define "kubetune.namespacedRules" -}}
# A DriftMonitor's retraining is a FineTuneJob the operator creates, owned by the monitor.
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["kubetune.dev"]
  resources: ["driftmonitors"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs/status", "driftmonitors/status"]
  verbs: ["patch"]
# Children block their owner's deletion (ownerReferences blockOwnerDeletion); clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened distributions) require this.
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs/finalizers", "driftmonitors/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Why a trainer stopped when it could not say so itself, and a drift check's report: a pod's termination message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["configmaps", "serviceaccounts", "services"]
  verbs: ["get", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["secrets", "persistentvolumeclaims"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
{{- if .Values.networkPolicy.trainerEgress.enabled }}
# The per-job trainer egress NetworkPolicy: read, created before the Jobs, put back when changed.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped reads: kopf watches CustomResourceDefinitions to follow the resources it serves,
     and, when it watches a list of namespaces (clusterWide off), the Namespaces themselves. */}}
{{- define "kubetune.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if not .Values.clusterWide }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/* "true" when a Prometheus Operator object is wanted: (list setting apiVersion/Kind context).
     `auto` means: when the cluster serves that API (`helm template` needs --api-versions for it). */}}
{{- define "kubetune.wants" -}}
{{- $setting := index . 0 -}}
{{- $api := index . 1 -}}
{{- $ctx := index . 2 -}}
{{- if eq (toString $setting) "auto" -}}
{{- if $ctx.Capabilities.APIVersions.Has $api }}true{{ end -}}
{{- else if eq (toString $setting) "true" -}}
true
{{- end -}}
{{- end }}

{{- define "kubetune.serviceMonitorEnabled" -}}
{{- include "kubetune.wants" (list .Values.metrics.serviceMonitor.enabled "monitoring.coreos.com/v1/ServiceMonitor" .) }}
{{- end }}

{{/* Scraping trainer pods duplicates what they push: `auto` leaves it to the Pushgateway when one is set. */}}
{{- define "kubetune.podMonitorEnabled" -}}
{{- $setting := .Values.metrics.trainer.podMonitor.enabled -}}
{{- if and (eq (toString $setting) "auto") .Values.metrics.trainer.pushgatewayUrl -}}
{{- else -}}
{{- include "kubetune.wants" (list $setting "monitoring.coreos.com/v1/PodMonitor" .) }}
{{- end -}}
{{- end }}

{{- define "kubetune.prometheusRuleEnabled" -}}
{{- include "kubetune.wants" (list .Values.metrics.prometheusRule.enabled "monitoring.coreos.com/v1/PrometheusRule" .) }}
{{- end }}

{{/* Labels of every alert: a severity, plus metrics.prometheusRule.alertLabels for routing. */}}
{{- define "kubetune.alertLabels" -}}
severity: warning
{{- with .Values.metrics.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Value combinations the schema cannot express; fail at render time with the offending keys. */}}
{{- define "kubetune.validateValues" -}}
{{- if eq (int .Values.metrics.port) (int .Values.healthPort) }}
{{- fail (printf "metrics.port and healthPort must differ (both are %v)" .Values.healthPort) }}
{{- end }}
{{- if and (include "kubetune.serviceMonitorEnabled" .) (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes that Service" }}
{{- end }}
{{- if and .Values.clusterWide .Values.watchNamespaces }}
{{- fail (printf "clusterWide: true watches every namespace, but watchNamespaces lists %s: set watchNamespaces to [] (--set watchNamespaces=null) for a cluster-wide install, or clusterWide to false to watch only the listed namespaces" (join ", " .Values.watchNamespaces)) }}
{{- end }}
{{- if not (or .Values.clusterWide .Values.watchNamespaces) }}
{{- fail "watchNamespaces is empty and clusterWide is false: list the namespaces to watch in watchNamespaces, or set clusterWide: true to watch every namespace with cluster-wide RBAC" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false (the RBAC bindings need a subject)" }}
{{- end }}
{{- if .Values.release.requireDigests }}
{{- range $name, $image := dict "image" .Values.image "trainerImage" .Values.trainerImage }}
{{- if not $image.digest }}
{{- fail (printf "release.requireDigests: %s.digest is empty; a release runs images by digest (sha256:...), never by tag alone" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
