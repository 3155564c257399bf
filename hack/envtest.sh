#!/usr/bin/env bash
# envtest.sh builds the control-plane binaries envtest and dev mode need (etcd,
# kube-apiserver and kube-controller-manager) from Go modules, because this network reaches the Go module proxy but not the
# release archives setup-envtest downloads. It prints the directory to use as
# KUBEBUILDER_ASSETS on its last line, and nothing else on stdout.
#
# Binaries land in bin/k8s/<version>/ and are reused when present, so a warm call
# takes well under a second; a cold one takes about eight minutes on two cores.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_VERSION=${K8S_VERSION:-1.36.3}
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2} $1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$root/hack/envtest/etcd/go.mod")
[[ -n "$ETCD_VERSION" ]] || { echo "envtest: cannot read the etcd version from hack/envtest/etcd/go.mod" >&2; exit 1; }
dir="$root/bin/k8s/$K8S_VERSION"
mkdir -p "$dir"

# k8s.io/kubernetes is not in the public checksum database; its go.sum entries are
# committed in hack/envtest/kube-apiserver/go.sum, which is what we trust instead.
# That module builds kube-controller-manager too, from the same pins.
export GONOSUMDB=k8s.io/kubernetes
export GOFLAGS=-mod=readonly
export CGO_ENABLED=0

build() { # build NAME MODULE_DIR PACKAGE LDFLAGS
	local name=$1 mod=$2 pkg=$3 ldflags=$4
	if [[ -x "$dir/$name" ]]; then
		return
	fi
	echo "envtest: building $name (cold builds take a few minutes)" >&2
	(cd "$root/hack/envtest/$mod" && go build -trimpath -ldflags "$ldflags" -o "$dir/$name.tmp" "$pkg")
	mv "$dir/$name.tmp" "$dir/$name"
}

# Version stamping: clients (and envtest) read the server version from /version, which
# comes from these variables; unstamped builds report v0.0.0-master.
major=${K8S_VERSION%%.*}
minor=${K8S_VERSION#*.}
minor=${minor%%.*}
vpkg=k8s.io/component-base/version
kube_ldflags="-s -w -X $vpkg.gitVersion=v$K8S_VERSION -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor \
 -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"

# kube-apiserver and kube-controller-manager come from one module and share most of
# their packages: one `go build` of both compiles each shared package once (two
# builds side by side would each compile it) and links the two binaries in parallel.
build_kube() {
	local missing=() name
	for name in kube-apiserver kube-controller-manager; do
		[[ -x "$dir/$name" ]] || missing+=("$name")
	done
	((${#missing[@]})) || return 0
	echo "envtest: building ${missing[*]} (cold builds take a few minutes)" >&2
	local tmp="$dir/.build"
	rm -rf "$tmp" && mkdir -p "$tmp"
	(cd "$root/hack/envtest/kube-apiserver" &&
		go build -trimpath -ldflags "$kube_ldflags" -o "$tmp/" "${missing[@]/#/k8s.io/kubernetes/cmd/}")
	for name in "${missing[@]}"; do
		mv "$tmp/$name" "$dir/$name"
	done
	rmdir "$tmp"
}

build_kube &
kube_pid=$!
build etcd etcd go.etcd.io/etcd/server/v3 "-s -w -X go.etcd.io/etcd/api/v3/version.Version=${ETCD_VERSION#v}"
wait "$kube_pid"

echo "$dir"
