{{/* Names: <release>-legation (or the release name when it already says legation), then -<component>. */}}
{{- define "legation.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "legation.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* (dict "root" $ "component" "envoy") */}}
{{- define "legation.componentName" -}}
{{- printf "%s-%s" (include "legation.fullname" .root) .component -}}
{{- end -}}

{{- define "legation.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "legation.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: legation
{{- end -}}

{{- define "legation.selectorLabels" -}}
app.kubernetes.io/name: {{ include "legation.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "legation.componentLabels" -}}
{{ include "legation.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "legation.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Service DNS names, fully qualified so that they work from any namespace. */}}
{{- define "legation.controllerHost" -}}
{{- printf "%s.%s.svc" (include "legation.componentName" (dict "root" . "component" "controller")) .Release.Namespace -}}
{{- end -}}
{{- define "legation.authzAddress" -}}
{{- printf "%s.%s.svc:9001" (include "legation.componentName" (dict "root" . "component" "authz")) .Release.Namespace -}}
{{- end -}}
{{- define "legation.ratelimitAddress" -}}
{{- printf "%s.%s.svc:8081" (include "legation.componentName" (dict "root" . "component" "ratelimit")) .Release.Namespace -}}
{{- end -}}

{{/* True (non-empty) when the rate limit service keeps its counters in Redis. */}}
{{- define "legation.redisConfigured" -}}
{{- if or .Values.redis.enabled .Values.redis.url .Values.redis.existingSecret.name -}}true{{- end -}}
{{- end -}}

{{/* The pod securityContext: the chart-wide one with the component's merged over it. */}}
{{- define "legation.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.podSecurityContext) (deepCopy (default (dict) .values.podSecurityContext))) -}}
{{- end -}}

{{/* Scheduling and metadata shared by every Deployment's pod template: (dict "root" $ "values" .Values.x) */}}
{{- define "legation.podScheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers: the pods of one component (its selector labels as YAML). */}}
{{- define "legation.podPeer" -}}
- podSelector:
    matchLabels:
      {{- . | nindent 6 }}
{{- end }}
{{/* A rule admitting .peers to .port; nothing when .peers is empty (an empty `from` admits all). */}}
{{- define "legation.metricsRule" -}}
{{- if .peers }}
- from:
    {{- toYaml .peers | nindent 4 }}
  ports:
    - port: {{ .port }}
      protocol: TCP
{{- end }}
{{- end }}
