{{/*
The worker pod spec (used by the StatefulSet).
*/}}
{{- define "learnstream.pod" -}}
serviceAccountName: {{ include "learnstream.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
containers:
  - name: worker
    image: {{ include "learnstream.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    {{- with .Values.securityContext }}
    securityContext:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    ports:
      - name: http
        containerPort: {{ .Values.learnstream.webPort }}
        protocol: TCP
    envFrom:
      - configMapRef:
          name: {{ include "learnstream.fullname" . }}
      {{- with .Values.extraEnvFrom }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    env:
      - name: POD_NAME
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      - name: POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
      # Static group membership: the pod name (stable in a StatefulSet) is the consumer's
      # group.instance.id, so a restarted pod gets its partitions back without a rebalance.
      - name: LEARNSTREAM_WORKER_ID
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      # The address other workers forward a session's requests to (faust's canonical URL).
      {{- if eq .Values.learnstream.advertise "podIP" }}
      - name: LEARNSTREAM_WEB_HOST
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
      {{- else }}
      - name: LEARNSTREAM_WEB_HOST
        value: {{ printf "$(POD_NAME).%s.$(POD_NAMESPACE).svc.%s" (include "learnstream.headlessName" .) .Values.clusterDomain | quote }}
      {{- end }}
      # Secrets (SASL credentials, API tokens, keys) are mounted as files, never passed as env.
      {{- with .Values.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    startupProbe:
      httpGet:
        path: /health
        port: http
        scheme: {{ include "learnstream.scheme" . }}
      {{- toYaml .Values.startupProbe | nindent 6 }}
    livenessProbe:
      httpGet:
        path: /health
        port: http
        scheme: {{ include "learnstream.scheme" . }}
      {{- toYaml .Values.livenessProbe | nindent 6 }}
    readinessProbe:
      httpGet:
        path: /ready
        port: http
        scheme: {{ include "learnstream.scheme" . }}
      {{- toYaml .Values.readinessProbe | nindent 6 }}
    {{- with .Values.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: data
        mountPath: {{ .Values.learnstream.dataDir }}
      - name: tmp
        mountPath: /tmp
      {{- if .Values.kafka.tls.caSecret }}
      - name: kafka-ca
        mountPath: {{ include "learnstream.caDir" . }}
        readOnly: true
      {{- end }}
      {{- if .Values.kafka.tls.certSecret }}
      - name: kafka-client
        mountPath: {{ include "learnstream.certDir" . }}
        readOnly: true
      {{- end }}
      {{- if .Values.kafka.sasl.mechanism }}
      - name: kafka-sasl
        mountPath: {{ include "learnstream.saslDir" . }}
        readOnly: true
      {{- end }}
      {{- if eq .Values.auth.mode "tokens" }}
      - name: api
        mountPath: {{ include "learnstream.apiDir" . }}
        readOnly: true
      {{- end }}
      {{- if .Values.tls.secret }}
      - name: web-tls
        mountPath: {{ include "learnstream.webTlsDir" . }}
        readOnly: true
      {{- end }}
      {{- if .Values.scoring.apiKeySecret }}
      - name: scoring
        mountPath: {{ include "learnstream.scoringDir" . }}
        readOnly: true
      {{- end }}
      {{- with .Values.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: tmp
    emptyDir: {}
  {{- if not .Values.persistence.enabled }}
  # No volume claim: tables are rebuilt from the changelog topics on every start.
  - name: data
    emptyDir: {}
  {{- end }}
  {{- if .Values.kafka.tls.caSecret }}
  - name: kafka-ca
    secret:
      secretName: {{ .Values.kafka.tls.caSecret }}
      items:
        - key: {{ .Values.kafka.tls.caKey }}
          path: {{ .Values.kafka.tls.caKey }}
  {{- end }}
  {{- if .Values.kafka.tls.certSecret }}
  - name: kafka-client
    secret:
      secretName: {{ .Values.kafka.tls.certSecret }}
      defaultMode: 0440
      items:
        - key: {{ .Values.kafka.tls.certKey }}
          path: {{ .Values.kafka.tls.certKey }}
        - key: {{ .Values.kafka.tls.keyKey }}
          path: {{ .Values.kafka.tls.keyKey }}
  {{- end }}
  {{- if .Values.kafka.sasl.mechanism }}
  - name: kafka-sasl
    secret:
      secretName: {{ include "learnstream.kafkaSecretName" . }}
      defaultMode: 0440
      items:
        - key: {{ .Values.kafka.sasl.passwordKey }}
          path: {{ .Values.kafka.sasl.passwordKey }}
        {{- if and .Values.kafka.sasl.existingSecret .Values.kafka.sasl.usernameKey }}
        - key: {{ .Values.kafka.sasl.usernameKey }}
          path: {{ .Values.kafka.sasl.usernameKey }}
        {{- end }}
  {{- end }}
  {{- if eq .Values.auth.mode "tokens" }}
  # Mounted whole (no subPath), so a rotated Secret reaches the pod and the worker re-reads it.
  - name: api
    secret:
      secretName: {{ include "learnstream.apiSecretName" . }}
      defaultMode: 0440
      items:
        - key: {{ .Values.auth.tokensKey }}
          path: {{ .Values.auth.tokensKey }}
        - key: {{ .Values.auth.peerTokenKey }}
          path: {{ .Values.auth.peerTokenKey }}
  {{- end }}
  {{- if .Values.tls.secret }}
  - name: web-tls
    secret:
      secretName: {{ .Values.tls.secret }}
      defaultMode: 0440
  {{- end }}
  {{- if .Values.scoring.apiKeySecret }}
  - name: scoring
    secret:
      secretName: {{ .Values.scoring.apiKeySecret }}
      defaultMode: 0440
      items:
        - key: {{ .Values.scoring.apiKeyKey }}
          path: {{ .Values.scoring.apiKeyKey }}
  {{- end }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
