{{/*
Alert rules (PrometheusRule spec). Job metrics: pipeline/metrics.py, pushed to the Pushgateway
(scraped with honorLabels, so they keep the run's labels and get this namespace). Triton
metrics: Triton's own nv_inference_* (job = the Triton Service, via the ServiceMonitor).
"Triton not ready" also uses kube-state-metrics (kube-prometheus-stack ships it).
tests/helm/ runs `promtool check rules` and `promtool test rules` on the rendered groups.
*/}}
{{- define "lungscreen.alertRules" -}}
{{- $r := .Values.monitoring.prometheusRule -}}
{{- $ns := .Release.Namespace -}}
{{- $triton := printf "namespace=%q, job=%q" $ns (include "lungscreen.tritonService" .) -}}
{{- $jobs := printf "namespace=%q" $ns -}}
{{- $q10 := printf "sum by (model) (rate(nv_inference_queue_duration_us{%s}[10m])) / sum by (model) (rate(nv_inference_request_success{%s}[10m]))" $triton $triton -}}
{{- $q1h := printf "sum by (model) (rate(nv_inference_queue_duration_us{%s}[1h] offset 10m)) / sum by (model) (rate(nv_inference_request_success{%s}[1h] offset 10m))" $triton $triton -}}
groups:
  - name: lungscreen-runs
    rules:
      - alert: LungscreenRunFailed
        expr: >-
          (lungscreen_run_success{ {{- $jobs -}} } == 0)
          and (lungscreen_run_end_timestamp_seconds{ {{- $jobs -}} } > 0)
          and (time() - lungscreen_run_end_timestamp_seconds{ {{- $jobs -}} } < {{ $r.runFailedWindowSeconds }})
        labels:
          severity: critical
        annotations:
          summary: "Screening run failed"
          description: "A lungscreen run ended without writing every study. Check the runner pod's log and the failures-by-reason panel."
      - alert: LungscreenRunOverdue
        expr: >-
          (lungscreen_run_end_timestamp_seconds{ {{- $jobs -}} } == 0)
          and (time() - lungscreen_run_start_timestamp_seconds{ {{- $jobs -}} } > {{ .Values.screening.deadlineSeconds }})
        labels:
          severity: warning
        annotations:
          summary: "Screening run did not finish in time"
          description: "A lungscreen run started more than {{ .Values.screening.deadlineSeconds }} s ago and has not ended."
      - alert: LungscreenFailureRatioHigh
        expr: >-
          (
            sum without (status, reason) (lungscreen_studies_total{ {{- $jobs -}}, status="failed"})
            / sum without (status, reason) (lungscreen_studies_total{ {{- $jobs -}} })
            > {{ $r.failureRatio }}
          )
          and (sum without (status, reason) (lungscreen_studies_total{ {{- $jobs -}} }) >= {{ $r.failureRatioMinStudies }})
        labels:
          severity: warning
        annotations:
          summary: "Too many studies failed"
          description: "{{ "{{" }} $value | humanizePercentage {{ "}}" }} of a run's studies failed (threshold {{ $r.failureRatio }})."
  - name: lungscreen-triton
    rules:
      - alert: TritonNotReady
        expr: >-
          (kube_deployment_status_replicas_available{namespace={{ $ns | quote }}, deployment={{ include "lungscreen.tritonService" . | quote }}} < 1)
          or (up{ {{- $triton -}} } == 0)
        for: {{ $r.tritonNotReadyFor }}
        labels:
          severity: critical
        annotations:
          summary: "Triton is not ready"
          description: "No ready Triton pod (or its metrics endpoint is down): screening runs cannot infer."
      - alert: TritonQueueTimeRising
        expr: >-
          ({{ $q10 }} / 1000 > {{ $r.queueTimeMs }})
          and ({{ $q10 }} > {{ $r.queueRiseFactor }} * ({{ $q1h }}))
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "Triton queue time is rising"
          description: "Requests to {{ "{{" }} $labels.model {{ "}}" }} wait {{ "{{" }} $value | humanize {{ "}}" }} ms in Triton's queue, {{ $r.queueRiseFactor }}x more than over the last hour: add GPUs or lower the workers' concurrency."
{{- end -}}
