{{/*
The DaskJob one scheduled run creates. The launcher (files/launch_run.py) fills in the
placeholders: __NAME__ (the DaskJob, also its Dask cluster's name), __RUN_ID__ (derived from the
schedule time, so a retried run resumes) and __SCHEDULER__ (the run's Dask scheduler address).
*/}}
{{- define "lungscreen.daskjob" -}}
{{- $s := .Values.screening -}}
{{- $pvcOut := eq $s.outputs.type "pvc" -}}
{{- $aws := dict "secret" $s.credentialsSecret "region" $s.s3.region "endpoint" $s.s3.endpoint -}}
{{- $push := include "lungscreen.pushgatewayUrl" . -}}
apiVersion: kubernetes.dask.org/v1
kind: DaskJob
metadata:
  name: __NAME__
  labels:
    {{- include "lungscreen.labels" . | nindent 4 }}
    app.kubernetes.io/component: screening-run
    lungscreen.io/run-id: __RUN_ID__
spec:
  job:
    metadata:
      labels:
        {{- include "lungscreen.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/component: screening-runner
        {{- include "lungscreen.tritonClientLabel" . | nindent 8 }}
    spec:
      restartPolicy: Never
      activeDeadlineSeconds: {{ $s.deadlineSeconds }}
      {{- include "lungscreen.daskPodCommon" . | nindent 6 }}
      containers:
        - name: runner
          image: {{ include "lungscreen.image" (dict "root" . "which" "job") }}
          imagePullPolicy: {{ .Values.images.job.pullPolicy }}
          command: [lungscreen, screen]
          args:
            - {{ $s.source | quote }}
            - --out
            - {{ if $pvcOut }}/outputs/__RUN_ID__{{ else }}{{ printf "%s/__RUN_ID__" (trimSuffix "/" $s.outputs.s3.url) | quote }}{{ end }}
            {{- if $s.config }}
            - --config
            - /etc/lungscreen/job.yaml
            {{- end }}
            - --scheduler
            - __SCHEDULER__
            - --triton
            - {{ include "lungscreen.tritonGrpc" . }}
            - --run-id
            - __RUN_ID__
            - --metrics-port
            - {{ $s.metricsPort | quote }}
            {{- if $push }}
            - --pushgateway
            - {{ $push | quote }}
            {{- end }}
          env:
            {{- include "lungscreen.jobEnv" . | nindent 12 }}
            {{- include "lungscreen.awsEnv" $aws | nindent 12 }}
          ports:
            - {name: metrics, containerPort: {{ $s.metricsPort }}, protocol: TCP}
          securityContext:
            {{- include "lungscreen.containerSecurityContext" . | nindent 12 }}
          resources:
            {{- toYaml $s.runner.resources | nindent 12 }}
          volumeMounts:
            {{- include "lungscreen.jobMounts" . | nindent 12 }}
            {{- if $s.config }}
            - {name: config, mountPath: /etc/lungscreen, readOnly: true}
            {{- end }}
      volumes:
        {{- include "lungscreen.jobVolumes" . | nindent 8 }}
        {{- if $s.config }}
        - name: config
          configMap:
            name: {{ include "lungscreen.fullname" . }}-job-config
        {{- end }}
  cluster:
    spec:
      scheduler:
        metadata:
          labels:
            {{- include "lungscreen.selectorLabels" . | nindent 12 }}
            app.kubernetes.io/component: dask-scheduler
            {{- include "lungscreen.tritonClientLabel" . | nindent 12 }}
        spec:
          {{- include "lungscreen.daskPodCommon" . | nindent 10 }}
          containers:
            - name: scheduler
              image: {{ include "lungscreen.image" (dict "root" . "which" "job") }}
              imagePullPolicy: {{ .Values.images.job.pullPolicy }}
              command: [dask, scheduler]
              args: [--port, "8786", --dashboard-address, ":8787"]
              env:
                {{- include "lungscreen.jobEnv" . | nindent 16 }}
              ports:
                - {name: tcp-comm, containerPort: 8786, protocol: TCP}
                - {name: http-dashboard, containerPort: 8787, protocol: TCP}
              readinessProbe:
                httpGet: {path: /health, port: http-dashboard}
                initialDelaySeconds: 5
                periodSeconds: 10
              livenessProbe:
                httpGet: {path: /health, port: http-dashboard}
                initialDelaySeconds: 15
                periodSeconds: 20
              securityContext:
                {{- include "lungscreen.containerSecurityContext" . | nindent 16 }}
              resources:
                {{- toYaml $s.scheduler.resources | nindent 16 }}
              volumeMounts:
                - {name: tmp, mountPath: /tmp}
          volumes:
            - name: tmp
              emptyDir: {sizeLimit: 1Gi}
        service:
          type: ClusterIP
          selector:
            dask.org/cluster-name: __NAME__
            dask.org/component: scheduler
          ports:
            - {name: tcp-comm, protocol: TCP, port: 8786, targetPort: tcp-comm}
            - {name: http-dashboard, protocol: TCP, port: 8787, targetPort: http-dashboard}
      worker:
        replicas: {{ $s.workers.replicas }}
        metadata:
          labels:
            {{- include "lungscreen.selectorLabels" . | nindent 12 }}
            app.kubernetes.io/component: dask-worker
            {{- include "lungscreen.tritonClientLabel" . | nindent 12 }}
        spec:
          {{- include "lungscreen.daskPodCommon" . | nindent 10 }}
          {{- with $s.workers.nodeSelector }}
          nodeSelector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $s.workers.tolerations }}
          tolerations:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          containers:
            - name: worker
              image: {{ include "lungscreen.image" (dict "root" . "which" "job") }}
              imagePullPolicy: {{ .Values.images.job.pullPolicy }}
              command: [dask, worker]
              args:
                - --name
                - $(DASK_WORKER_NAME)
                - --nthreads
                - {{ $s.workers.threads | quote }}
                # auto: dask reads the container's cgroup memory limit.
                - --memory-limit
                - auto
                - --local-directory
                - /tmp/dask-worker
                - --dashboard-address
                - ":8788"
              env:
                {{- include "lungscreen.jobEnv" . | nindent 16 }}
                {{- include "lungscreen.awsEnv" $aws | nindent 16 }}
              ports:
                - {name: http-dashboard, containerPort: 8788, protocol: TCP}
              securityContext:
                {{- include "lungscreen.containerSecurityContext" . | nindent 16 }}
              resources:
                {{- toYaml $s.workers.resources | nindent 16 }}
              volumeMounts:
                {{- include "lungscreen.jobMounts" . | nindent 16 }}
          volumes:
            {{- include "lungscreen.jobVolumes" . | nindent 12 }}
{{- end -}}

