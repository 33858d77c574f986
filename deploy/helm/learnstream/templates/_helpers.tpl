{{/*
Chart name, at most 63 characters (a DNS label).
*/}}
{{- define "learnstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release name + chart name unless the release name already contains it; at most
63 characters because Kubernetes names are DNS labels.
*/}}
{{- /* At most 52 characters, not 63: the StatefulSet's pods get the label controller-revision-hash =
<name>-<10-character hash>, a label value of at most 63 (a longer name makes pods that cannot be created). */}}
{{- define "learnstream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The headless Service (the StatefulSet's serviceName): the suffix stays within 63 characters.
*/}}
{{- define "learnstream.headlessName" -}}
{{- printf "%s-headless" (include "learnstream.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "learnstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: immutable in a StatefulSet, so never the version or anything else that changes.
*/}}
{{- define "learnstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "learnstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The chart's own labels: the selector labels plus chart, version and manager (commonLabels and podLabels
may not set these).
*/}}
{{- define "learnstream.ownLabels" -}}
helm.sh/chart: {{ include "learnstream.chart" . }}
{{ include "learnstream.selectorLabels" . }}
app.kubernetes.io/version: {{ include "learnstream.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: learnstream
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Common labels: the chart's own labels plus commonLabels.
*/}}
{{- define "learnstream.labels" -}}
{{ include "learnstream.ownLabels" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Image tag: image.tag, else the chart's appVersion.
*/}}
{{- define "learnstream.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "learnstream.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "learnstream.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "learnstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "learnstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Secret holding the SASL credentials: the user's existingSecret or the chart's own.
*/}}
{{- define "learnstream.kafkaSecretName" -}}
{{- if .Values.kafka.sasl.existingSecret }}
{{- .Values.kafka.sasl.existingSecret }}
{{- else }}
{{- printf "%s-kafka" (include "learnstream.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
True when the chart creates the SASL Secret itself.
*/}}
{{- define "learnstream.createKafkaSecret" -}}
{{- if and .Values.kafka.sasl.mechanism (not .Values.kafka.sasl.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Where the TLS Secrets are mounted.
*/}}
{{- define "learnstream.caDir" -}}/etc/learnstream/kafka-ca{{- end }}
{{- define "learnstream.certDir" -}}/etc/learnstream/kafka-client{{- end }}
{{- define "learnstream.saslDir" -}}/etc/learnstream/kafka-sasl{{- end }}
{{- define "learnstream.apiDir" -}}/etc/learnstream/api{{- end }}
{{- define "learnstream.webTlsDir" -}}/etc/learnstream/web-tls{{- end }}
{{- define "learnstream.scoringDir" -}}/etc/learnstream/scoring{{- end }}

{{/*
The Secret with the API tokens file and the workers' own token.
*/}}
{{- define "learnstream.apiSecretName" -}}
{{- default (printf "%s-api" (include "learnstream.fullname" .)) .Values.auth.secret }}
{{- end }}

{{/*
HTTPS when the listener serves TLS (probes, ServiceMonitor).
*/}}
{{- define "learnstream.scheme" -}}
{{- if .Values.tls.secret }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/*
Checks the schema cannot express (relations between values). Included by the StatefulSet.
*/}}
{{- define "learnstream.validate" -}}
{{- $p := int .Values.learnstream.partitions }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) $p }}
{{- fail (printf "autoscaling.maxReplicas (%d) must be <= learnstream.partitions (%d): a consumer group member beyond the partition count gets no partition" (int .Values.autoscaling.maxReplicas) $p) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) must be <= autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and (eq .Values.autoscaling.mode "hpa") (not (or .Values.autoscaling.hpa.targetCPUUtilizationPercentage .Values.autoscaling.hpa.targetMemoryUtilizationPercentage)) }}
{{- fail "autoscaling.mode hpa needs autoscaling.hpa.targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- else if gt (int .Values.replicas) $p }}
{{- fail (printf "replicas (%d) must be <= learnstream.partitions (%d): a consumer group member beyond the partition count gets no partition" (int .Values.replicas) $p) }}
{{- end }}
{{- if and .Values.tls.secret (eq .Values.learnstream.advertise "podIP") }}
{{- fail "tls.secret needs learnstream.advertise podDNS: forwarding verifies the owner's certificate by the name it advertises, and a pod IP is in no certificate" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.auth.metricsPublic) (ne .Values.auth.mode "off") (not .Values.serviceMonitor.bearerTokenSecret) }}
{{- fail "serviceMonitor with auth.metricsPublic false needs serviceMonitor.bearerTokenSecret (a token Prometheus scrapes /metrics with; every scrape would get 401)" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (eq (toString $pdb.minAvailable) "") (eq (toString $pdb.maxUnavailable) "") }}
{{- fail "podDisruptionBudget needs minAvailable or maxUnavailable" }}
{{- end }}
{{- if $pdb.enabled }}
{{- $least := ternary (int .Values.autoscaling.minReplicas) (int .Values.replicas) .Values.autoscaling.enabled }}
{{- $min := toString $pdb.minAvailable }}
{{- /* Kubernetes rounds a percentage minAvailable up: 67% of 3 pods is 3, and no pod may go */}}
{{- $required := ternary (div (add (mul (int (trimSuffix "%" $min)) $least) 99) 100) (int $min) (hasSuffix "%" $min) }}
{{- if or (and (ne $min "") (ge $required $least)) (has (toString $pdb.maxUnavailable) (list "0" "0%")) }}
{{- fail (printf "podDisruptionBudget (minAvailable %s, maxUnavailable %s) would never allow an eviction with %d replicas: node drains would block; allow at least one pod down" $min (toString $pdb.maxUnavailable) $least) }}
{{- end }}
{{- end }}
{{- $own := include "learnstream.ownLabels" . | fromYaml }}
{{- range $key, $_ := merge (dict) (.Values.commonLabels | default dict) (.Values.podLabels | default dict) }}
{{- if hasKey $own $key }}
{{- fail (printf "label %s is the chart's own (commonLabels and podLabels may not set it: a selector label or a duplicate key)" $key) }}
{{- end }}
{{- end }}
{{- if eq (clean .Values.learnstream.dataDir) "/tmp" }}
{{- fail "learnstream.dataDir /tmp is where the pod's scratch emptyDir is mounted; choose another directory (default /data)" }}
{{- end }}
{{- $proto := .Values.kafka.securityProtocol }}
{{- $sasl := .Values.kafka.sasl }}
{{- if and (hasPrefix "SASL_" $proto) (not $sasl.mechanism) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.mechanism" $proto) }}
{{- end }}
{{- if and $sasl.mechanism (not (hasPrefix "SASL_" $proto)) }}
{{- fail (printf "kafka.sasl.mechanism %s needs kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL (is %s)" $sasl.mechanism $proto) }}
{{- end }}
{{- if $sasl.mechanism }}
{{- if and (not $sasl.existingSecret) (not $sasl.password) }}
{{- fail "kafka.sasl needs a password: set kafka.sasl.existingSecret (recommended) or kafka.sasl.password" }}
{{- end }}
{{- if and (not $sasl.username) (not (and $sasl.existingSecret $sasl.usernameKey)) }}
{{- fail "kafka.sasl needs a username: set kafka.sasl.username, or kafka.sasl.existingSecret with kafka.sasl.usernameKey" }}
{{- end }}
{{- end }}
{{- if and (or .Values.kafka.tls.caSecret .Values.kafka.tls.certSecret) (not (hasSuffix "SSL" $proto)) }}
{{- fail (printf "kafka.tls secrets need kafka.securityProtocol SSL or SASL_SSL (is %s)" $proto) }}
{{- end }}
{{- end }}
