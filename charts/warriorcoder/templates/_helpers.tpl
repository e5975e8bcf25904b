{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "warriorcoder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "warriorcoder.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "warriorcoder.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The five services, in pipeline order. */}}
{{- define "warriorcoder.serviceNames" -}}
{{- list "challenger" "responder" "verifier" "judge" "aggregator" | toJson -}}
{{- end -}}

{{/* The services that may call Triton (the verifier calls no model and reaches only NATS). */}}
{{- define "warriorcoder.modelServiceNames" -}}
{{- list "challenger" "responder" "judge" "aggregator" | toJson -}}
{{- end -}}

{{/* Work stream and durable consumer of each consuming stage (proto/topology.py). */}}
{{- define "warriorcoder.consumers" -}}
{{- dict
    "responder" (dict "stream" "WARRIORCODER_V1_CHALLENGES" "consumer" "responder")
    "verifier" (dict "stream" "WARRIORCODER_V1_ANSWERED" "consumer" "verifier")
    "judge" (dict "stream" "WARRIORCODER_V1_BATTLES" "consumer" "judge")
    "aggregator" (dict "stream" "WARRIORCODER_V1_JUDGEMENTS" "consumer" "aggregator")
  | toJson -}}
{{- end -}}

{{/* Labels: call with (dict "ctx" $ "component" "judge"). */}}
{{- define "warriorcoder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "warriorcoder.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "warriorcoder.labels" -}}
helm.sh/chart: {{ include "warriorcoder.chart" .ctx }}
{{ include "warriorcoder.selectorLabels" . }}
app.kubernetes.io/part-of: warriorcoder
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "warriorcoder.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "warriorcoder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "warriorcoder.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Drain time of the services and the pod grace period above it. */}}
{{- define "warriorcoder.drainSeconds" -}}
{{- $service := default dict .Values.arena.service -}}
{{- $drain := 25 -}}
{{- if hasKey $service "drain_timeout_s" }}{{ $drain = $service.drain_timeout_s }}{{ end -}}
{{- ceil $drain -}}
{{- end -}}

{{- define "warriorcoder.gracePeriod" -}}
{{- $drain := include "warriorcoder.drainSeconds" . | int -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed arena.service.drain_timeout_s (%v)" .Values.terminationGracePeriodSeconds $drain) -}}
{{- end -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add (mul 2 $drain) 10 -}}
{{- end -}}
{{- end -}}

{{/* KEDA owns the replica count of a stage: call with (dict "ctx" $ "name" "judge"). */}}
{{- define "warriorcoder.kedaOn" -}}
{{- $svc := index .ctx.Values.services .name -}}
{{- if and .ctx.Values.keda.enabled $svc.autoscaling $svc.autoscaling.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Update strategy of a service's Deployment: call with (dict "ctx" $ "name" "aggregator").
RollingUpdate surges one pod, except for an aggregator whose samples claim only one node can
attach (persistence on and no ReadWriteMany): the surged pod could not mount it, so that one is
Recreate, and the values that would need two pods on that claim at once fail here.
*/}}
{{- define "warriorcoder.strategy" -}}
{{- $svc := index .ctx.Values.services .name -}}
{{- $type := "RollingUpdate" -}}
{{- if eq .name "aggregator" -}}
{{- $p := $svc.persistence -}}
{{- $oneNode := and $p.enabled (not (has "ReadWriteMany" $p.accessModes)) -}}
{{- $type = default (ternary "Recreate" "RollingUpdate" $oneNode) $svc.strategy -}}
{{- if $oneNode -}}
{{- $modes := join ", " $p.accessModes -}}
{{- if eq $type "RollingUpdate" -}}
{{- fail (printf "services.aggregator.strategy=RollingUpdate with persistence.accessModes [%s]: the surged pod cannot attach the claim the old pod holds; use Recreate (or leave strategy empty), or a ReadWriteMany volume" $modes) -}}
{{- end -}}
{{- if include "warriorcoder.kedaOn" . -}}
{{- if gt (int $svc.autoscaling.maxReplicas) 1 -}}
{{- fail (printf "services.aggregator.autoscaling.maxReplicas=%v with persistence.accessModes [%s]: a second aggregator pod cannot attach the claim; set maxReplicas 1 or use a ReadWriteMany volume" $svc.autoscaling.maxReplicas $modes) -}}
{{- end -}}
{{- else if gt (int $svc.replicas) 1 -}}
{{- fail (printf "services.aggregator.replicas=%v with persistence.accessModes [%s]: a second aggregator pod cannot attach the claim; set replicas 1 or use a ReadWriteMany volume" $svc.replicas $modes) -}}
{{- end -}}
{{- end -}}
{{- end -}}
type: {{ $type }}
{{- if eq $type "RollingUpdate" }}
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- end }}
{{- end -}}

{{- define "warriorcoder.natsSecretName" -}}
{{- default (printf "%s-nats-auth" (include "warriorcoder.fullname" .)) .Values.nats.auth.existingSecret -}}
{{- end -}}

{{/* Triton object name of a model key: call with (dict "ctx" $ "model" "qwen"). */}}
{{- define "warriorcoder.tritonName" -}}
{{- printf "%s-triton-%s" (include "warriorcoder.fullname" .ctx) (.model | lower | replace "_" "-" | replace "." "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Paths inside the services' config volume. */}}
{{- define "warriorcoder.configDir" -}}/etc/warriorcoder{{- end -}}

{{/*
The arena config: .Values.arena with the NATS URL and files, the metrics port and the Triton
endpoints of chart-managed models filled in. Rendered as JSON (which is YAML) so that numbers
keep their exact form (Helm's YAML writes 1000000 as 1e+06, which YAML 1.1 reads as a string).
*/}}
{{- define "warriorcoder.arenaConfig" -}}
{{- $arena := deepCopy .Values.arena -}}
{{- $dir := include "warriorcoder.configDir" . -}}
{{- if not (hasKey $arena "nats") }}{{ $_ := set $arena "nats" dict }}{{ end -}}
{{- $_ := set $arena.nats "url" .Values.nats.url -}}
{{- if eq .Values.nats.auth.type "creds" -}}
{{- $_ := set $arena.nats "creds_file" (printf "%s/nats/nats.creds" $dir) -}}
{{- else if not (has .Values.nats.auth.type (list "password" "none")) -}}
{{- fail (printf "nats.auth.type must be password, creds or none, not %q" .Values.nats.auth.type) -}}
{{- end -}}
{{- if .Values.nats.tls.enabled -}}
{{- if not .Values.nats.tls.caSecret -}}{{- fail "nats.tls.enabled needs nats.tls.caSecret" -}}{{- end -}}
{{- $_ := set $arena.nats "tls_ca_file" (printf "%s/nats-tls/ca.crt" $dir) -}}
{{- if .Values.nats.tls.clientCertSecret -}}
{{- $_ := set $arena.nats "tls_cert_file" (printf "%s/nats-tls/tls.crt" $dir) -}}
{{- $_ := set $arena.nats "tls_key_file" (printf "%s/nats-tls/tls.key" $dir) -}}
{{- end -}}
{{- end -}}
{{- if not (hasKey $arena "service") }}{{ $_ := set $arena "service" dict }}{{ end -}}
{{- $_ := set $arena.service "http_port" (int .Values.metrics.port) -}}
{{- /* The responders hand battles to the verifier exactly when the chart deploys it. */ -}}
{{- if not (hasKey $arena "verifier") }}{{ $_ := set $arena "verifier" dict }}{{ end -}}
{{- $verifies := .Values.services.verifier.enabled | default false -}}
{{- if and (hasKey $arena.verifier "enabled") (ne $arena.verifier.enabled $verifies) -}}
{{- fail "arena.verifier.enabled contradicts services.verifier.enabled (the chart sets it from that): set services.verifier.enabled instead" -}}
{{- end -}}
{{- $_ := set $arena.verifier "enabled" $verifies -}}
{{- range $key, $model := .Values.triton.models -}}
{{- if not (hasKey $arena.models $key) -}}
{{- fail (printf "triton.models.%s has no arena.models.%s to serve" $key $key) -}}
{{- end -}}
{{- $m := index $arena.models $key -}}
{{- /* balanced over the Triton pods by the client: the headless Service's addresses */ -}}
{{- $_ := set $m "triton_url" (printf "dns:///%s-headless:8001" (include "warriorcoder.tritonName" (dict "ctx" $ "model" $key))) -}}
{{- $_ := set $m "contract" (default "vllm" $model.contract) -}}
{{- $_ := set $m "triton_model" (required (printf "triton.models.%s.tritonModel is required" $key) $model.tritonModel) -}}
{{- end -}}
{{- toPrettyJson $arena -}}
{{- end -}}

{{/* Pod-level scheduling keys shared by the services. */}}
{{- define "warriorcoder.podScheduling" -}}
{{- with .ctx.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if .ctx.Values.topologySpreadConstraints }}
topologySpreadConstraints:
{{- range .ctx.Values.topologySpreadConstraints }}
  - {{ toYaml (merge (dict "labelSelector" (dict "matchLabels" (include "warriorcoder.selectorLabels" (dict "ctx" $.ctx "component" $.component) | fromYaml))) .) | nindent 4 | trim }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A NetworkPolicy peer from {namespaceSelector, podSelector}; no namespaceSelector means the
release namespace (an empty one would mean every namespace). */}}
{{- define "warriorcoder.peer" -}}
- podSelector:
    {{- toYaml (default dict .podSelector) | nindent 4 }}
  {{- with .namespaceSelector }}
  namespaceSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Environment of a service container: call with (dict "ctx" $ "name" "judge"). */}}
{{- define "warriorcoder.serviceEnv" -}}
{{- $auth := .ctx.Values.nats.auth -}}
{{- if eq $auth.type "password" }}
- name: WARRIORCODER__NATS__USER
  value: {{ (index $auth.users .name).user | quote }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "warriorcoder.natsSecretName" .ctx }}
      key: {{ .name }}-password
