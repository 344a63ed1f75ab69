{{/*
Names. Every object is <fullname>-<component>; fullname is the release name unless overridden.
Most helpers take a dict: root (the top-level context), component (its name), and more.
*/}}
{{- define "mlops.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlops.name" -}}
{{- printf "%s-%s" (include "mlops.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlops.selectorLabels" -}}
app.kubernetes.io/name: mlops-platform
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mlops.labels" -}}
{{ include "mlops.selectorLabels" . }}
app.kubernetes.io/part-of: mlops-platform
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* metadata: name and labels of a component's object. */}}
{{- define "mlops.metadata" -}}
name: {{ include "mlops.name" . }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "mlops.labels" . | nindent 2 }}
{{- end -}}

{{/*
Image reference: root, image (key of .Values.images), override ({repository, tag, digest}).
*/}}
{{- define "mlops.image" -}}
{{- $base := index .root.Values.images .image -}}
{{- $over := .override | default dict -}}
{{- $repo := $over.repository | default $base.repository -}}
{{- $tag := $over.tag | default $base.tag -}}
{{- $digest := $over.digest | default $base.digest -}}
{{- if $digest -}}
{{- printf "%s:%s@%s" $repo $tag $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{- define "mlops.evalImage" -}}
{{- $img := index .root.Values.evaluation.images .image -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $img.repository $img.tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $img.tag -}}
{{- end -}}
{{- end -}}

{{/* An env var from a Secret reference: root, env (variable name), ref ({name, key}). */}}
{{- define "mlops.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name | default .root.Values.existingSecret }}
      key: {{ .ref.key }}
      {{- if .ref.optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/* An env var from the endpoints ConfigMap: root, env, key. */}}
{{- define "mlops.endpointEnv" -}}
- name: {{ .env }}
  valueFrom:
    configMapKeyRef:
      name: {{ include "mlops.name" (dict "root" .root "component" "endpoints") }}
      key: {{ .key }}
{{- end -}}

{{/*
Connection URLs. The chart never sees a password: each URL names its password as $(VAR), an
env var defined before it from a secretKeyRef, which the kubelet expands (passwords must be
URL-safe, as in compose). Hosts come from the endpoints ConfigMap the same way.
*/}}

{{/* The env vars a database URL needs: root, db (key of postgresql.databases). */}}
{{- define "mlops.dbEnv" -}}
{{- $var := printf "MLOPS_CHART_%s_DB_PASSWORD" (.db | snakecase | upper) -}}
{{ include "mlops.secretEnv" (dict "root" .root "env" $var "ref" (index .root.Values.postgresql.databases .db).password) }}
{{- end -}}

{{/* A database URL: root, db, scheme (default postgresql+psycopg2). */}}
{{- define "mlops.dbUrl" -}}
{{- $db := index .root.Values.postgresql.databases .db -}}
{{- $var := printf "MLOPS_CHART_%s_DB_PASSWORD" (.db | snakecase | upper) -}}
{{- $query := "" -}}
{{- if .root.Values.postgresql.sslMode -}}{{- $query = printf "?sslmode=%s" .root.Values.postgresql.sslMode -}}{{- end -}}
{{- printf "%s://%s:$(%s)@$(MLOPS_CHART_POSTGRES_HOST):%v/%s%s" (.scheme | default "postgresql+psycopg2") $db.username $var (int .root.Values.postgresql.port) $db.name $query -}}
{{- end -}}

{{/* The env vars a Valkey URL needs: root, user (key of valkey.users). */}}
{{- define "mlops.valkeyEnv" -}}
{{- $var := printf "MLOPS_CHART_VALKEY_%s_PASSWORD" (.user | upper) -}}
{{ include "mlops.secretEnv" (dict "root" .root "env" $var "ref" (index .root.Values.valkey.users .user).password) }}
{{- end -}}

{{/* A Valkey URL: root, user, db (key of valkey.databases). */}}
{{- define "mlops.valkeyUrl" -}}
{{- $u := index .root.Values.valkey.users .user -}}
{{- $var := printf "MLOPS_CHART_VALKEY_%s_PASSWORD" (.user | upper) -}}
{{- $tls := and .root.Values.valkey.tls (not .root.Values.evaluation.enabled) -}}
{{- /* Celery refuses a rediss:// URL without ssl_cert_reqs; redis-py takes it too. */ -}}
{{- $query := ternary "?ssl_cert_reqs=required" "" $tls -}}
{{- printf "%s://%s:$(%s)@$(MLOPS_CHART_VALKEY_HOST):%v/%v%s" (ternary "rediss" "redis" $tls) $u.username $var (int .root.Values.valkey.port) (int (index .root.Values.valkey.databases .db)) $query -}}
{{- end -}}

{{/* The S3 endpoint URL (needs MLOPS_CHART_S3_HOST). */}}
{{- define "mlops.s3Url" -}}
{{- $scheme := ternary "http" .root.Values.s3.scheme .root.Values.evaluation.enabled -}}
{{- printf "%s://$(MLOPS_CHART_S3_HOST):%v" $scheme (int .root.Values.s3.port) -}}
{{- end -}}

{{/* The services' S3 settings (S3_*): root, identity (key of s3.identities). */}}
{{- define "mlops.s3Env" -}}
{{- $id := index .root.Values.s3.identities .identity -}}
{{ include "mlops.endpointEnv" (dict "root" .root "env" "MLOPS_CHART_S3_HOST" "key" "S3_HOST") }}
- name: S3_ENDPOINT_URL
  value: {{ include "mlops.s3Url" . | quote }}
- name: S3_REGION
  value: {{ .root.Values.s3.region | quote }}
{{ include "mlops.secretEnv" (dict "root" .root "env" "S3_ACCESS_KEY_ID" "ref" $id.accessKey) }}
{{ include "mlops.secretEnv" (dict "root" .root "env" "S3_SECRET_ACCESS_KEY" "ref" $id.secretKey) }}
{{- end -}}

{{- define "mlops.url" -}}
{{- printf "http://%s:%v" (include "mlops.name" .) .port -}}
{{- end -}}

{{/*
Pod-level spec shared by every workload: root, component, values (the component's values),
uid (the user its image runs as), account (ServiceAccount component name).
*/}}
{{- define "mlops.podSpec" -}}
serviceAccountName: {{ include "mlops.name" (dict "root" .root "component" .account) }}
automountServiceAccountToken: false
# No service environment variables: they could collide with the services' settings prefixes.
enableServiceLinks: false
securityContext:
  {{- $ctx := deepCopy .root.Values.podSecurityContext }}
  {{- $_ := set $ctx "runAsUser" (int .uid) }}
  {{- $_ := set $ctx "runAsGroup" (int .uid) }}
  {{- $_ := set $ctx "fsGroup" (int .uid) }}
  {{- toYaml $ctx | nindent 2 }}
{{- with .root.Values.images.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod template metadata: root, component, values. */}}
{{- define "mlops.podMetadata" -}}
labels:
  {{- include "mlops.labels" . | nindent 2 }}
  {{- with .values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/endpoints: {{ include "mlops.endpointsData" .root | sha256sum }}
  {{- with .values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{- define "mlops.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* emptyDir volumes for what a container writes: root, names (list). */}}
{{- define "mlops.scratchVolumes" -}}
{{- range .names }}
- name: {{ . }}
  emptyDir:
    sizeLimit: {{ $.root.Values.scratchSizeLimit }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget: root, component, pdb ({enabled, maxUnavailable}). */}}
{{- define "mlops.pdb" -}}
{{- if .pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  {{- include "mlops.metadata" . | nindent 2 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "mlops.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* A ClusterIP Service: root, component, port, portName. */}}
{{- define "mlops.service" -}}
---
apiVersion: v1
kind: Service
metadata:
  {{- include "mlops.metadata" . | nindent 2 }}
spec:
  type: ClusterIP
  selector:
    {{- include "mlops.selectorLabels" . | nindent 4 }}
  ports:
    - name: {{ .portName | default "http" }}
      port: {{ .port }}
      targetPort: {{ .portName | default "http" }}
      protocol: TCP
{{- end -}}

{{/* A HorizontalPodAutoscaler on CPU: root, component, autoscaling. */}}
{{- define "mlops.hpa" -}}
{{- if .autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  {{- include "mlops.metadata" . | nindent 2 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "mlops.name" . }}
  minReplicas: {{ .autoscaling.minReplicas }}
  maxReplicas: {{ .autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 30
    scaleDown:
      # Scale in slowly: a training worker or a warm model cache is costly to get back.
      stabilizationWindowSeconds: 300
      policies:
        - type: Pods
          value: 1
          periodSeconds: 60
{{- end }}
{{- end -}}

{{/* A ServiceAccount without an API token: root, component, values. */}}
{{- define "mlops.serviceAccount" -}}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  {{- include "mlops.metadata" . | nindent 2 }}
  {{- with (dig "serviceAccount" "annotations" dict .values) }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}

{{/* The endpoints ConfigMap's data (also hashed into the pods' annotations). */}}
{{- define "mlops.endpointsData" -}}
{{- if .Values.evaluation.enabled -}}
POSTGRES_HOST: {{ include "mlops.name" (dict "root" . "component" "postgres") | quote }}
VALKEY_HOST: {{ include "mlops.name" (dict "root" . "component" "valkey") | quote }}
S3_HOST: {{ include "mlops.name" (dict "root" . "component" "minio") | quote }}
{{- else -}}
POSTGRES_HOST: {{ .Values.postgresql.host | quote }}
VALKEY_HOST: {{ .Values.valkey.host | quote }}
S3_HOST: {{ .Values.s3.host | quote }}
{{- end -}}
{{- end -}}

{{/* Checks values.schema.json cannot express; fails the render with a message naming the value. */}}
{{- define "mlops.validate" -}}
{{- range $name := list "trainerWorker" "inference" }}
{{- $a := (index $.Values $name).autoscaling }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas (%v) is above maxReplicas (%v)" $name $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- end }}
{{- if and .Values.valkey.tls .Values.evaluation.enabled }}
{{- fail "valkey.tls: the evaluation Valkey (evaluation.enabled) has no TLS" }}
{{- end }}
{{- if eq (int .Values.valkey.databases.platform) (int .Values.valkey.databases.airflow) }}
{{- fail "valkey.databases: platform and airflow must be different databases (two Celery apps on one queue)" }}
{{- end }}
{{- end -}}
