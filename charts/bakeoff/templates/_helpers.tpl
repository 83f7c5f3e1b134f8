{{/*
bakeoff.name: the chart name, or nameOverride; truncated to 63 characters because
Kubernetes label values and DNS-1123 labels stop there.
*/}}
{{- define "bakeoff.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
bakeoff.fullname: the prefix of every object this chart names. fullnameOverride wins;
otherwise "<release>-<chart>", collapsed to "<release>" when the release name already
contains the chart name (helm install bakeoff ... gives "bakeoff", not "bakeoff-bakeoff").
Truncated to 63 characters; suffixed names below truncate again.
*/}}
{{- /* The discovery ClusterRole(Binding): the full name with a suffix, still 63 at most. */}}
{{- define "bakeoff.discoveryName" -}}
{{- printf "%s-discovery" (include "bakeoff.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{- define "bakeoff.fullname" -}}
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

{{/*
bakeoff.chart: "name-version" for the helm.sh/chart label ("+" is not allowed in labels).
*/}}
{{- define "bakeoff.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
bakeoff.selectorLabels: the immutable subset of labels that the Deployment selects its pods
and the Service its endpoints by. Never add to it: a Deployment's selector cannot change.
*/}}
{{- define "bakeoff.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bakeoff.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
bakeoff.labels: the recommended app.kubernetes.io labels, put on every object.
*/}}
{{- define "bakeoff.labels" -}}
helm.sh/chart: {{ include "bakeoff.chart" . }}
{{ include "bakeoff.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bakeoff
{{- end }}

{{/*
bakeoff.serviceAccountName: the operator's ServiceAccount, created or brought by the user.
*/}}
{{- define "bakeoff.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bakeoff.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "ERROR: serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
bakeoff.watchNamespaces: the namespaces a namespaced-mode operator watches, as a list
(serialized with toJson, since a define returns a string). Empty watch.namespaces means the
release namespace.
*/}}
{{- define "bakeoff.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- toJson (uniq .Values.watch.namespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/*
bakeoff.image: "repository:tag" or "repository@digest" for the operator image; the tag
defaults to the chart's appVersion so that chart and operator move together.
*/}}
{{- define "bakeoff.image" -}}
{{- $image := .Values.operator.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
bakeoff.validate: `fail` on values that contradict each other, with an ERROR line that says
which ones and what to do. Rendered once, from NOTES.txt's first line and the Deployment.
*/}}
{{- define "bakeoff.validate" -}}
{{- if and .Values.watch.clusterWide .Values.watch.namespaces }}
{{- fail (printf "ERROR: watch.clusterWide=true watches every namespace, but watch.namespaces=%s names some: set one or the other" (toJson .Values.watch.namespaces)) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "ERROR: metrics.serviceMonitor.enabled=true needs metrics.enabled=true (the ServiceMonitor scrapes the metrics Service)" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.operator.healthPort) }}
{{- fail (printf "ERROR: metrics.port and operator.healthPort are both %d: the metrics exporter and kopf's liveness endpoint need different ports" (int .Values.metrics.port)) }}
{{- end }}
{{- if and (hasKey .Values.operator.podSecurityContext "runAsUser") (eq (int .Values.operator.podSecurityContext.runAsUser) 0) }}
{{- fail "ERROR: operator.podSecurityContext.runAsUser=0 contradicts runAsNonRoot (the restricted Pod Security Standard): pick a non-zero UID" }}
{{- end }}
{{- end }}
