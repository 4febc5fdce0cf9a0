{{/* Labels every object carries. */}}
{{- define "vllm-canary.labels" -}}
app.kubernetes.io/name: vllm-canary
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The Service's fully qualified name: Istio matches hosts by FQDN. */}}
{{- define "vllm-canary.fqdn" -}}
{{ .Values.service.name }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}
{{- end -}}

{{/* Pod labels of one version; the DestinationRule subsets select on `version`. */}}
{{- define "vllm-canary.podLabels" -}}
app: vllm
version: {{ .version }}
{{- end -}}

{{/* Container args of `vllm-canary serve` for one version (dict: root, v). */}}
{{- define "vllm-canary.serveArgs" -}}
{{- $root := .root -}}
{{- $v := .v -}}
- serve
- --version
- {{ $v.name | quote }}
- --engine
- {{ $root.Values.engine.name | quote }}
- --host
- "0.0.0.0"
- --port
- {{ $root.Values.service.port | quote }}
- --metrics-port
- {{ $root.Values.service.metricsPort | quote }}
{{- if $root.Values.persistence.enabled }}
- --log-dir
- {{ $root.Values.persistence.mountPath | quote }}
{{- end }}
- --model
- {{ default $root.Values.engine.model $v.model | quote }}
- --startup-timeout
- {{ $root.Values.engine.loadTimeoutSeconds | quote }}
{{- if eq $root.Values.engine.name "vllm" }}
- "--"
- --tensor-parallel-size
- {{ $root.Values.engine.tensorParallelSize | quote }}
- --max-model-len
- {{ $root.Values.engine.maxModelLen | quote }}
- --gpu-memory-utilization
- {{ $root.Values.engine.gpuMemoryUtilization | quote }}
{{- end }}
{{- range $root.Values.engine.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- range $v.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The pod spec of one version's model server (dict: root, v). */}}
{{- define "vllm-canary.podSpec" -}}
{{- $root := .root -}}
{{- $v := .v -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: 60
containers:
  - name: server
    image: "{{ $root.Values.image.repository }}:{{ default $root.Values.image.tag $v.imageTag }}"
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- include "vllm-canary.serveArgs" (dict "root" $root "v" $v) | nindent 6 }}
    env:
      - name: HF_HOME
        value: /models
    ports:
      - name: http-openai
        containerPort: {{ $root.Values.service.port }}
        protocol: TCP
      - name: http-metrics
        containerPort: {{ $root.Values.service.metricsPort }}
        protocol: TCP
    startupProbe:
      httpGet:
        path: /health
        port: http-openai
      periodSeconds: {{ $root.Values.probes.startup.periodSeconds }}
      failureThreshold: {{ div (add $root.Values.engine.loadTimeoutSeconds $root.Values.probes.startup.periodSeconds -1) $root.Values.probes.startup.periodSeconds }}
    readinessProbe:
      httpGet:
        path: /health
        port: http-openai
      periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
      timeoutSeconds: {{ $root.Values.probes.readiness.timeoutSeconds }}
      failureThreshold: {{ $root.Values.probes.readiness.failureThreshold }}
    livenessProbe:
      httpGet:
        path: /health
        port: http-openai
      periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
      timeoutSeconds: {{ $root.Values.probes.liveness.timeoutSeconds }}
      failureThreshold: {{ $root.Values.probes.liveness.failureThreshold }}
    resources:
      {{- toYaml (default $root.Values.resources $v.resources) | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: shm
        mountPath: /dev/shm
      - name: models
        mountPath: /models
      {{- if $root.Values.persistence.enabled }}
      - name: logs
        mountPath: {{ $root.Values.persistence.mountPath }}
      {{- end }}
volumes:
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $root.Values.shmSize }}
  - name: models
    emptyDir: {}
  {{- if $root.Values.persistence.enabled }}
  - name: logs
    persistentVolumeClaim:
      claimName: {{ $root.Values.persistence.claimName }}
  {{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The version entry named `name` (dict: root, name), as YAML. */}}
{{- define "vllm-canary.version" -}}
{{- range .root.Values.versions }}{{ if eq .name $.name }}{{ toYaml . }}{{ end }}{{ end -}}
{{- end -}}
