#!/usr/bin/env bash
# pki.sh DIR NODE_NAME NODE_IP: the certificates, keys and kubeconfigs of a one-node cluster,
# made with openssl. Does nothing when DIR already holds a CA.
set -euo pipefail
dir=$1 node=$2 node_ip=$3
server=https://$node_ip:6443
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cd "$dir"
if [[ -f ca.crt ]]; then exit 0; fi
umask 077

ca() { # ca NAME CN
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$1.key" -out "$1.crt" -days 30 -subj "/CN=$2" 2>/dev/null
}
# cert NAME CN ORG EXTENDED_USAGE [SUBJECT_ALT_NAMES] [CA]
cert() {
  local name=$1 cn=$2 org=$3 usage=$4 san=${5:-} signer=${6:-ca} subject
  subject="/CN=$cn"
  if [[ -n $org ]]; then subject="/O=$org/CN=$cn"; fi
  openssl req -new -nodes -newkey rsa:2048 -keyout "$name.key" -out "$name.csr" -subj "$subject" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    if [[ -n $san ]]; then echo "subjectAltName=$san"; fi
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$signer.crt" -CAkey "$signer.key" -CAcreateserial \
    -out "$name.crt" -days 30 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

ca ca kubernetes-ca
# The aggregation layer (metrics-server behind the apiserver) has a CA of its own.
ca front-proxy-ca front-proxy-ca
cert apiserver kube-apiserver "" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$node_ip,IP:10.96.0.1"
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
cert admin kubernetes-admin system:masters clientAuth
cert controller-manager system:kube-controller-manager "" clientAuth
cert scheduler system:kube-scheduler "" clientAuth
cert kube-proxy system:kube-proxy "" clientAuth
cert kubelet "system:node:$node" system:nodes clientAuth
cert kubelet-server "$node" "" serverAuth "DNS:$node,IP:$node_ip,IP:127.0.0.1"
cert front-proxy-client front-proxy-client "" clientAuth "" front-proxy-ca
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

kubeconfig() { # kubeconfig NAME CERT
  cat >"$1.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: paygate-local
    cluster: {server: "$server", certificate-authority: "$dir/ca.crt"}
users:
  - name: $1
    user: {client-certificate: "$dir/$2.crt", client-key: "$dir/$2.key"}
contexts:
  - name: paygate-local
    context: {cluster: paygate-local, user: $1}
current-context: paygate-local
KUBECONFIG
}
for who in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig "$who" "$who"; done
