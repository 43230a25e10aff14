{{/* Names, labels and images shared by the templates. */}}
{{- define "pail.fullname" -}}
{{- if contains "pail" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-pail" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pail.labels" -}}
app.kubernetes.io/name: pail
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pail.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "pail.nodeServiceAccount" -}}
{{- if .Values.node.serviceAccount.create -}}
{{ default (printf "%s-node" (include "pail.fullname" .)) .Values.node.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.node.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "pail.controllerServiceAccount" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{ default (printf "%s-controller" (include "pail.fullname" .)) .Values.controller.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.controller.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{/* The driver's socket directory on the host. */}}
{{- define "pail.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ .Values.driverName }}
{{- end -}}

{{- define "pail.logArgs" -}}
- --log-format={{ .Values.logFormat }}
{{- if eq .Values.logLevel "debug" }}
- --debug
{{- end }}
{{- end -}}
