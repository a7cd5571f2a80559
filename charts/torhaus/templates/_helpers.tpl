{{/* Names, labels and derived values shared by every template. */}}

{{- define "torhaus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: the release name, plus the chart name unless the release already contains it. */}}
{{- define "torhaus.fullname" -}}
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

{{- define "torhaus.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "torhaus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: torhaus
{{- end }}

{{/* Selector labels never change between chart versions: a DaemonSet's selector is immutable. */}}
{{- define "torhaus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "torhaus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "torhaus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "torhaus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "torhaus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The admin listener's port, taken from adminBind ("ADDR:PORT" or "[V6]:PORT"). */}}
{{- define "torhaus.adminPort" -}}
{{- $port := .Values.adminBind | splitList ":" | last }}
{{- if not (regexMatch "^[0-9]{1,5}$" $port) }}
{{- fail (printf "adminBind %q must end in :PORT" .Values.adminBind) }}
{{- end }}
{{- $port }}
{{- end }}
