{{/*
Chart name, truncated to 63 characters (DNS-1123 label limit).
*/}}
{{- define "vargpt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. If the release name already contains the chart
name it is used as is.
*/}}
{{- define "vargpt.fullname" -}}
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

{{- define "vargpt.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vargpt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of the release (never add mutable values).
*/}}
{{- define "vargpt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vargpt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
Labels shared by every resource, except app.kubernetes.io/component.
*/}}
{{- define "vargpt.baseLabels" -}}
helm.sh/chart: {{ include "vargpt.chart" . }}
app.kubernetes.io/name: {{ include "vargpt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vargpt
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Common labels (worker component).
*/}}
{{- define "vargpt.labels" -}}
{{ include "vargpt.baseLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "vargpt.metricsServiceName" -}}
{{- printf "%s-metrics" (include "vargpt.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common annotations block (renders nothing when empty). Use with nindent.
*/}}
{{- define "vargpt.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "vargpt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vargpt.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Worker image reference: registry/repository:tag or @digest.
Default tag: "<appVersion>-<variant>".
*/}}
{{- define "vargpt.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion .Values.image.variant) .Values.image.tag -}}
{{- $repo := .Values.image.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry $repo }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}
{{- end }}

{{/*
Generic helper image: dict with registry/repository/tag, honouring global.imageRegistry.
*/}}
{{- define "vargpt.helperImage" -}}
{{- $registry := default .image.registry .global.imageRegistry -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository (toString .image.tag) -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (toString .image.tag) -}}
{{- end -}}
{{- end }}

{{- define "vargpt.imagePullSecrets" -}}
{{- $secrets := concat (.Values.global.imagePullSecrets | default list) (.Values.image.pullSecrets | default list) | uniq }}
{{- if $secrets }}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names of the generated ConfigMap / Secret. */}}
{{- define "vargpt.configMapName" -}}
{{- printf "%s-config" (include "vargpt.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "vargpt.secretName" -}}
{{- include "vargpt.fullname" . }}
{{- end }}

{{/* Secret + key holding the broker URL. */}}
{{- define "vargpt.amqp.secretName" -}}
{{- default (include "vargpt.secretName" .) .Values.amqp.existingSecret }}
{{- end }}
{{- define "vargpt.amqp.secretKey" -}}
{{- if .Values.amqp.existingSecret }}{{ .Values.amqp.existingSecretKey }}{{ else }}amqp-url{{ end }}
{{- end }}

{{/* True (non-empty) when the worker gets static S3 keys from a Secret. */}}
{{- define "vargpt.s3.hasCredentials" -}}
{{- if or .Values.s3.existingSecret .Values.s3.accessKeyId }}true{{ end }}
{{- end }}
{{- define "vargpt.s3.secretName" -}}
{{- default (include "vargpt.secretName" .) .Values.s3.existingSecret }}
{{- end }}
{{- define "vargpt.s3.accessKeyIdKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecretAccessKeyIdKey }}{{ else }}aws-access-key-id{{ end }}
{{- end }}
{{- define "vargpt.s3.secretAccessKeyKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecretSecretAccessKeyKey }}{{ else }}aws-secret-access-key{{ end }}
{{- end }}

{{/* True (non-empty) when the chart must create its own Secret. */}}
{{- define "vargpt.createSecret" -}}
{{- if or (not .Values.amqp.existingSecret) (and .Values.s3.accessKeyId (not .Values.s3.existingSecret)) }}true{{ end }}
{{- end }}

{{/* Where the worker computes: "cuda" with gpu.enabled, else "cpu" (for NOTES). */}}
{{- define "vargpt.device" -}}
{{- if .Values.gpu.enabled }}cuda{{ else }}cpu{{ end }}
{{- end }}

{{/*
GPU ordinals of the tensor-parallel ranks (VARGPT_DEVICES): 0..TP-1, i.e. every
GPU the device plugin gave the pod. Without it the worker runs on the CPU.
*/}}
{{- define "vargpt.devices" -}}
{{- join "," (until (int .Values.worker.tensorParallel)) }}
{{- end }}

{{/* The worker's queues, all derived from VARGPT_QUEUE_PREFIX. */}}
{{- define "vargpt.jobQueue" -}}
{{- printf "%s.jobs" .Values.worker.queuePrefix }}
{{- end }}
{{- define "vargpt.deadLetterQueue" -}}
{{- printf "%s.dead" .Values.worker.queuePrefix }}
{{- end }}

{{/* Jobs a worker holds at once (VARGPT_MAX_BATCH): null = the worker's default, 32 on GPUs, 8 on CPU. */}}
{{- define "vargpt.maxBatch" -}}
{{- if kindIs "invalid" .Values.worker.maxBatch }}{{ if .Values.gpu.enabled }}32{{ else }}8{{ end }}{{ else }}{{ int .Values.worker.maxBatch }}{{ end }}
{{- end }}

{{/* True (non-empty) when the model is a hub id, not a path. */}}
{{- define "vargpt.model.isHubId" -}}
{{- if not (hasPrefix "/" .Values.model.source) }}true{{ end }}
{{- end }}

{{/* terminationGracePeriodSeconds: always longer than the longest job. */}}
{{- define "vargpt.terminationGracePeriodSeconds" -}}
{{- if not (kindIs "invalid" .Values.worker.terminationGracePeriodSeconds) }}
{{- int .Values.worker.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int .Values.worker.maxJobDurationSeconds) (int .Values.worker.terminationGraceBufferSeconds) }}
{{- end }}
{{- end }}

{{/* Model cache volume claim name. */}}
{{- define "vargpt.modelCache.claimName" -}}
{{- default (printf "%s-model-cache" (include "vargpt.fullname" .)) .Values.model.cache.persistence.existingClaim }}
{{- end }}

{{/*
Fail early on inconsistent values (rendered from the Deployment).
*/}}
{{- define "vargpt.validateValues" -}}
{{- /* Misspelt or renamed keys (e.g. the draft's worker.jobQueue) are refused by values.schema.json. */}}
{{- if and (eq (toJson .Values.worker.command) (toJson (list "vargpt-worker"))) (ne (first (default (list "") .Values.worker.args)) "serve") }}
{{- fail (printf "worker.args must start with the subcommand serve (vargpt-worker serve), got %v" .Values.worker.args) }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9._-]+$" (toString .Values.worker.queuePrefix)) }}
{{- fail "worker.queuePrefix must be [A-Za-z0-9._-]+" }}
{{- end }}
{{- $tp := int .Values.worker.tensorParallel }}
{{- if lt $tp 1 }}
{{- fail "worker.tensorParallel must be >= 1" }}
{{- end }}
{{- if and (gt $tp 1) (not .Values.gpu.enabled) }}
{{- fail (printf "worker.tensorParallel=%d needs gpu.enabled=true (one GPU per tensor-parallel rank)" $tp) }}
{{- end }}
{{- if and .Values.gpu.enabled (ne .Values.image.variant "cuda") (not .Values.image.tag) (not .Values.image.digest) }}
{{- fail "gpu.enabled=true needs the CUDA image: set image.variant=cuda (or an explicit image.tag/digest)" }}
{{- end }}
{{- if and (eq .Values.image.variant "cuda") (not .Values.gpu.enabled) }}
{{- fail "image.variant=cuda needs gpu.enabled=true: the CUDA image runs the worker on GPU 0 (VARGPT_CUDA_DEVICE=0)" }}
{{- end }}
{{- if le (int (include "vargpt.terminationGracePeriodSeconds" .)) (int .Values.worker.maxJobDurationSeconds) }}
{{- fail "worker.terminationGracePeriodSeconds must be greater than worker.maxJobDurationSeconds so in-flight jobs can finish" }}
{{- end }}
{{- if and .Values.model.prefetch.enabled (hasPrefix "/" .Values.model.source) }}
{{- fail "model.prefetch.enabled needs model.source to be a Hugging Face hub id, not a path" }}
{{- end }}
{{- if and .Values.model.prefetch.enabled .Values.model.cache.persistence.enabled .Values.model.cache.persistence.readOnly }}
{{- fail "model.prefetch.enabled cannot write into a read-only model cache (model.cache.persistence.readOnly)" }}
{{- end }}
{{- if and .Values.autoscaling.keda.enabled (gt (int .Values.autoscaling.keda.minReplicaCount) (int .Values.autoscaling.keda.maxReplicaCount)) }}
{{- fail "autoscaling.keda.minReplicaCount must not exceed maxReplicaCount" }}
{{- end }}
{{- if and .Values.autoscaling.keda.enabled (eq .Values.autoscaling.keda.rabbitmq.protocol "http") (not .Values.autoscaling.keda.rabbitmq.hostSecret.name) }}
{{- fail "autoscaling.keda.rabbitmq.protocol=http needs hostSecret.name/key pointing at a management API URL" }}
{{- end }}
{{- if and .Values.s3.accessKeyId (not .Values.s3.secretAccessKey) }}
{{- fail "s3.accessKeyId is set but s3.secretAccessKey is empty" }}
{{- end }}
{{- if not (or (hasPrefix "amqp://" .Values.amqp.url) (hasPrefix "amqps://" .Values.amqp.url) .Values.amqp.existingSecret) }}
{{- fail "amqp.url must start with amqp:// or amqps:// (or set amqp.existingSecret)" }}
{{- end }}
{{- end }}
