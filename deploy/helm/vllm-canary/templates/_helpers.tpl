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
{{- include "vllm-canary.loraArgs" (dict "root" $root "v" $v) }}
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
      {{- if $root.Values.loraAdapters.volume }}
      - name: lora-adapters
        mountPath: {{ $root.Values.loraAdapters.mountPath }}
        readOnly: true
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
  {{- with $root.Values.loraAdapters.volume }}
  - name: lora-adapters
    {{- toYaml . | nindent 4 }}
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

{{/* LoRA versions (`versions[].lora: {name, path, base}`) have no pods of their own: they are
adapters loaded on their base version's pods (default: the first version without `lora`). */}}
{{- define "vllm-canary.defaultLoraBase" -}}
{{- $b := "" -}}
{{- range .Values.versions }}{{ if and (not .lora) (not $b) }}{{ $b = .name }}{{ end }}{{ end -}}
{{ $b }}
{{- end -}}

{{/* The pod label `version` that serves version `name` (dict: root, name): its own, or its
LoRA base's. DestinationRule subsets select on it. */}}
{{- define "vllm-canary.podVersion" -}}
{{- $out := .name -}}
{{- range .root.Values.versions -}}
{{- if and (eq .name $.name) .lora -}}
{{- $out = default (include "vllm-canary.defaultLoraBase" $.root) .lora.base -}}
{{- end -}}
{{- end -}}
{{ $out }}
{{- end -}}

{{/* Header edits on the route destination of version `name` (dict: root, name), when any
version is a LoRA adapter: a LoRA version's sets `x-canary-version: <name>`, which the base's
front maps to the adapter; any other's removes a client's own (docs/lora.md). */}}
{{- define "vllm-canary.loraHeaders" -}}
{{- $any := false -}}
{{- range .root.Values.versions }}{{ if .lora }}{{ $any = true }}{{ end }}{{ end -}}
{{- range .root.Values.versions -}}
{{- if and (eq .name $.name) $any -}}
headers:
  request:
    {{- if .lora }}
    set:
      x-canary-version: {{ .name | quote }}
    {{- else }}
    remove:
      - x-canary-version
    {{- end }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* `--lora VERSION:NAME=PATH` for every LoRA version served by base version `v` (dict: root, v). */}}
{{- define "vllm-canary.loraArgs" -}}
{{- $root := .root -}}
{{- $v := .v -}}
{{- range $root.Values.versions -}}
{{- if .lora -}}
{{- if eq (default (include "vllm-canary.defaultLoraBase" $root) .lora.base) $v.name }}
- --lora
- {{ printf "%s:%s=%s" .name .lora.name .lora.path | quote }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Where per-version figures come from: "front" (the model servers' own vllm_* series, by
`version`) or "istio" (istio_* by destination_version, the pod's label). auto: front as soon as
a version is a LoRA adapter, whose requests Istio counts as the base's. */}}
{{- define "vllm-canary.versionMetrics" -}}
{{- $m := .Values.monitoring.versionMetrics | default "auto" -}}
{{- if eq $m "auto" -}}
{{- $m = "istio" -}}
{{- range .Values.versions }}{{ if .lora }}{{ $m = "front" }}{{ end }}{{ end -}}
{{- end -}}
{{ $m }}
{{- end -}}
