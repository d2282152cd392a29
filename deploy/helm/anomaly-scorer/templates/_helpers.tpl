{{/* Names and labels. */}}
{{- define "anomaly-scorer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "anomaly-scorer.fullname" -}}
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

{{- define "anomaly-scorer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anomaly-scorer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "anomaly-scorer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "anomaly-scorer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: anomaly-gan
{{- end -}}

{{/* Settings the templates share, with the service's defaults where a key is unset. */}}
{{- define "anomaly-scorer.metricsPort" -}}
{{- if hasKey .Values.serve "metrics_port" }}{{ int .Values.serve.metrics_port }}{{ else }}9108{{ end -}}
{{- end -}}

{{- define "anomaly-scorer.shutdownTimeout" -}}
{{- if hasKey .Values.serve "shutdown_timeout_s" }}{{ float64 .Values.serve.shutdown_timeout_s }}{{ else }}10{{ end -}}
{{- end -}}

{{- define "anomaly-scorer.modelPath" -}}
{{- if .Values.model.path }}{{ clean (printf "%s/%s" .Values.model.mountPath .Values.model.path) }}{{ else }}{{ clean .Values.model.mountPath }}{{ end -}}
{{- end -}}

{{/* The metrics endpoint speaks HTTPS when the service has a certificate. */}}
{{- define "anomaly-scorer.metricsScheme" -}}
{{- if .Values.serve.metrics_certfile }}HTTPS{{ else }}HTTP{{ end -}}
{{- end -}}

{{/* The pod's grace period: longer than serve.shutdown_timeout_s, or the render fails. */}}
{{- define "anomaly-scorer.gracePeriod" -}}
{{- $shutdown := float64 (include "anomaly-scorer.shutdownTimeout" .) -}}
{{- $grace := 0 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $grace = add (int64 (ceil $shutdown)) (int64 .Values.shutdownMarginSeconds) -}}
{{- else -}}
{{- $grace = int64 .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- if not (gt (float64 $grace) $shutdown) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than serve.shutdown_timeout_s (%v): on SIGTERM the service finishes its batch, flushes its results and commits its offsets for up to shutdown_timeout_s, and Kubernetes kills it when the grace period ends. Raise terminationGracePeriodSeconds (or shutdownMarginSeconds), or leave it unset to get ceil(shutdown_timeout_s) + shutdownMarginSeconds" $grace $shutdown) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/* The Kafka client options: serve.kafka, plus the Secret's keys named in
kafka.secretOptions (OPTION_file = path) and kafka.secretPaths (OPTION = path). As YAML. */}}
{{- define "anomaly-scorer.kafkaOptions" -}}
{{- $secretOptions := .Values.kafka.secretOptions | default dict -}}
{{- $secretPaths := .Values.kafka.secretPaths | default dict -}}
{{- $options := deepCopy (.Values.serve.kafka | default dict) -}}
{{- $mount := trimSuffix "/" .Values.kafka.secretMountPath -}}
{{- range $option, $key := $secretOptions -}}
{{- $_ := set $options (printf "%s_file" $option) (printf "%s/%s" $mount $key) -}}
{{- end -}}
{{- range $option, $key := $secretPaths -}}
{{- $_ := set $options $option (printf "%s/%s" $mount $key) -}}
{{- end -}}
{{- toYaml $options -}}
{{- end -}}

{{/* One TOML value. Strings are JSON-quoted (JSON's escapes are TOML's); Helm reads every
number of a values file as a float, so whole numbers are written as integers (an integer
is also a valid float key); lists are arrays. TOML has no null. */}}
{{- define "anomaly-scorer.tomlValue" -}}
{{- $value := .value -}}
{{- if kindIs "string" $value -}}
{{- toJson $value -}}
{{- else if kindIs "bool" $value -}}
{{- $value -}}
{{- else if or (kindIs "int" $value) (kindIs "int64" $value) -}}
{{- $value -}}
{{- else if kindIs "float64" $value -}}
{{- if eq (floor $value) $value }}{{ int64 $value }}{{ else }}{{ $value }}{{ end -}}
{{- else if kindIs "slice" $value -}}
[{{ range $i, $item := $value }}{{ if $i }}, {{ end }}{{ include "anomaly-scorer.tomlValue" (dict "value" $item "key" $.key) }}{{ end }}]
{{- else -}}
{{- fail (printf "%s: a setting must be a string, number, boolean or list of them, not %s" .key (kindOf $value)) -}}
{{- end -}}
{{- end -}}

{{/* A TOML table: [name] and its keys, sorted. [serve.kafka] also takes librdkafka's
dotted property names (client = "confluent"), written as quoted keys. */}}
{{- define "anomaly-scorer.tomlTable" -}}
[{{ .name }}]
{{- $dotted := eq .name "serve.kafka" }}
{{- range $key, $value := .values }}
{{- if not (regexMatch (ternary "^[A-Za-z0-9_.]+$" "^[A-Za-z0-9_]+$" $dotted) $key) }}
{{- fail (printf "%s.%s: setting names are letters, digits and underscores%s" $.name $key (ternary " (and dots: librdkafka's names)" "" $dotted)) }}
{{- end }}
{{- if not (kindIs "invalid" $value) }}
{{ if contains "." $key }}{{ toJson $key }}{{ else }}{{ $key }}{{ end }} = {{ include "anomaly-scorer.tomlValue" (dict "value" $value "key" (printf "%s.%s" $.name $key)) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* config.toml: [serve], [serve.kafka] and [alarms]. */}}
{{- define "anomaly-scorer.configToml" -}}
{{- $serve := omit .Values.serve "kafka" -}}
{{- $_ := set $serve "model" (include "anomaly-scorer.modelPath" .) -}}
{{- $_ := set $serve "metrics_port" (int (include "anomaly-scorer.metricsPort" .)) -}}
{{- $kafka := fromYaml (include "anomaly-scorer.kafkaOptions" .) -}}
# Rendered by the anomaly-scorer chart from its values (serve, alarms, kafka.*).
{{ include "anomaly-scorer.tomlTable" (dict "name" "serve" "values" $serve) }}
{{- if $kafka }}

{{ include "anomaly-scorer.tomlTable" (dict "name" "serve.kafka" "values" $kafka) }}
{{- end }}
{{- if .Values.alarms }}

{{ include "anomaly-scorer.tomlTable" (dict "name" "alarms" "values" .Values.alarms) }}
{{- end }}
{{- end -}}

{{/* KEDA's Kafka scaler names for SASL mechanisms. */}}
{{- define "anomaly-scorer.kedaSasl" -}}
{{- $mechanisms := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" -}}
{{- $kafka := .Values.serve.kafka | default dict -}}
{{- $protocol := upper ($kafka.security_protocol | default "PLAINTEXT") -}}
{{- if has $protocol (list "SASL_SSL" "SASL_PLAINTEXT") -}}
{{- $mechanism := upper ($kafka.sasl_mechanism | default "") -}}
{{- if hasKey $mechanisms $mechanism -}}
{{- get $mechanisms $mechanism -}}
{{- else if not .Values.autoscaling.authenticationRef -}}
{{- fail (printf "serve.kafka.sasl_mechanism %q: the chart gives KEDA's Kafka scaler the credentials of PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 only; for another mechanism make a TriggerAuthentication yourself and name it in autoscaling.authenticationRef" ($kafka.sasl_mechanism | default "(unset)")) -}}
{{- end -}}
{{- else -}}
none
{{- end -}}
{{- end -}}

{{- define "anomaly-scorer.kedaTls" -}}
{{- $kafka := .Values.serve.kafka | default dict -}}
{{- if has (upper ($kafka.security_protocol | default "PLAINTEXT")) (list "SSL" "SASL_SSL") }}enable{{ else }}disable{{ end -}}
{{- end -}}

{{/* The TriggerAuthentication's references (YAML: secretTargetRef and configMapTargetRef
lists), from what the service itself is given. */}}
{{- define "anomaly-scorer.kedaAuthRefs" -}}
{{- $secretOptions := .Values.kafka.secretOptions | default dict -}}
{{- $secretPaths := .Values.kafka.secretPaths | default dict -}}
{{- $secret := .Values.kafka.existingSecret -}}
{{- $kafka := .Values.serve.kafka | default dict -}}
{{- $secretRefs := list -}}
{{- $configMapRefs := list -}}
{{- if ne (include "anomaly-scorer.kedaSasl" .) "none" -}}
{{- if hasKey $secretOptions "sasl_plain_username" -}}
{{- $secretRefs = append $secretRefs (dict "parameter" "username" "name" $secret "key" (get $secretOptions "sasl_plain_username")) -}}
{{- else if $kafka.sasl_plain_username -}}
{{- $configMapRefs = append $configMapRefs (dict "parameter" "username" "name" (include "anomaly-scorer.fullname" .) "key" "kafka-sasl-username") -}}
{{- end -}}
{{- if hasKey $secretOptions "sasl_plain_password" -}}
{{- $secretRefs = append $secretRefs (dict "parameter" "password" "name" $secret "key" (get $secretOptions "sasl_plain_password")) -}}
{{- else -}}
{{- fail "KEDA's Kafka scaler needs the SASL password too: put it in kafka.existingSecret and name its key in kafka.secretOptions.sasl_plain_password, or make a TriggerAuthentication yourself and name it in autoscaling.authenticationRef" -}}
{{- end -}}
{{- end -}}
{{- if eq (include "anomaly-scorer.kedaTls" .) "enable" -}}
{{- range $option, $parameter := dict "ssl_cafile" "ca" "ssl_certfile" "cert" "ssl_keyfile" "key" -}}
{{- if hasKey $secretPaths $option -}}
{{- $secretRefs = append $secretRefs (dict "parameter" $parameter "name" $secret "key" (get $secretPaths $option)) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $secretOptions "ssl_password" -}}
{{- $secretRefs = append $secretRefs (dict "parameter" "keyPassword" "name" $secret "key" (get $secretOptions "ssl_password")) -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "secretTargetRef" $secretRefs "configMapTargetRef" $configMapRefs) -}}
{{- end -}}

{{/* Rules the values must keep; each failure says what to change. */}}
{{- define "anomaly-scorer.validate" -}}
{{- $secretOptions := .Values.kafka.secretOptions | default dict -}}
{{- $secretPaths := .Values.kafka.secretPaths | default dict -}}
{{- $port := int (include "anomaly-scorer.metricsPort" .) -}}
{{- if eq $port 0 -}}
{{- fail "serve.metrics_port must be a fixed port (not 0): the probes, the Service and the ServiceMonitor use it" -}}
{{- end -}}
{{- if not (hasKey .Values.serve "dlq_topic") -}}
{{- fail "serve.dlq_topic is null, which Helm drops from the values, and the service would write dead letters to its default topic (records-dlq): set serve.dlq_topic to \"\" to turn dead letters off, or name the topic" -}}
{{- end -}}
{{- if hasKey .Values.serve "model" -}}
{{- fail "serve.model is set by the chart from model.mountPath and model.path: set those instead" -}}
{{- end -}}
{{- $host := lower (trimAll "[]" (toString (.Values.serve.metrics_host | default ""))) -}}
{{- if or (hasPrefix "127." $host) (eq $host "localhost") (eq $host "::1") (eq $host "0:0:0:0:0:0:0:1") -}}
{{- fail (printf "serve.metrics_host %q listens on the pod's loopback only, and the kubelet's probes and Prometheus connect to the pod's address: leave it unset (all interfaces)" $host) -}}
{{- end -}}
{{- /* Settings other objects are rendered from: an extraEnv override would change the
service and leave them as they were. */ -}}
{{- $endpoint := "the metrics endpoint, where the probes, the Service and the ServiceMonitor look" -}}
{{- $derived := dict
  "METRICS_PORT" $endpoint
  "METRICS_HOST" $endpoint
  "METRICS_CERTFILE" "the scheme (HTTP or HTTPS) of the probes, the Service's annotations and the ServiceMonitor"
  "SHUTDOWN_TIMEOUT_S" "the pod's terminationGracePeriodSeconds (which must outlast it)"
-}}
{{- if .Values.autoscaling.enabled -}}
{{- range $key := list "BOOTSTRAP_SERVERS" "GROUP_ID" "INPUT_TOPIC" "AUTO_OFFSET_RESET" -}}
{{- $_ := set $derived $key "KEDA's Kafka scaler (its lag query)" -}}
{{- end -}}
{{- if not .Values.autoscaling.authenticationRef -}}
{{- /* KEDA's credentials, unless a TriggerAuthentication of the user's own gives them */ -}}
{{- range $key := list "KAFKA_SECURITY_PROTOCOL" "KAFKA_SASL_MECHANISM" "KAFKA_SASL_PLAIN_USERNAME" "KAFKA_SASL_PLAIN_USERNAME_FILE" "KAFKA_SASL_PLAIN_PASSWORD" "KAFKA_SASL_PLAIN_PASSWORD_FILE" "KAFKA_SSL_CAFILE" "KAFKA_SSL_CERTFILE" "KAFKA_SSL_KEYFILE" "KAFKA_SSL_PASSWORD" "KAFKA_SSL_PASSWORD_FILE" -}}
{{- $_ := set $derived $key "the TriggerAuthentication of KEDA's Kafka scaler" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- $key := trimPrefix "ANOMALY_SERVE_" (toString .name) -}}
{{- if and (hasPrefix "ANOMALY_SERVE_" (toString .name)) (hasKey $derived $key) -}}
{{- $option := lower (trimSuffix "_FILE" (trimPrefix "KAFKA_" $key)) -}}
{{- $setting := ternary (printf "serve.kafka.%s" $option) (printf "serve.%s" (lower $key)) (hasPrefix "KAFKA_" $key) -}}
{{- $instead := $setting -}}
{{- if contains "PASSWORD" $key -}}
{{- $instead = printf "kafka.secretOptions.%s (its key in kafka.existingSecret)" $option -}}
{{- else if has $option (list "ssl_cafile" "ssl_certfile" "ssl_keyfile") -}}
{{- $instead = printf "%s, or kafka.secretPaths.%s" $setting $option -}}
{{- end -}}
{{- if hasPrefix "KAFKA_" $key -}}
{{- $instead = printf "%s, or name a TriggerAuthentication of your own in autoscaling.authenticationRef" $instead -}}
{{- end -}}
{{- fail (printf "extraEnv %s would change %s in the service alone: the chart renders %s from %s, and they would no longer agree; set %s instead" .name $setting (get $derived $key) $setting $instead) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.model.existingClaim) (not .Values.model.volume) -}}
{{- fail "the model needs a volume: set model.existingClaim (an existing PersistentVolumeClaim) or model.volume (any volume source)" -}}
{{- end -}}
{{- if and .Values.model.initContainer.enabled (not .Values.model.initContainer.image) -}}
{{- fail "model.initContainer.enabled needs model.initContainer.image (and its command)" -}}
{{- end -}}
{{- $kafka := .Values.serve.kafka | default dict -}}
{{- /* the names anomaly.config.is_secret_option takes for secrets */ -}}
{{- range $option, $value := $kafka -}}
{{- if and (regexMatch "(?i)password|secret|token|credential|^sasl_oauth|^sasl\\.oauthbearer|^ssl\\.key\\.pem$" $option) (not (hasSuffix "_file" $option)) -}}
{{- fail (printf "serve.kafka.%s would be written in clear into a ConfigMap: put it in the Secret kafka.existingSecret and name its key in kafka.secretOptions.%s" $option $option) -}}
{{- end -}}
{{- end -}}
{{- if and (or (hasKey $kafka "group_instance_id") (hasKey $kafka "group.instance.id")) (or .Values.autoscaling.enabled (ne (int64 .Values.replicaCount) 1)) -}}
{{- fail "serve.kafka.group_instance_id gives every pod of the Deployment the same static member id, and the broker fences all but one of them: leave it unset here (static membership needs an id of its own per pod, e.g. a StatefulSet's pod name)" -}}
{{- end -}}
{{- if and (or $secretOptions $secretPaths) (not .Values.kafka.existingSecret) -}}
{{- fail "kafka.secretOptions and kafka.secretPaths name keys of kafka.existingSecret: set kafka.existingSecret to the Secret's name" -}}
{{- end -}}
{{- range $option, $key := merge (dict) $secretOptions $secretPaths -}}
{{- if or (hasKey $kafka $option) (hasKey $kafka (printf "%s_file" $option)) -}}
{{- fail (printf "Kafka option %s is given twice: in serve.kafka and in kafka.secretOptions or kafka.secretPaths; keep one" $option) -}}
{{- end -}}
{{- end -}}
{{- range $option, $key := $secretOptions -}}
{{- if hasKey $secretPaths $option -}}
{{- fail (printf "Kafka option %s is in both kafka.secretOptions and kafka.secretPaths; keep one" $option) -}}
{{- end -}}
{{- end -}}
{{- $partitions := .Values.kafka.inputPartitions -}}
{{- if .Values.autoscaling.enabled -}}
{{- $partitions = required "kafka.inputPartitions is required with autoscaling.enabled: the partition count of serve.input_topic caps autoscaling.maxReplicas" $partitions -}}
{{- $max := .Values.autoscaling.maxReplicas | default $partitions -}}
{{- if gt (int64 $max) (int64 $partitions) -}}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.inputPartitions (%d): a replica beyond the input topic's partitions gets none, is never ready and sits idle. Lower autoscaling.maxReplicas, or add partitions to serve.input_topic and raise kafka.inputPartitions" (int64 $max) (int64 $partitions)) -}}
{{- end -}}
{{- if gt (int64 .Values.autoscaling.minReplicas) (int64 $max) -}}
{{- fail (printf "autoscaling.minReplicas (%d) exceeds autoscaling.maxReplicas (%d)" (int64 .Values.autoscaling.minReplicas) (int64 $max)) -}}
{{- end -}}
{{- $_ := include "anomaly-scorer.kedaSasl" . -}}
{{- $skipsHostname := or (eq (toString (get $kafka "ssl_check_hostname")) "false") (eq (lower (toString (get $kafka "ssl.endpoint.identification.algorithm"))) "none") -}}
{{- if and $skipsHostname (eq (include "anomaly-scorer.kedaTls" .) "enable") (not .Values.autoscaling.authenticationRef) -}}
{{- fail "serve.kafka turns the brokers' host-name check off, which the chart cannot tell KEDA's Kafka scaler: it would check the names, fail to connect and never scale. Use broker certificates whose names match, or name a TriggerAuthentication of your own in autoscaling.authenticationRef" -}}
{{- end -}}
{{- else if and (not (kindIs "invalid" $partitions)) (gt (int64 .Values.replicaCount) (int64 $partitions)) -}}
{{- fail (printf "replicaCount (%d) exceeds kafka.inputPartitions (%d): a replica beyond the input topic's partitions gets none, is never ready and sits idle" (int64 .Values.replicaCount) (int64 $partitions)) -}}
{{- end -}}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) -}}
{{- fail "podDisruptionBudget: set one of maxUnavailable and minAvailable (the other to null)" -}}
{{- end -}}
{{- $_ := include "anomaly-scorer.gracePeriod" . -}}
{{- end -}}

{{/* A monitoring file of the project, .file under files/ (a symbolic link into deploy/, so
that the file has one source; helm follows it), with its job="anomaly-scorer" selectors set
to metrics.serviceMonitor.job (.quote: how a double quote is written around the job in the
file). Raw text: the templates of Prometheus's annotations stay as they are. */}}
{{- define "anomaly-scorer.monitoringFile" -}}
{{- $ctx := .context -}}
{{- $text := $ctx.Files.Get (printf "files/%s" .file) -}}
{{- if not $text -}}
{{- fail (printf "files/%s is missing from the chart: it is a symbolic link to %s; use a checkout that keeps symbolic links (git config core.symlinks true), or the packaged chart" .file .source) -}}
{{- end -}}
{{- $job := $ctx.Values.metrics.serviceMonitor.job -}}
{{- replace (printf "job=%sanomaly-scorer%s" .quote .quote) (printf "job=%s%s%s" .quote $job .quote) $text -}}
{{- end -}}
