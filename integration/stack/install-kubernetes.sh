#!/usr/bin/env bash
# install-kubernetes.sh: installs what `make test-kubernetes` needs on top of install.sh's stack:
# kubelet, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl, built through the Go
# module proxy from a wrapper module that replaces each k8s.io/* staging module of k8s.io/kubernetes
# with its published v0.x release, and an etcd server from go.etcd.io/etcd/server/v3, all into the
# stack cache (each binary reused when present). The wrapper modules live in the stack cache too, so
# a clean clone reuses them (a cached wrapper that lacks a binary's tool line gets it). iproute2 (ip,
# for the test's veth) is installed from apt when missing.
#
#   STACK_DIR            cache directory (default /var/cache/graceful-stack)
#   KUBERNETES_VERSION   k8s.io/kubernetes tag (default v1.37.2; its staging modules are v0.<minor>.<patch>)
#   ETCD_VERSION         go.etcd.io/etcd/server/v3 tag (default v3.7.3)
#
#   install-kubernetes.sh prepare   only writes the wrapper modules and downloads their modules
set -euo pipefail

STACK_DIR=${STACK_DIR:-/var/cache/graceful-stack}
KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
export PATH=/usr/local/go/bin:$PATH
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0
prepare_only=false
[ "${1:-}" = prepare ] && prepare_only=true

log() { echo "stack: $*" >&2; }

if ! command -v ip >/dev/null; then
	log "apt-get install iproute2"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi

bin="$STACK_DIR/bin"
mkdir -p "$bin"
kube_bins=(kubelet kube-apiserver kube-controller-manager kube-scheduler kubectl)
etcd_bin="$bin/etcd-$ETCD_VERSION"

# The Kubernetes wrapper module: k8s.io/kubernetes at KUBERNETES_VERSION, whose go.mod points every
# k8s.io/X at ./staging/src/k8s.io/X (replace directives that a dependent module does not inherit),
# so each is pointed at the published release instead.
kdir="$STACK_DIR/kubernetes-$KUBERNETES_VERSION"
staging=v0.${KUBERNETES_VERSION#v1.}
if [ ! -f "$kdir/go.sum" ]; then
	log "writing the Kubernetes $KUBERNETES_VERSION wrapper module in $kdir"
	mkdir -p "$kdir"
	src=$(cd "$kdir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$src" ] || { log "cannot download k8s.io/kubernetes@$KUBERNETES_VERSION"; exit 1; }
	goline=$(sed -n 's/^go \(.*\)$/\1/p' "$src/go.mod")
	{
		printf 'module graceful/kubernetes-build\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\n' "$goline" "$KUBERNETES_VERSION"
		printf 'tool (\n'
		for b in "${kube_bins[@]}"; do printf '\tk8s.io/kubernetes/cmd/%s\n' "$b"; done
		printf ')\n\nreplace (\n'
		grep '=> ./staging' "$src/go.mod" | awk '{print $1}' | grep -v -e sample-cli-plugin -e sample-controller |
			while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
		printf ')\n'
	} >"$kdir/go.mod.new"
	mv "$kdir/go.mod.new" "$kdir/go.mod"
	(cd "$kdir" && nice go mod tidy)
fi
# A wrapper module cached by an older version of this script lacks some tools (it had only
# kubelet, kube-apiserver and kubectl): add their tool lines and tidy again.
new_tools=()
for b in "${kube_bins[@]}"; do
	grep -Eq "(^|[[:space:]])k8s.io/kubernetes/cmd/$b\$" "$kdir/go.mod" || new_tools+=("-tool=k8s.io/kubernetes/cmd/$b")
done
if [ ${#new_tools[@]} -gt 0 ]; then
	log "adding ${new_tools[*]#-tool=} to the wrapper module in $kdir"
	cp "$kdir/go.mod" "$kdir/go.mod.old" && cp "$kdir/go.sum" "$kdir/go.sum.old"
	if ! (cd "$kdir" && go mod edit "${new_tools[@]}" && nice go mod tidy); then
		# Restored, so that the next run tries again.
		mv "$kdir/go.mod.old" "$kdir/go.mod" && mv "$kdir/go.sum.old" "$kdir/go.sum"
		log "cannot update the wrapper module in $kdir"
		exit 1
	fi
	rm -f "$kdir/go.mod.old" "$kdir/go.sum.old"
fi

edir="$STACK_DIR/etcd-$ETCD_VERSION"
if [ ! -f "$edir/go.sum" ]; then
	log "writing the etcd $ETCD_VERSION wrapper module in $edir"
	mkdir -p "$edir"
	printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >"$edir/main.go"
	printf 'module graceful/etcd-build\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$edir/go.mod"
	(cd "$edir" && nice go mod tidy)
fi
if $prepare_only; then
	(cd "$kdir" && go mod download) && (cd "$edir" && go mod download)
	log "prepared: $kdir, $edir"
	exit 0
fi

missing=()
for b in "${kube_bins[@]}"; do
	[ -x "$bin/$b-$KUBERNETES_VERSION" ] || missing+=("$b")
done
if [ ${#missing[@]} -gt 0 ]; then
	# On 2 cores: kube-controller-manager and kube-scheduler alone took 63 s (measured, with the Go
	# build cache that building the other three left); a cold build of all five takes about 8 min
	# (estimated: the first three took about 6 min cold).
	if [ ${#missing[@]} -eq ${#kube_bins[@]} ]; then
		log "building ${missing[*]} $KUBERNETES_VERSION (about 8 min cold on 2 cores)"
	else
		log "building ${missing[*]} $KUBERNETES_VERSION (1 to 8 min on 2 cores, depending on the Go build cache)"
	fi
	ld="-s -w"
	for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld="$ld -X $v.gitVersion=$KUBERNETES_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) -X $v.gitTreeState=clean"
	done
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	pkgs=()
	for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
	(cd "$kdir" && nice go build -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}")
	for b in "${missing[@]}"; do mv "$tmp/$b" "$bin/$b-$KUBERNETES_VERSION"; done
fi
if [ ! -x "$etcd_bin" ]; then
	log "building etcd $ETCD_VERSION"
	(cd "$edir" && nice go build -trimpath -ldflags "-s -w" -o "$etcd_bin.new" .)
	mv "$etcd_bin.new" "$etcd_bin"
fi
log "ready: $(for b in "${kube_bins[@]}"; do printf '%s ' "$bin/$b-$KUBERNETES_VERSION"; done)$etcd_bin"
