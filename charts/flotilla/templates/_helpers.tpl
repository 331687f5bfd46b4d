{{/* Name of the chart, overridable. */}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name of the release's objects. */}}
{{- define "flotilla.fullname" -}}
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

{{/* Labels on every object of the chart. */}}
{{- define "flotilla.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "flotilla.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels selecting the operator pods. */}}
{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "flotilla.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flotilla.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Lease the replicas elect a leader through. */}}
{{- define "flotilla.leaseName" -}}
{{- default (printf "%s-leader" (include "flotilla.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "flotilla.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Rules the operator needs on the resources it manages, in every watched namespace: its two
custom resources (read, status writes, and ComputeClusters it creates for ComputeJobs), and the
pods, Services, Secrets and Events it creates. `finalizers` lets it set blockOwnerDeletion on
the owner references of its children.
*/}}
{{- define "flotilla.workloadRules" -}}
{{- /* What the controllers do, and no more: they never write a spec, never delete a Service or a
Secret (the garbage collector does, through owner references), and patch pods only to mark a
worker as draining. The job controller creates and deletes a job's own ComputeCluster, patches a
job's metadata for its finalizer, and deletes a job whose ttlSecondsAfterFinished passed. */ -}}
- apiGroups: ["flotilla.dev"]
  resources: ["computeclusters"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["flotilla.dev"]
  resources: ["computejobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["flotilla.dev"]
  resources: ["computeclusters/status", "computejobs/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["flotilla.dev"]
  # Owner references with blockOwnerDeletion need this where that admission plugin is on.
  resources: ["computeclusters/finalizers", "computejobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
