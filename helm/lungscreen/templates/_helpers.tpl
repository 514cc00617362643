{{/* Names: kept short, the DaskJob name (fullname + run id + attempt) must stay under 53 characters. */}}
{{- define "lungscreen.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 24 | trimSuffix "-" -}}
{{- end -}}

{{- define "lungscreen.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 24 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 24 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 24 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lungscreen.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lungscreen.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lungscreen.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "lungscreen.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lungscreen
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pods that may call Triton carry this label (the NetworkPolicy admits only them). */}}
{{- define "lungscreen.tritonClientLabel" -}}
lungscreen.io/triton-client: {{ .Release.Name | quote }}
{{- end -}}

{{- define "lungscreen.image" -}}
{{- $img := index .root.Values.images .which -}}
{{- $tag := $img.tag | default (printf "%s%s" .root.Chart.AppVersion (.suffix | default "")) -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}

{{/* The hardened container securityContext every container of the chart uses. */}}
{{- define "lungscreen.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "lungscreen.tritonService" -}}
{{- printf "%s-triton" (include "lungscreen.fullname" .) -}}
{{- end -}}

{{- define "lungscreen.tritonGrpc" -}}
{{- printf "%s.%s.svc:%d" (include "lungscreen.tritonService" .) .Release.Namespace (int .Values.triton.service.ports.grpc) -}}
{{- end -}}

{{- define "lungscreen.pushgatewayUrl" -}}
{{- if .Values.monitoring.pushgateway.enabled -}}
{{- printf "http://%s-pushgateway.%s.svc:9091" (include "lungscreen.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.monitoring.pushgateway.url -}}
{{- end -}}
{{- end -}}

{{- define "lungscreen.modelRepositoryClaim" -}}
{{- .Values.triton.modelRepository.pvc.existingClaim | default (printf "%s-models" (include "lungscreen.fullname" .)) -}}
{{- end -}}

{{- define "lungscreen.outputsClaim" -}}
{{- .Values.screening.outputs.pvc.existingClaim | default (printf "%s-outputs" (include "lungscreen.fullname" .)) -}}
{{- end -}}

{{/* Triton's s3 URL: s3://bucket/prefix, or s3://https://host:port/bucket/prefix for other S3 stores. */}}
{{- define "lungscreen.tritonS3Url" -}}
{{- $s3 := .Values.triton.modelRepository.s3 -}}
{{- if $s3.endpoint -}}
{{- printf "s3://%s/%s" (trimSuffix "/" $s3.endpoint) (trimPrefix "s3://" $s3.url) -}}
{{- else -}}
{{- $s3.url -}}
{{- end -}}
{{- end -}}

{{/* AWS credentials from an existing Secret, plus the non-secret region/endpoint. */}}
{{- define "lungscreen.awsEnv" -}}
{{- if .secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ .secret | quote }}, key: AWS_ACCESS_KEY_ID}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ .secret | quote }}, key: AWS_SECRET_ACCESS_KEY}}
- name: AWS_SESSION_TOKEN
  valueFrom: {secretKeyRef: {name: {{ .secret | quote }}, key: AWS_SESSION_TOKEN, optional: true}}
{{- end }}
{{- if .region }}
- name: AWS_DEFAULT_REGION
  value: {{ .region | quote }}
{{- end }}
{{- if .endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ .endpoint | quote }}
{{- end }}
{{- end -}}
