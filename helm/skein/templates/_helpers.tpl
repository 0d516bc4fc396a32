{{/* Names. Kept short enough that "<fullname>-headless" and the pods' names stay valid DNS labels. */}}
{{- define "skein.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "skein.fullname" -}}
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

{{- define "skein.headlessName" -}}
{{- printf "%s-headless" (include "skein.fullname" .) }}
{{- end }}

{{- define "skein.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "skein.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "skein.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "skein.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skein.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "skein.labels" -}}
helm.sh/chart: {{ include "skein.chart" . }}
{{ include "skein.selectorLabels" . }}
app.kubernetes.io/version: {{ include "skein.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "skein.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* "<headless>.<namespace>.svc.<domain>": every pod is "<pod name>.<this>". */}}
{{- define "skein.peerDomain" -}}
{{- printf "%s.%s.svc.%s" (include "skein.headlessName" .) .Release.Namespace .Values.cluster.clusterDomain }}
{{- end }}

{{/*
The seeds: the first min(replicaCount, cluster.seeds) pods, written exactly as each of them advertises itself
(the broker recognises itself in the list by that string).
*/}}
{{- define "skein.join" -}}
{{- $n := min (int .Values.replicaCount) (int .Values.cluster.seeds) }}
{{- $seeds := list }}
{{- range $i := until (int $n) }}
{{- $seeds = append $seeds (printf "%s-%d.%s:%d" (include "skein.fullname" $) $i (include "skein.peerDomain" $) (int $.Values.cluster.port)) }}
{{- end }}
{{- toJson $seeds }}
{{- end }}

{{- define "skein.authSecretName" -}}
{{- default (printf "%s-auth" (include "skein.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The key of the password file in the auth Secret, or "" when there is none. */}}
{{- define "skein.passwordKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKeys.passwordFile }}{{ else if .Values.auth.passwordFile }}passwd{{ end }}
{{- end }}

{{- define "skein.aclKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKeys.aclFile }}{{ else if .Values.auth.aclFile }}acl{{ end }}
{{- end }}

{{- define "skein.tlsListeners" -}}
{{- if or .Values.listeners.mqtts.enabled .Values.listeners.wss.enabled }}true{{ end }}
{{- end }}

{{/* One value of the extra `config` map as TOML. Helm reads YAML numbers as floats: whole ones are written as
integers, which the broker's integer keys need and its float keys also take. */}}
{{- define "skein.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}{{ $items = append $items (include "skein.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) }}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else }}
{{- fail (printf "config: %v cannot be written to skein.toml (use a string, number, boolean or list)" $v) }}
{{- end }}
{{- end }}

{{/* Keys of skein.toml the chart writes itself, and the value that sets each. */}}
{{- define "skein.managedKeys" -}}
mqtt: listeners.mqtt
mqtts: listeners.mqtts
ws: listeners.ws
wss: listeners.wss
http: http.port
data_dir: persistence
allow_anonymous: auth.allowAnonymous
password_file: auth.passwordFile or auth.existingSecret
acl_file: auth.aclFile or auth.existingSecret
tls_cert: tls.secretName
tls_key: tls.secretName
tls_client_ca: tls.clientAuth
use_identity_as_username: tls.useIdentityAsUsername
log_format: logFormat
log_level: logLevel
max_connections: maxConnections
node_id: "(the pod's ordinal)"
cluster: cluster.port
cluster_advertise: "(each pod's DNS name)"
join: cluster.seeds
voters: cluster.voters
node_timeout: cluster.nodeTimeout
raft_snapshot_logs: cluster.raftSnapshotLogs
cluster_tls_cert: cluster.tls
cluster_tls_key: cluster.tls
cluster_tls_ca: cluster.tls
{{- end }}

{{/* The broker's configuration file. */}}
{{- define "skein.toml" -}}
{{- $bind := .Values.bindAddress }}
{{- $l := .Values.listeners -}}
# Written by the skein Helm chart. Per pod: cluster_advertise comes from SKEIN_CLUSTER_ADVERTISE and the node id
# is the ordinal at the end of the pod's host name.
mqtt = [{{ printf "%s:%d" $bind (int $l.mqtt.port) | toJson }}]
{{- if $l.mqtts.enabled }}
mqtts = [{{ printf "%s:%d" $bind (int $l.mqtts.port) | toJson }}]
{{- end }}
{{- if $l.ws.enabled }}
ws = [{{ printf "%s:%d" $bind (int $l.ws.port) | toJson }}]
{{- end }}
{{- if $l.wss.enabled }}
wss = [{{ printf "%s:%d" $bind (int $l.wss.port) | toJson }}]
{{- end }}
http = {{ printf "%s:%d" $bind (int .Values.http.port) | toJson }}
data_dir = "/var/lib/skein"
allow_anonymous = {{ ternary "true" "false" .Values.auth.allowAnonymous }}
{{- with include "skein.passwordKey" . }}
password_file = {{ printf "/etc/skein/auth/%s" . | toJson }}
{{- end }}
{{- with include "skein.aclKey" . }}
acl_file = {{ printf "/etc/skein/auth/%s" . | toJson }}
{{- end }}
{{- if include "skein.tlsListeners" . }}
tls_cert = "/etc/skein/tls/tls.crt"
tls_key = "/etc/skein/tls/tls.key"
{{- if .Values.tls.clientAuth }}
tls_client_ca = "/etc/skein/tls/ca.crt"
{{- end }}
{{- if .Values.tls.useIdentityAsUsername }}
use_identity_as_username = true
{{- end }}
{{- end }}
log_format = {{ .Values.logFormat | toJson }}
log_level = {{ .Values.logLevel | toJson }}
max_connections = {{ int64 .Values.maxConnections }}
{{- if .Values.cluster.enabled }}
cluster = {{ printf "%s:%d" $bind (int .Values.cluster.port) | toJson }}
join = {{ include "skein.join" . }}
voters = {{ int .Values.cluster.voters }}
node_timeout = {{ include "skein.tomlValue" .Values.cluster.nodeTimeout }}
raft_snapshot_logs = {{ int64 .Values.cluster.raftSnapshotLogs }}
{{- if .Values.cluster.tls.enabled }}
cluster_tls_cert = "/etc/skein/cluster-tls/tls.crt"
cluster_tls_key = "/etc/skein/cluster-tls/tls.key"
cluster_tls_ca = "/etc/skein/cluster-tls/ca.crt"
{{- end }}
{{- end }}
{{- $managed := include "skein.managedKeys" . | fromYaml }}
{{- range $key := keys .Values.config | sortAlpha }}
{{- if hasKey $managed $key }}
{{- fail (printf "config.%s is set by the chart; use %s instead" $key (get $managed $key)) }}
{{- end }}
{{ $key }} = {{ include "skein.tomlValue" (get $.Values.config $key) }}
{{- end }}
{{- end }}

{{/* Checks that stop a rendering whose pods could not work. */}}
{{- define "skein.validate" -}}
{{- if and (not .Values.cluster.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail "cluster.enabled=false needs replicaCount=1: unclustered pods behind one Service are separate brokers" }}
{{- end }}
{{- if and (include "skein.tlsListeners" .) (not .Values.tls.secretName) }}
{{- fail "listeners.mqtts and listeners.wss need tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if and .Values.tls.useIdentityAsUsername (not .Values.tls.clientAuth) }}
{{- fail "tls.useIdentityAsUsername needs tls.clientAuth: only a verified certificate names a user" }}
{{- end }}
{{- if and .Values.cluster.enabled .Values.cluster.tls.enabled (not .Values.cluster.tls.secretName) }}
{{- fail "cluster.tls.enabled needs cluster.tls.secretName (tls.crt, tls.key, ca.crt)" }}
{{- end }}
{{- if and .Values.auth.existingSecret (or .Values.auth.passwordFile .Values.auth.aclFile) }}
{{- fail "auth.existingSecret and auth.passwordFile/auth.aclFile exclude each other" }}
{{- end }}
{{- end }}
