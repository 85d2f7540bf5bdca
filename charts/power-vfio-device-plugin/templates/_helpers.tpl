{{/* Names, labels and the image reference shared by every template. */}}

{{- define "pvdp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: fits the 63-character limit of names and label values. */}}
{{- define "pvdp.fullname" -}}
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

{{- define "pvdp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: never change them, a DaemonSet's selector is immutable. */}}
{{- define "pvdp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pvdp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pvdp.labels" -}}
helm.sh/chart: {{ include "pvdp.chart" . }}
{{ include "pvdp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: device-plugin
app.kubernetes.io/part-of: power-vfio-device-plugin
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pvdp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pvdp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pvdp.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the ConfigMap's file is mounted in the container. */}}
{{- define "pvdp.configDir" -}}/etc/power-vfio-device-plugin{{- end -}}

{{/* The plugin's configuration file: config.resources, handoff and cdi, as the plugin's schema names them. */}}
{{- define "pvdp.configFile" -}}
{{- $handoff := dict "hostDir" .Values.handoff.hostDir "containerDir" .Values.handoff.containerDir -}}
{{- $cdi := dict "enabled" .Values.cdi.enabled "specDir" .Values.cdi.specDir -}}
{{- if .Values.simulate -}}
{{- /* The simulated node keeps what it writes under its temporary root: no host directory is named. */ -}}
{{- $handoff = dict "containerDir" .Values.handoff.containerDir -}}
{{- $cdi = dict "enabled" .Values.cdi.enabled -}}
{{- end -}}
{{- $config := dict "resources" .Values.config.resources "handoff" $handoff "cdi" $cdi -}}
{{- if eq (include "pvdp.managedBinding" .) "true" -}}
{{- /* The host's /proc is mounted at /host/proc: mounts and open files are checked there. */ -}}
{{- $_ := set $config "procRoot" "/host" -}}
{{- end -}}
# Rendered by the power-vfio-device-plugin chart from its values (config.resources, handoff, cdi).
{{ toYaml $config }}
{{- end -}}

{{/*
Checks the schema cannot express, with the messages the plugin itself would
give: resource names the kubelet accepts (and CDI, when it is on), no name
twice, and handoff options only on handoff resources.
*/}}
{{- define "pvdp.validateResources" -}}
{{- $seen := dict -}}
{{- $cdi := .Values.cdi.enabled -}}
{{- range $i, $r := .Values.config.resources -}}
{{- $where := printf "config.resources[%d].name %q" $i $r.name -}}
{{- $parts := splitList "/" $r.name -}}
{{- if ne (len $parts) 2 -}}
{{- fail (printf "%s: must be fully qualified as <domain>/<name>, for example ibm.com/nvme" $where) -}}
{{- end -}}
{{- $domain := index $parts 0 -}}
{{- $local := index $parts 1 -}}
{{- if or (gt (len $domain) 253) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" $domain)) -}}
{{- fail (printf "%s: domain %q is not a valid DNS subdomain (lower-case letters, digits, \"-\" and \".\")" $where $domain) -}}
{{- end -}}
{{- if or (eq $domain "kubernetes.io") (hasSuffix ".kubernetes.io" $domain) -}}
{{- fail (printf "%s: the kubernetes.io domain is reserved; the kubelet refuses extended resources in it" $where) -}}
{{- end -}}
{{- if hasPrefix "requests." $r.name -}}
{{- fail (printf "%s: the \"requests.\" prefix is reserved" $where) -}}
{{- end -}}
{{- if or (gt (len $local) 63) (not (regexMatch "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$" $local)) -}}
{{- fail (printf "%s: name %q must be 1-63 characters of letters, digits, \"-\", \"_\" or \".\", starting and ending with a letter or digit" $where $local) -}}
{{- end -}}
{{- if $cdi -}}
{{- if not (regexMatch "^[A-Za-z]([A-Za-z0-9.-]*[A-Za-z0-9])?$" $domain) -}}
{{- fail (printf "%s: with cdi enabled the domain %q must start with a letter (CDI vendor names do)" $where $domain) -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z]([A-Za-z0-9_-]*[A-Za-z0-9])?$" $local) -}}
{{- fail (printf "%s: with cdi enabled the name %q must be letters, digits, \"_\" or \"-\", starting with a letter (CDI class names do)" $where $local) -}}
{{- end -}}
{{- end -}}
{{- $fields := list "vendors" "devices" "classes" "drivers" "addresses" "domains" "numaNodes" -}}
{{- $named := list -}}
{{- range $fields -}}{{- if hasKey ($r.selectors | default dict) . -}}{{- $named = append $named . -}}{{- end -}}{{- end -}}
{{- $all := and $r.selectors (hasKey $r.selectors "all") -}}
{{- if and $all (gt (len $named) 0) -}}
{{- fail (printf "config.resources[%d].selectors.all: all: true selects every VFIO group; remove it or %s" $i (join ", " $named)) -}}
{{- end -}}
{{- if and (not $all) (eq (len $named) 0) -}}
{{- fail (printf "config.resources[%d].selectors: must name at least one of %s; to advertise every VFIO group as this resource write \"selectors: { all: true }\"" $i (join ", " $fields)) -}}
{{- end -}}
{{- $mode := "verify" -}}
{{- if and $r.preparation $r.preparation.mode -}}{{- $mode = $r.preparation.mode -}}{{- end -}}
{{- if and $r.preparation (hasKey $r.preparation "handoff") (ne $mode "handoff") -}}
{{- fail (printf "config.resources[%d].preparation.handoff: is only used with mode: handoff (mode is %s)" $i $mode) -}}
{{- end -}}
{{- $binding := dict -}}
{{- if kindIs "string" $r.binding -}}{{- $binding = dict "mode" $r.binding -}}{{- else if $r.binding -}}{{- $binding = $r.binding -}}{{- end -}}
{{- $bindingMode := default "static" $binding.mode -}}
{{- if and (eq $bindingMode "managed") (not $binding.allowedDrivers) -}}
{{- fail (printf "config.resources[%d].binding.allowedDrivers: is required with mode: managed: name the host drivers it may take devices from, for example [nvme]" $i) -}}
{{- end -}}
{{- if and (eq $bindingMode "static") $binding.allowedDrivers -}}
{{- fail (printf "config.resources[%d].binding.allowedDrivers: is only used with mode: managed (mode is static)" $i) -}}
{{- end -}}
{{- range $binding.allowedDrivers -}}
{{- if contains "vfio" . -}}
{{- fail (printf "config.resources[%d].binding.allowedDrivers: %s names a VFIO driver: managed binding moves functions to vfio-pci; list the host drivers it may take them from" $i .) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $bindingMode "managed") $r.selectors.drivers -}}
{{- fail (printf "config.resources[%d].selectors.drivers: cannot be used with binding mode managed: the driver of a managed group changes when a claim takes it; use binding.allowedDrivers" $i) -}}
{{- end -}}
{{- if and (eq $bindingMode "managed") (ne (include "pvdp.kubeletApi" $) "dra") -}}
{{- fail (printf "config.resources[%d].binding.mode: managed binding needs the DRA front end (kubeletApi: dra): the device plugin API has no prepare step to rebind in" $i) -}}
{{- end -}}
{{- if hasKey $seen $r.name -}}
{{- fail (printf "%s: duplicates config.resources[%d].name" $where (get $seen $r.name)) -}}
{{- end -}}
{{- $_ := set $seen $r.name $i -}}
{{- end -}}
{{- end -}}

{{/*
The kubelet front end this release runs: "dra" or "device-plugin". auto asks
for the DeviceClass kind, not only the group version: Helm's built-in list,
used when it knows no cluster (helm template, --dry-run=client), names
resource.k8s.io/v1 whatever the cluster serves, while a live API server's list
(and --api-versions resource.k8s.io/v1/DeviceClass) names its kinds too.
*/}}
{{- define "pvdp.kubeletApi" -}}
{{- if ne .Values.kubeletApi "auto" -}}
{{- .Values.kubeletApi -}}
{{- else if .Capabilities.APIVersions.Has "resource.k8s.io/v1/DeviceClass" -}}
dra
{{- else -}}
device-plugin
{{- end -}}
{{- end -}}

{{/* The driver's own host directory: its service socket and checkpoint. */}}
{{- define "pvdp.draDriverDir" -}}
{{- printf "%s/%s" (clean .Values.dra.pluginsDir | trimSuffix "/") .Values.dra.driverName -}}
{{- end -}}

{{/* The DeviceClass of a resource: "ibm.com/nvme" -> "nvme.ibm.com" (a DNS subdomain). */}}
{{- define "pvdp.deviceClassName" -}}
{{- $parts := splitList "/" . -}}
{{- printf "%s.%s" (index $parts 1 | lower | replace "_" "-") (index $parts 0) -}}
{{- end -}}

{{/*
Checks of the DRA values the schema cannot express: the two sockets fit a unix
socket path (107 bytes, as the plugin checks at start), and each resource gives
a valid DeviceClass name that no other resource gives.
*/}}
{{- define "pvdp.validateDra" -}}
{{- if eq (include "pvdp.kubeletApi" .) "dra" -}}
{{- $driver := .Values.dra.driverName -}}
{{- $registrySocket := printf "%s/%s-reg.sock" (clean .Values.dra.pluginsRegistryDir | trimSuffix "/") $driver -}}
{{- if gt (len $registrySocket) 107 -}}
{{- fail (printf "dra.pluginsRegistryDir: the registration socket %s is %d bytes; unix socket paths are limited to 107: use a shorter directory" $registrySocket (len $registrySocket)) -}}
{{- end -}}
{{- $serviceSocket := printf "%s/dra.sock" (include "pvdp.draDriverDir" .) -}}
{{- if gt (len $serviceSocket) 107 -}}
{{- fail (printf "dra.pluginsDir: the service socket %s is %d bytes; unix socket paths are limited to 107: use a shorter directory or driverName" $serviceSocket (len $serviceSocket)) -}}
{{- end -}}
{{- if .Values.dra.deviceClasses.create -}}
{{- $classes := dict -}}
{{- range $i, $r := .Values.config.resources -}}
{{- $class := include "pvdp.deviceClassName" $r.name -}}
{{- if or (gt (len $class) 253) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" $class)) -}}
{{- fail (printf "config.resources[%d].name %q: its DeviceClass name %q is not a DNS subdomain; rename the resource or set dra.deviceClasses.create: false and write the classes yourself" $i $r.name $class) -}}
{{- end -}}
{{- if hasKey $classes $class -}}
{{- fail (printf "config.resources[%d].name %q: its DeviceClass name %q is also that of config.resources[%d]; rename one of them or set dra.deviceClasses.create: false" $i $r.name $class (get $classes $class)) -}}
{{- end -}}
{{- $_ := set $classes $class $i -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
"true" when some resource uses managed binding: the plugin then writes sysfs
(driver_override, unbind, drivers_probe) and reads the host's /proc.
*/}}
{{- define "pvdp.managedBinding" -}}
{{- $managed := false -}}
{{- range .Values.config.resources -}}
{{- if or (eq (toString .binding) "managed") (and (kindIs "map" .binding) (eq (toString .binding.mode) "managed")) -}}{{- $managed = true -}}{{- end -}}
{{- end -}}
{{- $managed -}}
{{- end -}}
