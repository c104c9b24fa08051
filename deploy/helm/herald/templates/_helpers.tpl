{{/*
Names, labels and the table of Herald's components.
*/}}

{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "herald.fullname" -}}
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

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "router"). */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herald.componentLabels" -}}
{{ include "herald.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}

{{/*
The components, as the code defines them (read from each module's __main__ and settings):
  module        what `python -m` runs
  values        its key under .Values (replicas, resources, ...)
  http          an API: listens on hostEnv:portEnv and serves /healthz, /readyz and /metrics
                there (the health.py of each API, herald.webapi.install_metrics)
  metricsEnv    a worker: herald.metrics.serve_metrics serves /healthz, /readyz and /metrics on
                this port (127.0.0.1 only, see .Values.metrics.exposed)
  group         the consumer group after KAFKA_TOPIC_PREFIX (herald.sender.service.run_sender,
                services.inapp_store.settings.SERVICE, the router's Faust app id)
  lagTopics     what KEDA scales on: the group's input topics (by their key in
                .Values.kafka.topics.partitions), without the retry tiers (records wait there
                on purpose) and without the router's compacted tables
  secrets       the Secret keys the component gets (nothing more)
  optionalSecrets  Secret key -> its field under .Values.secrets, for optional settings: the
                key is passed (secretKeyRef optional: true) when that field is set or
                secrets.existingSecret is used
  stop          default terminationGracePeriodSeconds: what SIGTERM waits for (uvicorn's
                graceful timeout, a sender's batch budget of 120 s)
*/}}
{{- define "herald.components" -}}
ingest:
  module: services.ingest
  values: ingest
  http: true
  hostEnv: INGEST_HOST
  portEnv: HERALD_INGEST_PORT
  secrets: [HERALD_ADMIN_API_KEYS, HERALD_USER_TOKEN_SECRET, DATABASE_URL]
  stop: 45
read-api:
  module: services.inapp_store.api
  values: readApi
  http: true
  hostEnv: READ_API_HOST
  portEnv: HERALD_READ_API_PORT
  secrets: [HERALD_ADMIN_API_KEYS, HERALD_USER_TOKEN_SECRET, DATABASE_URL]
  stop: 30
router:
  module: services.router
  values: router
  metricsEnv: ROUTER_METRICS_PORT
  group: herald-router
  lagTopics: {events: herald.events.v1, recipients: herald.recipients.v1}
  secrets: [DATABASE_URL]
  stop: 60
email-sender:
  module: services.email_sender
  values: emailSender
  metricsEnv: EMAIL_SENDER_METRICS_PORT
  group: email_sender
  lagTopics: {deliveriesEmail: herald.deliveries.email.v1}
  secrets: [DATABASE_URL, SMTP_URL]
  optionalSecrets: {SMTP_FALLBACK_URLS: smtpFallbackUrls}
  stop: 150
sms-sender:
  module: services.sms_sender
  values: smsSender
  metricsEnv: SMS_SENDER_METRICS_PORT
  group: sms_sender
  lagTopics: {deliveriesSms: herald.deliveries.sms.v1}
  secrets: [DATABASE_URL, SMS_ACCOUNT_SID, SMS_AUTH_TOKEN]
  optionalSecrets: {SMS_API_FALLBACK_URLS: smsApiFallbackUrls}
  stop: 150
webhook-sender:
  module: services.webhook_sender
  values: webhookSender
  metricsEnv: WEBHOOK_SENDER_METRICS_PORT
  group: webhook_sender
  lagTopics: {deliveriesWebhook: herald.deliveries.webhook.v1}
  secrets: [DATABASE_URL]
  stop: 150
slack-sender:
  module: services.webhook_sender.slack
  values: slackSender
  metricsEnv: SLACK_SENDER_METRICS_PORT
  group: slack_sender
  lagTopics: {deliveriesSlack: herald.deliveries.slack.v1}
  secrets: [DATABASE_URL]
  stop: 150
inapp-store:
  module: services.inapp_store
  values: inappStore
  metricsEnv: INAPP_STORE_METRICS_PORT
  group: inapp_store
  lagTopics:
    notifications: herald.notifications.v1
    deliveriesInapp: herald.deliveries.inapp.v1
    deliveryStatus: herald.delivery-status.v1
  secrets: [DATABASE_URL]
  stop: 60
{{- end -}}

{{/*
A consumer's replica ceiling: the fewest partitions among its lag topics (more members than
partitions get none). Fails when replicaCount is above it. (dict "root" $ "def" $def)
*/}}
{{- define "herald.partitionCeiling" -}}
{{- $root := .root -}}
{{- $values := index $root.Values .def.values -}}
{{- $ceiling := 0 -}}
{{- range $key, $_ := .def.lagTopics -}}
{{- $count := int (required (printf "kafka.topics.partitions.%s is required" $key) (index $root.Values.kafka.topics.partitions $key)) -}}
{{- if or (eq $ceiling 0) (lt $count $ceiling) -}}
{{- $ceiling = $count -}}
{{- end -}}
{{- end -}}
{{- if gt (int $values.replicaCount) $ceiling -}}
{{- fail (printf "%s.replicaCount (%v) is above %d, the partition count of its topics: the extra consumers would get no partition" .def.values $values.replicaCount $ceiling) -}}
{{- end -}}
{{- $ceiling -}}
{{- end -}}

{{/* The Secret holding the credentials: the chart's own or .Values.secrets.existingSecret. */}}
{{- define "herald.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "herald.fullname" . -}}
{{- end -}}
{{- end -}}

{{/*
Non-secret settings every component (and the hook Job) reads: the ConfigMap's data, rendered
here once so that the hook Job, which runs before the ConfigMap exists, gets the same values.
*/}}
{{- define "herald.configData" -}}
{{- if hasKey (default (dict) .Values.config) "HERALD_ENDPOINTS_ALLOW_PRIVATE" -}}
{{- fail "config sets HERALD_ENDPOINTS_ALLOW_PRIVATE: it lets users' webhook and Slack endpoints reach loopback and private networks; never set it in a deployment" -}}
{{- end -}}
{{- $kafka := required "kafka.bootstrapServers is required: the Kafka bootstrap servers (host:port,host:port), e.g. herald-kafka-bootstrap.kafka:9092 for a Strimzi cluster named herald-kafka" .Values.kafka.bootstrapServers -}}
HERALD_ENV: {{ .Values.heraldEnv | quote }}
KAFKA_BOOTSTRAP_SERVERS: {{ $kafka | quote }}
KAFKA_TOPIC_PREFIX: {{ .Values.kafka.topicPrefix | quote }}
KAFKA_SESSION_TIMEOUT_MS: {{ .Values.kafka.sessionTimeoutMs | quote }}
DATABASE_SCHEMA: {{ .Values.database.schema | quote }}
EMAIL_FROM: {{ .Values.email.from | quote }}
SMS_API_URL: {{ .Values.sms.apiUrl | quote }}
SMS_FROM: {{ .Values.sms.from | quote }}
FORWARDED_ALLOW_IPS: {{ .Values.forwardedAllowIps | quote }}
PYTHONDONTWRITEBYTECODE: "1"
{{- range $key, $value := .Values.config }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Fail unless the credentials are there: the APIs refuse to start with the local stack's
well-known key and secret anywhere but on loopback (herald.auth.check_exposure), and a pod
listens on 0.0.0.0. Called by the Secret and by the Deployments.
*/}}
{{- define "herald.checkSecrets" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- $hint := "(or set secrets.existingSecret to a Secret of your own holding the keys HERALD_ADMIN_API_KEYS, HERALD_USER_TOKEN_SECRET, DATABASE_URL, SMTP_URL, SMS_ACCOUNT_SID and SMS_AUTH_TOKEN, optionally SMTP_FALLBACK_URLS and SMS_API_FALLBACK_URLS)" -}}
{{- $keys := required (printf "secrets.adminApiKeys is required: comma-separated API keys, each key=scope scope (scopes events:write, admin, inbox:read, inbox:write, tokens:mint), e.g. \"$PUBLISHER=events:write,$BACKOFFICE=admin inbox:read inbox:write\"; make a key with python -c 'import secrets; print(secrets.token_urlsafe(32))' %s" $hint) .Values.secrets.adminApiKeys -}}
{{- $token := required (printf "secrets.userTokenSecret is required: the HMAC secret of user tokens, at least 16 characters %s" $hint) .Values.secrets.userTokenSecret -}}
{{- $db := required (printf "secrets.databaseUrl is required: postgresql://USER:PASSWORD@HOST:5432/DATABASE %s" $hint) .Values.secrets.databaseUrl -}}
{{- if contains "herald-local-admin-key" $keys -}}
{{- fail "secrets.adminApiKeys holds the local stack's well-known key herald-local-admin-key: the APIs refuse it off loopback; make your own keys" -}}
{{- end -}}
{{- if or (eq $token "herald-local-user-token-secret") (lt (len $token) 16) -}}
{{- fail "secrets.userTokenSecret must be a secret of your own of at least 16 characters (not the local stack's herald-local-user-token-secret)" -}}
{{- end -}}
{{- if not (or (hasPrefix "postgresql://" $db) (hasPrefix "postgres://" $db) (hasPrefix "postgresql+psycopg://" $db)) -}}
{{- fail "secrets.databaseUrl must be a postgresql:// (or postgresql+psycopg://) URL" -}}
{{- end -}}
{{- if .Values.emailSender.enabled -}}
{{- $_ := required (printf "secrets.smtpUrl is required while emailSender.enabled: smtp+starttls://USER:PASSWORD@HOST:587 (schemes smtp, smtp+starttls, smtps) %s" $hint) .Values.secrets.smtpUrl -}}
{{- end -}}
{{- if .Values.smsSender.enabled -}}
{{- $_ := required (printf "secrets.smsAccountSid is required while smsSender.enabled %s" $hint) .Values.secrets.smsAccountSid -}}
{{- $_ := required (printf "secrets.smsAuthToken is required while smsSender.enabled %s" $hint) .Values.secrets.smsAuthToken -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
An HTTP GET of 127.0.0.1:port/path from inside the container, for a worker whose
/healthz and /readyz listen on loopback only: exits non-zero on a refused connection or on an
answer other than 2xx (urlopen raises on 503). (dict "port" 9402 "path" "/readyz")
*/}}
{{- define "herald.loopbackProbe" -}}
exec:
  command:
    - python
    - -c
    - "import sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:{{ .port }}{{ .path }}', timeout=3); sys.exit(0)"
{{- end -}}
