{{/* The config feeds' credentials: Secret names, where they are mounted, and the flags that use them. */}}
{{- define "legation.feedsTlsSecret" -}}
{{- .Values.feeds.tls.existingSecret | default (printf "%s-controller-http-tls" (include "legation.fullname" .)) -}}
{{- end -}}
{{- define "legation.feedTokensSecret" -}}
{{- .Values.feeds.tokens.existingSecret | default (printf "%s-feed-tokens" (include "legation.fullname" .)) -}}
{{- end -}}

{{/* The feed URL a service follows: (dict "root" $ "feed" "authz") */}}
{{- define "legation.feedUrl" -}}
{{- printf "https://%s:8877/feed/%s" (include "legation.controllerHost" .root) .feed -}}
{{- end -}}

{{/* A service's feed flags, volume mount and volume: its own token only, and the CA. (dict "root" $ "feed" "authz") */}}
{{- define "legation.feedArgs" -}}
- --config-url={{ include "legation.feedUrl" . }}
- --feed-token-file=/etc/legation/feed/token
- --feed-ca=/etc/legation/feed/ca.crt
{{- end -}}
{{- define "legation.feedVolumeMount" -}}
- name: feed
  mountPath: /etc/legation/feed
  readOnly: true
{{- end -}}
{{- define "legation.feedVolume" -}}
- name: feed
  projected:
    sources:
      - secret:
          name: {{ include "legation.feedTokensSecret" .root }}
          items:
            - {key: {{ .feed }}-token, path: token}
      - secret:
          name: {{ include "legation.feedsTlsSecret" .root }}
          items:
            - {key: ca.crt, path: ca.crt}
{{- end -}}
