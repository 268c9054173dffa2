#!/usr/bin/env bash
# install-critest.sh: installs what `make test-critest` needs on top of install.sh's stack: the CNI
# plugins (Debian's containernetworking-plugins: bridge, host-local, loopback in /usr/lib/cni) and
# critest, the kubernetes-sigs CRI validation suite, built from the module source through the Go
# module proxy into the stack cache (reused when present).
#
#   STACK_DIR         cache directory (default /var/cache/graceful-stack)
#   CRITEST_VERSION   sigs.k8s.io/cri-tools tag (default v1.37.0)
set -euo pipefail

STACK_DIR=${STACK_DIR:-/var/cache/graceful-stack}
CRITEST_VERSION=${CRITEST_VERSION:-v1.37.0}
export PATH=/usr/local/go/bin:$PATH

log() { echo "stack: $*" >&2; }

if ! dpkg-query -W -f='${Status}' containernetworking-plugins 2>/dev/null | grep -q "install ok installed"; then
	log "apt-get install containernetworking-plugins"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends containernetworking-plugins >/dev/null
fi

bin="$STACK_DIR/bin"
out="$bin/critest-$CRITEST_VERSION"
if [ ! -x "$out" ]; then
	log "building critest $CRITEST_VERSION"
	mkdir -p "$bin"
	# critest is the test binary of cri-tools' cmd/critest; build it from a writable copy of the
	# module (the module cache is read-only).
	src=$(go mod download -json "sigs.k8s.io/cri-tools@$CRITEST_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$src" ] || { log "cannot download sigs.k8s.io/cri-tools@$CRITEST_VERSION"; exit 1; }
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	cp -r "$src" "$tmp/src"
	chmod -R u+w "$tmp/src"
	(cd "$tmp/src" && GOFLAGS=-mod=mod go test -c -o "$tmp/critest" ./cmd/critest)
	mv "$tmp/critest" "$out"
fi
log "ready: $out, /usr/lib/cni"
