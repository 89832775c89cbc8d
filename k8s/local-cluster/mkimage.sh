#!/usr/bin/env bash
# mkimage.sh ROOTFS REF OUT.tar [CMD_JSON] [ENTRYPOINT_JSON] [ENV_JSON] [WORKDIR] [USER]
# Packs a directory as a one-layer image in `docker save` format: no daemon, no registry.
# containerd imports it (ctr -n k8s.io images import OUT.tar) under REF, where the kubelet
# finds it; an unqualified REF such as local/x:1 is stored as docker.io/local/x:1.
set -euo pipefail
rootfs=$1 ref=$2 out=$3
cmd=${4:-null} entrypoint=${5:-null}
env=${6:-'["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'}
workdir=${7:-/} user=${8:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Reproducible layer: sorted, zero mtimes, numeric root ownership.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$tmp/layer.tar" .
diff_id=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
cat >"$tmp/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Env":$env,"Cmd":$cmd,"Entrypoint":$entrypoint,"WorkingDir":"$workdir","User":"$user"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},
 "history":[{"created":"1970-01-01T00:00:00Z","created_by":"k8s/local-cluster/mkimage.sh"}]}
JSON
config_id=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
mv "$tmp/config.json" "$tmp/$config_id.json"
mkdir "$tmp/$diff_id"
mv "$tmp/layer.tar" "$tmp/$diff_id/layer.tar"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$config_id" "$ref" "$diff_id" >"$tmp/manifest.json"
tar -C "$tmp" -cf "$out.partial" manifest.json "$config_id.json" "$diff_id"
mv "$out.partial" "$out"
echo "$ref -> $out ($(du -h "$out" | cut -f1))"
