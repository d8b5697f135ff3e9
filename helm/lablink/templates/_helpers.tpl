{{/*
Names. The full name is the release name when it contains "lablink", else
"<release>-lablink"; every object is "<fullname>-<component>".
*/}}
{{- define "lablink.fullname" -}}
{{- if contains "lablink" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-lablink" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<name>": include "lablink.name" (list . "hub") */}}
{{- define "lablink.name" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "lablink.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lablink.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: include "lablink.selectorLabels" (list . "hub") */}}
{{- define "lablink.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: lablink
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every label of an object: include "lablink.labels" (list . "hub") */}}
{{- define "lablink.labels" -}}
{{- $root := index . 0 -}}
{{ include "lablink.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "lablink.chart" $root }}
{{- end -}}

{{/* The image of a component: include "lablink.image" (list . .Values.hub.image) */}}
{{- define "lablink.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* imagePullSecrets: the global ones and the component's (a list of names) */}}
{{- define "lablink.imagePullSecrets" -}}
{{- $root := index . 0 -}}
{{- $names := concat ($root.Values.imagePullSecrets | default list) ((index . 1) | default list) | uniq -}}
{{- $list := list -}}
{{- range $names -}}{{- $list = append $list (dict "name" .) -}}{{- end -}}
{{- if $list -}}{{- toYaml (dict "imagePullSecrets" $list) -}}{{- end -}}
{{- end -}}

{{/* nodeSelector, tolerations and affinity of a component's values */}}
{{- define "lablink.scheduling" -}}
{{- $out := dict -}}
{{- range $key := list "nodeSelector" "tolerations" "affinity" -}}
{{- with index $ $key -}}{{- $_ := set $out $key . -}}{{- end -}}
{{- end -}}
{{- if $out -}}{{- toYaml $out -}}{{- end -}}
{{- end -}}

{{/* The pod's securityContext: include "lablink.podSecurityContext" 10001 */}}
{{- define "lablink.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ . }}
  runAsGroup: {{ . }}
  fsGroup: {{ . }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* A container's securityContext */}}
{{- define "lablink.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop:
      - ALL
{{- end -}}

{{/* The Secret with the chart's keys: the generated one or secrets.existingSecret */}}
{{- define "lablink.secretsName" -}}
{{- .Values.secrets.existingSecret | default (include "lablink.name" (list . "secrets")) -}}
{{- end -}}

{{/* An env var from a key of the chart's Secret: include "lablink.secretEnv" (list . "NAME" "key") */}}
{{- define "lablink.secretEnv" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "lablink.secretsName" (index . 0) }}
      key: {{ index . 2 }}
{{- end -}}

{{/*
A value of the chart's Secret, in the manner of z2jh: the explicit value, else the
one in the Secret of an earlier install (lookup; empty offline), else a new one.
include "lablink.secretValue" (list . "hub-token" .Values.secrets.hubToken "token"|"hex")
*/}}
{{- define "lablink.secretValue" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $explicit := index . 2 -}}
{{- $form := index . 3 -}}
{{- if $explicit -}}
{{- $explicit -}}
{{- else -}}
{{- $found := lookup "v1" "Secret" $root.Release.Namespace (include "lablink.name" (list $root "secrets")) -}}
{{- $kept := "" -}}
{{- if $found -}}
{{- $kept = index ($found.data | default dict) $key | default "" -}}
{{- end -}}
{{- if $kept -}}
{{- $kept | b64dec -}}
{{- else if eq $form "hex" -}}
{{- randAlphaNum 64 | sha256sum -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether the backend uses SQLite ("true" or "") */}}
{{- define "lablink.sqlite" -}}
{{- if not (or .Values.database.url .Values.database.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* The demo site, used when values.site names no systems */}}
{{- define "lablink.demoSite" -}}
site_name: Lablink (demo)
default_system: cloud
systems:
  cloud:
    kind: kubernetes
    display_name: Cloud
    description: JupyterLab as a pod in this cluster
    flavors:
      small:
        display_name: Small
        description: 1 CPU, 2 GiB
        cpu: 1
        memory: 2
    images:
      - image: lablink/lab:0.1.0
        display_name: JupyterLab
{{- end -}}

{{/* The admin's site: values.site, or the demo site when it names no systems */}}
{{- define "lablink.userSite" -}}
{{- $site := deepCopy (.Values.site | default dict) -}}
{{- if not $site.systems -}}
{{- $site = mustMergeOverwrite (include "lablink.demoSite" . | fromYaml) $site -}}
{{- end -}}
{{- toYaml $site -}}
{{- end -}}

{{/* Whether the tunnel service runs ("true" or ""): tunnel.enabled, or a system with tunnel: ssh */}}
{{- define "lablink.tunnelEnabled" -}}
{{- $site := include "lablink.userSite" . | fromYaml -}}
{{- $ssh := false -}}
{{- range $name, $system := $site.systems -}}
{{- if eq (toString (dig "tunnel" "none" $system)) "ssh" -}}{{- $ssh = true -}}{{- end -}}
{{- end -}}
{{- if or .Values.tunnel.enabled $ssh -}}true{{- end -}}
{{- end -}}

{{/* The namespace of the labs of kubernetes systems that name none */}}
{{- define "lablink.labsNamespace" -}}
{{- .Values.userlabManager.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* The labs' namespaces (a YAML list): those of the kubernetes systems, else the manager's default */}}
{{- define "lablink.labsNamespaces" -}}
{{- $site := include "lablink.site" . | fromYaml -}}
{{- $namespaces := list -}}
{{- range $name, $system := $site.systems -}}
{{- if eq (toString $system.kind) "kubernetes" -}}
{{- $namespaces = append $namespaces $system.namespace -}}
{{- end -}}
{{- end -}}
{{- if not $namespaces -}}
{{- $namespaces = list (include "lablink.labsNamespace" .) -}}
{{- end -}}
{{- toYaml (dict "namespaces" ($namespaces | uniq | sortAlpha)) -}}
{{- end -}}

{{/* The PostgreSQL connections of one backend: the site's, else what the database allows */}}
{{- define "lablink.connections" -}}
{{- $replicas := int .Values.backend.replicas -}}
{{- $free := sub (int .Values.database.maxConnections) (int .Values.database.reservedConnections) -}}
{{- $each := min 15 (div $free (add $replicas 1)) -}}
{{- $given := dig "replicas" "connections" 0 (.Values.site | default dict) -}}
{{- if $given -}}
{{- int $given -}}
{{- else if lt (int $each) 3 -}}
{{- fail (printf "database.maxConnections %d minus database.reservedConnections %d leaves %d connections for each of %d backend replicas (and one more during a rolling update), fewer than 3; raise database.maxConnections or lower backend.replicas." (int .Values.database.maxConnections) (int .Values.database.reservedConnections) (int $each) $replicas) -}}
{{- else -}}
{{- $each -}}
{{- end -}}
{{- end -}}

{{/*
The rendered site file: the admin's site with what the chart owns on top. A chart-owned
key in values.site fails with one sentence.
*/}}
{{- define "lablink.site" -}}
{{- $ns := .Release.Namespace -}}
{{- $site := include "lablink.userSite" . | fromYaml -}}
{{- if hasKey $site "state_dir" -}}
{{- fail "site.state_dir is set by the chart (/var/lib/lablink, the state volume); remove it from site." -}}
{{- end -}}
{{- if hasKey $site "database_url" -}}
{{- fail "site.database_url must not be in the site: a database URL holds a password and the site is a ConfigMap; set database.url or database.existingSecret instead." -}}
{{- end -}}
{{- $tunnel := $site.tunnel_service | default dict -}}
{{- range $key := list "url" "bind" "advertise" "hub_api" -}}
{{- if hasKey $tunnel $key -}}
{{- fail (printf "site.tunnel_service.%s is set by the chart (the tunnel service's Service and address in the cluster); remove it from site." $key) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $site "metrics" -}}
{{- fail "site.metrics is set by the chart (from metrics.access: the token in the chart's Secret, or the ports 8011, 8021 and 8031); remove it from site and set metrics.access instead." -}}
{{- end -}}
{{- $manager := $site.userlab_manager | default dict -}}
{{- range $key := list "url" "kubeconfig" -}}
{{- if hasKey $manager $key -}}
{{- fail (printf "site.userlab_manager.%s is set by the chart (the manager runs in the cluster with its service account); remove it from site." $key) -}}
{{- end -}}
{{- end -}}
{{- $tokens := list -}}
{{- range $token := $site.tokens | default list -}}
{{- if or (eq (toString $token.name) "hub") (eq (toString $token.secret_env) "LABLINK_HUB_TOKEN") -}}
{{- fail "site.tokens has a token named hub or read from LABLINK_HUB_TOKEN, which the chart sets for the hub; give your token another name and variable." -}}
{{- end -}}
{{- $tokens = append $tokens $token -}}
{{- end -}}
{{- $tokens = prepend $tokens (dict "name" "hub" "secret_env" "LABLINK_HUB_TOKEN" "role" "hub" "admin_header" true) -}}
{{- $_ := set $site "tokens" $tokens -}}
{{- $_ := set $site "state_dir" "/var/lib/lablink" -}}
{{- if not (hasKey $site "login") -}}
{{- $_ := set $site "login" (ternary "oidc" "demo" (not (empty .Values.hub.oidc.issuer))) -}}
{{- end -}}
{{- $fullname := include "lablink.fullname" . -}}
{{- $_ := set $tunnel "url" (printf "http://%s-tunnel:8020" $fullname) -}}
{{- $_ := set $tunnel "bind" "0.0.0.0" -}}
{{- $_ := set $tunnel "advertise" (printf "%s-tunnel-0.%s-tunnel-forwards.%s.svc" $fullname $fullname $ns) -}}
{{- $_ := set $tunnel "hub_api" (printf "http://%s-hub.%s.svc:8081" $fullname $ns) -}}
{{- if not (hasKey $tunnel "ports") -}}
{{- $_ := set $tunnel "ports" (dict "min" 9000 "max" 9999) -}}
{{- end -}}
{{- $_ := set $site "tunnel_service" $tunnel -}}
{{- $_ := set $manager "url" (printf "http://%s-userlab-manager:8030" $fullname) -}}
{{- $_ := set $site "userlab_manager" $manager -}}
{{- $_ := set $site "metrics" (include "lablink.siteMetrics" . | fromYaml) -}}
{{- $replicas := $site.replicas | default dict -}}
{{- $_ := set $replicas "connections" (include "lablink.connections" . | int) -}}
{{- $_ := set $site "replicas" $replicas -}}
{{- $labsNs := include "lablink.labsNamespace" . -}}
{{- range $name, $system := $site.systems -}}
{{- if and (kindIs "map" $system) (eq (toString $system.kind) "kubernetes") (not $system.namespace) -}}
{{- $_ := set $system "namespace" $labsNs -}}
{{- end -}}
{{- end -}}
{{- toYaml $site -}}
{{- end -}}

{{/*
Metrics (issue 18). The site's metrics block, from metrics.access: with token the
services read the scraper's token from LABLINK_METRICS_TOKEN (Secret key metrics-token);
with port each serves /metrics on a port of its own, on every address of the pod.
*/}}
{{- define "lablink.siteMetrics" -}}
access: {{ .Values.metrics.access | quote }}
{{- if eq .Values.metrics.access "token" }}
token_env: LABLINK_METRICS_TOKEN
{{- else if eq .Values.metrics.access "port" }}
bind: 0.0.0.0
ports:
  backend: 8011
  tunnel: 8021
  userlab_manager: 8031
{{- end }}
{{- end -}}

{{/* The metrics listener's port of a component (access: port): include "lablink.metricsPort" "backend" */}}
{{- define "lablink.metricsPort" -}}
{{- get (dict "backend" "8011" "tunnel" "8021" "userlab-manager" "8031") . -}}
{{- end -}}

{{/* The API port of a component: include "lablink.apiPort" "backend" */}}
{{- define "lablink.apiPort" -}}
{{- get (dict "backend" "8010" "tunnel" "8020" "userlab-manager" "8030") . -}}
{{- end -}}

{{/* The pod port that serves /metrics ("" with access off): include "lablink.metricsPodPort" (list . "backend") */}}
{{- define "lablink.metricsPodPort" -}}
{{- $access := (index . 0).Values.metrics.access -}}
{{- if eq $access "token" -}}
{{- include "lablink.apiPort" (index . 1) -}}
{{- else if eq $access "port" -}}
{{- include "lablink.metricsPort" (index . 1) -}}
{{- end -}}
{{- end -}}

{{/* The container's metrics port (access: port): include "lablink.metricsContainerPort" (list . "backend") */}}
{{- define "lablink.metricsContainerPort" -}}
{{- if eq (index . 0).Values.metrics.access "port" -}}
- name: metrics
  containerPort: {{ include "lablink.metricsPort" (index . 1) }}
{{- end -}}
{{- end -}}

{{/* The scraper's token in a service's environment (access: token) */}}
{{- define "lablink.metricsEnv" -}}
{{- if eq .Values.metrics.access "token" -}}
{{ include "lablink.secretEnv" (list . "LABLINK_METRICS_TOKEN" "metrics-token") }}
{{- end -}}
{{- end -}}

{{/*
A Service's port named metrics: 8011, 8021 or 8031, to the API port (access: token)
or to the metrics listener (access: port); nothing with access off.
include "lablink.metricsServicePort" (list . "backend")
*/}}
{{- define "lablink.metricsServicePort" -}}
{{- $access := (index . 0).Values.metrics.access -}}
{{- if ne $access "off" -}}
- name: metrics
  port: {{ include "lablink.metricsPort" (index . 1) }}
  targetPort: {{ ternary "http" "metrics" (eq $access "token") }}
  protocol: TCP
{{- end -}}
{{- end -}}

{{/*
The ingress rule of a component's NetworkPolicy that lets networkPolicy.metricsFrom
reach the port serving /metrics, and no other; nothing with access off or no peers
(an empty `from` would let everyone in).
include "lablink.metricsIngress" (list . "backend")
*/}}
{{- define "lablink.metricsIngress" -}}
{{- $root := index . 0 -}}
{{- $port := include "lablink.metricsPodPort" . -}}
{{- if and $port $root.Values.networkPolicy.metricsFrom -}}
# Prometheus (networkPolicy.metricsFrom): /metrics only
- ports:
    - port: {{ $port }}
      protocol: TCP
  from:
    {{- toYaml $root.Values.networkPolicy.metricsFrom | nindent 4 }}
{{- end -}}
{{- end -}}

{{/* Checks that fail the install with one sentence */}}
{{- define "lablink.checks" -}}
{{- $replicas := int .Values.backend.replicas -}}
{{- if and (include "lablink.sqlite" .) (gt $replicas 1) -}}
{{- fail (printf "backend.replicas is %d but the backend uses SQLite, which allows one backend; set database.url or database.existingSecret to a PostgreSQL database to run several." $replicas) -}}
{{- end -}}
{{- if and .Values.database.url .Values.database.existingSecret -}}
{{- fail "database.url and database.existingSecret are both set; set one of them." -}}
{{- end -}}
{{- with .Values.hub.oidc -}}
{{- if .issuer -}}
{{- if not .clientId -}}
{{- fail "hub.oidc.issuer is set but hub.oidc.clientId is not; set the client id the OIDC provider gave the hub." -}}
{{- end -}}
{{- if not (or .clientSecret .existingSecret) -}}
{{- fail "hub.oidc.issuer is set but neither hub.oidc.clientSecret nor hub.oidc.existingSecret is; give the OIDC client's secret through one of them." -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $site := include "lablink.userSite" . | fromYaml -}}
{{- range $name, $system := $site.systems -}}
{{- if and (eq (toString (dig "tunnel" "none" $system)) "ssh") (not $.Values.tunnel.sshKeySecret) -}}
{{- fail (printf "system %s uses tunnel: ssh, so the tunnel service runs and needs its SSH key; set tunnel.sshKeySecret to a Secret with the keys ssh-privatekey and known_hosts." $name) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.userlabManager.enabled -}}
{{- range $name, $system := $site.systems -}}
{{- if eq (toString $system.kind) "kubernetes" -}}
{{- fail (printf "system %s is of kind kubernetes, whose lab pods the UserLab Manager starts; set userlabManager.enabled to true or remove the system." $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.metrics.access "off") .Values.metrics.serviceMonitor.enabled -}}
{{- fail "metrics.serviceMonitor.enabled is true but metrics.access is off, so no service serves /metrics; set metrics.access to token or port, or switch the ServiceMonitor off." -}}
{{- end -}}
{{- $_ := include "lablink.site" . -}}
{{- end -}}

{{/* The volumes every pod has: /tmp as an emptyDir */}}
{{- define "lablink.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "lablink.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* The site ConfigMap's volume and mount */}}
{{- define "lablink.siteVolume" -}}
- name: site
  configMap:
    name: {{ include "lablink.name" (list . "site") }}
{{- end -}}

{{- define "lablink.siteMount" -}}
- name: site
  mountPath: /etc/lablink/site
  readOnly: true
{{- end -}}

{{/* Hub-forward TLS files (tunnel and backend), when tunnel.hubForwardTlsSecret is set */}}
{{- define "lablink.hubForwardTlsVolume" -}}
{{- if .Values.tunnel.hubForwardTlsSecret }}
- name: hub-forward-tls
  secret:
    secretName: {{ .Values.tunnel.hubForwardTlsSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "lablink.hubForwardTlsMount" -}}
{{- if .Values.tunnel.hubForwardTlsSecret }}
- name: hub-forward-tls
  mountPath: /etc/lablink/hub-forward-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* The checksum annotation of the rendered site (never of a Secret) */}}
{{- define "lablink.siteChecksum" -}}
checksum/site: {{ include "lablink.site" . | sha256sum }}
{{- end -}}

{{/* NetworkPolicy peers and rules */}}
{{- define "lablink.peer" -}}
- podSelector:
    matchLabels:
      {{- include "lablink.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* The lab pods in the labs' namespaces, as a peer of a policy in the release namespace */}}
{{- define "lablink.labsPeer" -}}
- namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values:
          {{- toYaml (include "lablink.labsNamespaces" . | fromYaml).namespaces | nindent 10 }}
  podSelector:
    matchLabels:
      app.kubernetes.io/managed-by: lablink-userlab-manager
{{- end -}}

{{- define "lablink.dnsEgress" -}}
# DNS, wherever the cluster's resolver runs
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* Whether an IPv4 CIDR holds 169.254.169.254 ("true" or "") */}}
{{- define "lablink.holdsMetadata" -}}
{{- if and (not (contains ":" .)) (contains "/" .) -}}
{{- $parts := splitList "/" . -}}
{{- $octets := splitList "." (first $parts) -}}
{{- if eq (len $octets) 4 -}}
{{- $ip := add (mul (atoi (index $octets 0)) 16777216) (mul (atoi (index $octets 1)) 65536) (mul (atoi (index $octets 2)) 256) (atoi (index $octets 3)) -}}
{{- $size := 1 -}}
{{- range until (sub 32 (atoi (last $parts)) | int) -}}{{- $size = mul $size 2 -}}{{- end -}}
{{- if and (gt $size 1) (eq (div $ip $size) (div 2852039166 $size)) -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* An ipBlock peer for a CIDR, without the metadata address */}}
{{- define "lablink.ipBlock" -}}
- ipBlock:
    cidr: {{ . }}
    {{- if include "lablink.holdsMetadata" . }}
    except:
      - 169.254.169.254/32
    {{- end }}
{{- end -}}