# Overrides are parsed as YAML: quote the password so that it stays a string.
- name: WARRIORCODER__NATS__PASSWORD
  value: "'$(NATS_PASSWORD)'"
{{- end }}
{{- with .ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with (index .ctx.Values.services .name).env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The vLLM model repository entry of a chart-managed Triton model: the data of its ConfigMap
(config.pbtxt and 1/model.json, the engine arguments with tensor_parallel_size = the pod's GPUs).
Call with (dict "key" $key "m" $model "tritonModel" $name "gpus" $gpus). Its checksum is on the
Triton pods, so they roll whenever the chart writes a different entry (values or template).
*/}}
{{- define "warriorcoder.tritonVllmRepository" -}}
config.pbtxt: |
  name: "{{ .tritonModel }}"
  backend: "vllm"
  max_batch_size: 0
  model_transaction_policy { decoupled: true }
  instance_group [ { count: 1, kind: KIND_MODEL } ]
  # vLLM's engine metrics (vllm:*) on Triton's /metrics, for the dashboard's vLLM row.
  parameters: { key: "REPORT_CUSTOM_METRICS" value: { string_value: "true" } }
model.json: |
  {{- $engine := merge (dict "model" (required (printf "triton.models.%s.model is required" .key) .m.model) "tensor_parallel_size" .gpus) (deepCopy (default dict .m.engineArgs)) (dict "gpu_memory_utilization" 0.9) }}
  {{- toPrettyJson $engine | nindent 2 }}
{{- end -}}
