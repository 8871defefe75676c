{{/* Names, labels and the shared pod pieces of the SecondPass chart. */}}

{{- define "secondpass.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "secondpass.fullname" -}}
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

{{- define "secondpass.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "secondpass.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* selector labels of one component: include "secondpass.selector" (list . "serve") */}}
{{- define "secondpass.selector" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "secondpass.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "secondpass.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "secondpass.secretName" -}}
{{- default (printf "%s-credentials" (include "secondpass.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "secondpass.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "secondpass.fullname" .) -}}
{{- else -}}
{{- .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "secondpass.cacheOn" -}}
{{- if or .Values.redis.enabled .Values.redis.externalUrl .Values.redis.externalUrlInSecret -}}true{{- end -}}
{{- end -}}

{{/* An env entry from the credentials Secret, optional so an unset key stays unset. */}}
{{- define "secondpass.secretEnv" -}}
{{- $ctx := index . 0 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "secondpass.secretName" $ctx }}
      key: {{ index . 2 }}
      optional: true
{{- end -}}

{{/* resources, with the GPU request and limit added when gpu.enabled */}}
{{- define "secondpass.resources" -}}
{{- $ctx := index . 0 -}}
{{- $res := deepCopy (index . 1) -}}
{{- if $ctx.Values.gpu.enabled -}}
{{- $limits := default dict $res.limits -}}
{{- $_ := set $limits $ctx.Values.gpu.resourceName $ctx.Values.gpu.count -}}
{{- $_ := set $res "limits" $limits -}}
{{- $requests := default dict $res.requests -}}
{{- $_ := set $requests $ctx.Values.gpu.resourceName $ctx.Values.gpu.count -}}
{{- $_ := set $res "requests" $requests -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Fail rendering when the grace period does not cover preStop + drain. */}}
{{- define "secondpass.checkGrace" -}}
{{- $name := index . 0 -}}
{{- $c := index . 1 -}}
{{- $drain := add $c.preStopSleepSeconds (default 0 $c.shutdownDelaySeconds) $c.shutdownTimeoutSeconds -}}
{{- if le (int $c.terminationGracePeriodSeconds) (int $drain) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must be longer than preStopSleepSeconds + shutdownDelaySeconds + shutdownTimeoutSeconds (%v): Kubernetes kills the pod mid-drain otherwise" $name $c.terminationGracePeriodSeconds $drain) -}}
{{- end -}}
{{- end -}}

{{/* The volumes and mounts both front-ends need with a read-only root filesystem. */}}
{{- define "secondpass.volumes" -}}
- name: tmp
  emptyDir: {}
- name: models
{{- if .Values.rerank.cache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.rerank.cache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.rerank.cache.sizeLimit }}
{{- end }}
{{- end -}}

{{- define "secondpass.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: models
  mountPath: /models
{{- end -}}

{{- define "secondpass.scheduling" -}}
{{- $c := . -}}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
