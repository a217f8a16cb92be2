{{/* Names, labels, images and shared pod settings. */}}

{{/* Expand the name of the chart. */}}
{{- define "visalign.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A fully qualified app name; truncated at 63 characters (DNS label limit), minus room for suffixes. */}}
{{- define "visalign.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version as used by the chart label. */}}
{{- define "visalign.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: only name and instance (immutable in Deployments, so nothing that changes).
     Each component is its own app: pass (dict "ctx" $ "component" "minio"). */}}
{{- define "visalign.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "visalign.name" .ctx) .component | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end }}

{{/* Common labels; pass (dict "ctx" $ "component" "minio"). */}}
{{- define "visalign.labels" -}}
helm.sh/chart: {{ include "visalign.chart" .ctx }}
{{ include "visalign.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: visalign
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* An image reference: repository@digest, or repository:tag. Pass (dict "repository" .. "tag" .. "digest" ..). */}}
{{- define "visalign.imageRef" -}}
{{- if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}
{{- end }}

{{/* visalign's CPU image. */}}
{{- define "visalign.image" -}}
{{- include "visalign.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{/* MLflow's image: visalign's CPU image unless mlflow.image says otherwise. */}}
{{- define "visalign.mlflowImage" -}}
{{- if .Values.mlflow.image.repository }}
{{- include "visalign.imageRef" (dict "repository" .Values.mlflow.image.repository "tag" (default .Chart.AppVersion .Values.mlflow.image.tag) "digest" "") }}
{{- else }}
{{- include "visalign.image" . }}
{{- end }}
{{- end }}

{{/* Object names. */}}
{{- define "visalign.minio.fullname" -}}{{ include "visalign.fullname" . }}-minio{{- end }}
{{- define "visalign.mlflow.fullname" -}}{{ include "visalign.fullname" . }}-mlflow{{- end }}
{{- define "visalign.postgresql.fullname" -}}{{ include "visalign.fullname" . }}-postgresql{{- end }}
{{- define "visalign.runnerServiceAccount" -}}{{ default (printf "%s-runner" (include "visalign.fullname" .)) .Values.pipelines.rbac.serviceAccountName }}{{- end }}

{{/* The Secret (release namespace) holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. */}}
{{- define "visalign.s3SecretName" -}}
{{- default (printf "%s-s3" (include "visalign.fullname" .)) .Values.objectStore.auth.existingSecret }}
{{- end }}

{{/* The Secret (release namespace) holding the database password under `password`. */}}
{{- define "visalign.dbSecretName" -}}
{{- default (printf "%s-db" (include "visalign.fullname" .)) .Values.mlflow.database.existingSecret }}
{{- end }}

{{/* The S3 endpoint URL as seen from inside the cluster. */}}
{{- define "visalign.s3Endpoint" -}}
{{- if eq .Values.objectStore.mode "internal" }}
{{- printf "http://%s.%s.svc.cluster.local:9000" (include "visalign.minio.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "objectStore.external.endpoint is required when objectStore.mode=external (e.g. https://s3.eu-west-1.amazonaws.com)" .Values.objectStore.external.endpoint }}
{{- end }}
{{- end }}

{{/* The MLflow tracking URI as seen from inside the cluster. */}}
{{- define "visalign.mlflowUri" -}}
{{- printf "http://%s.%s.svc.cluster.local:5000" (include "visalign.mlflow.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The pipeline root of the run namespace. */}}
{{- define "visalign.pipelineRoot" -}}
{{- printf "s3://%s/%s" .Values.objectStore.bucket (trimAll "/" .Values.pipelines.rootPrefix) }}
{{- end }}

{{/*
A generated credential that survives upgrades: the value already in the cluster (lookup), else
one random value per render, shared by every template that asks (kept in a dict on .Values, as
templates of one render share it). Pass (dict "ctx" $ "secret" NAME "key" KEY "length" N).
*/}}
{{- define "visalign.generated" -}}
{{- $store := .ctx.Values._generated | default dict }}
{{- $id := printf "%s/%s" .secret .key }}
{{- if not (hasKey $store $id) }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret }}
{{- $value := "" }}
{{- if and $existing (hasKey ($existing.data | default dict) .key) }}
{{- $value = index $existing.data .key | b64dec }}
{{- else }}
{{- $value = randAlphaNum (int .length) }}
{{- end }}
{{- $_ := set $store $id $value }}
{{- $_ := set .ctx.Values "_generated" $store }}
{{- end }}
{{- index $store $id }}
{{- end }}

{{/* Pod security context shared by every pod: non-root, RuntimeDefault seccomp. Pass the uid. */}}
{{- define "visalign.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context shared by every container. */}}
{{- define "visalign.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end }}

{{/* Env for a pod that talks to the object store (and MLflow) with the release namespace's Secret. */}}
{{- define "visalign.clientEnv" -}}
- name: AWS_ENDPOINT_URL
  value: {{ include "visalign.s3Endpoint" . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.objectStore.region | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "visalign.s3SecretName" . }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "visalign.s3SecretName" . }}, key: AWS_SECRET_ACCESS_KEY}
- name: MLFLOW_TRACKING_URI
  value: {{ include "visalign.mlflowUri" . | quote }}
- name: HOME
  value: /tmp
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
{{- end }}

{{/* Every rule the schema cannot express, reported with the values path and the fix. */}}
{{- define "visalign.validateValues" -}}
{{- if and (eq .Values.objectStore.mode "external") (not .Values.objectStore.external.endpoint) }}
{{- fail "objectStore.external.endpoint: required when objectStore.mode=external, e.g. https://s3.eu-west-1.amazonaws.com" }}
{{- end }}
{{- if and (eq .Values.objectStore.mode "external") (not .Values.objectStore.auth.existingSecret) }}
{{- fail "objectStore.auth.existingSecret: required when objectStore.mode=external (a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for that endpoint)" }}
{{- end }}
{{- if and (eq .Values.mlflow.database.mode "external") (not .Values.mlflow.database.external.host) }}
{{- fail "mlflow.database.external.host: required when mlflow.database.mode=external" }}
{{- end }}
{{- if and (eq .Values.mlflow.database.mode "external") (not .Values.mlflow.database.existingSecret) }}
{{- fail "mlflow.database.existingSecret: required when mlflow.database.mode=external (a Secret with the password under `password`)" }}
{{- end }}
{{- if and .Values.pipelines.createRunSecret .Values.objectStore.auth.existingSecret }}
{{- if not (lookup "v1" "Secret" .Release.Namespace .Values.objectStore.auth.existingSecret) }}
{{- if not (and (eq .Values.pipelines.runNamespace .Release.Namespace) (eq .Values.pipelines.names.s3Secret .Values.objectStore.auth.existingSecret)) }}
{{- fail (printf "pipelines.createRunSecret: cannot copy objectStore.auth.existingSecret %q (not found in %s, or rendering offline); create %q in %s yourself and set pipelines.createRunSecret=false" .Values.objectStore.auth.existingSecret .Release.Namespace .Values.pipelines.names.s3Secret .Values.pipelines.runNamespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