{{- define "lungscreen.daskPodCommon" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Read-only root filesystem: everything that writes (dask, matplotlib, torch caches) goes to /tmp. */}}
{{- define "lungscreen.jobEnv" -}}
{{- /* Dask keeps its last N messages per connection, task arguments included; at its default
(1000) a scheduler holds about 1000 studies' index rows. Same value as pipeline.job.MESSAGE_LOG_LENGTH. */}}
- {name: DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH, value: "32"}
- {name: HOME, value: /tmp}
- {name: DASK_TEMPORARY_DIRECTORY, value: /tmp}
- {name: MPLCONFIGDIR, value: /tmp/matplotlib}
- {name: XDG_CACHE_HOME, value: /tmp/cache}
{{- end -}}

{{- define "lungscreen.jobMounts" -}}
- {name: tmp, mountPath: /tmp}
{{- if eq .Values.screening.outputs.type "pvc" }}
- {name: outputs, mountPath: /outputs}
{{- end }}
{{- if .Values.screening.cohortClaim }}
- {name: cohort, mountPath: /cohort, readOnly: true}
{{- end }}
{{- end -}}

{{- define "lungscreen.jobVolumes" -}}
- name: tmp
  emptyDir: {sizeLimit: 20Gi}
{{- if eq .Values.screening.outputs.type "pvc" }}
- name: outputs
  persistentVolumeClaim:
    claimName: {{ include "lungscreen.outputsClaim" . }}
{{- end }}
{{- if .Values.screening.cohortClaim }}
- name: cohort
  persistentVolumeClaim:
    claimName: {{ .Values.screening.cohortClaim }}
    readOnly: true
{{- end }}
{{- end -}}
