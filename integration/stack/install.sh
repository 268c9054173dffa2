#!/usr/bin/env bash
# install.sh: installs everything the integration tests, demo and benchmarks need on a bare Debian 12
# machine: apt packages, runc and containerd (built from source through the Go module proxy) into a
# cache directory that is reused when the pinned versions are already there.
#
#   STACK_DIR            cache directory (default /var/cache/graceful-stack)
#   CONTAINERD_VERSION   containerd tag (default v2.4.2; v1.x tags build github.com/containerd/containerd;
#                        "debian" installs Debian's containerd package)
#   RUNC_VERSION         runc tag (default v1.3.6)
set -euo pipefail

STACK_DIR=${STACK_DIR:-/var/cache/graceful-stack}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
RUNC_VERSION=${RUNC_VERSION:-v1.3.6}
export PATH=/usr/local/go/bin:$PATH

log() { echo "stack: $*" >&2; }

need_apt=()
for pkg in libseccomp-dev pkg-config busybox-static gcc libc6-dev linux-libc-dev make python3 tini procps; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
	log "apt-get install ${need_apt[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The process tests' stuck-argv helper serves a FUSE file system.
[ -e /dev/fuse ] || modprobe fuse || log "cannot load the fuse module: the process tests need /dev/fuse"

bin="$STACK_DIR/bin"
mkdir -p "$bin"

runc_bin="$bin/runc-$RUNC_VERSION"
if [ ! -x "$runc_bin" ]; then
	log "building runc $RUNC_VERSION"
	tmp=$(mktemp -d)
	CGO_ENABLED=1 GOBIN="$tmp" go install -tags "seccomp urfave_cli_no_docs" \
		"github.com/opencontainers/runc@$RUNC_VERSION"
	mv "$tmp/runc" "$runc_bin"
	rm -rf "$tmp"
fi
ln -sf "runc-$RUNC_VERSION" "$bin/runc"

cdir="$STACK_DIR/containerd-$CONTAINERD_VERSION"
if [ "$CONTAINERD_VERSION" = debian ]; then
	# Debian's own containerd package (1.6.x on Debian 12), linked into the cache; its runc package
	# comes along but the stack runs the cached runc first on PATH.
	if ! dpkg-query -W -f='${Status}' containerd 2>/dev/null | grep -q "install ok installed"; then
		log "apt-get install containerd (Debian's)"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends containerd >/dev/null
	fi
	mkdir -p "$cdir"
	for b in containerd ctr containerd-shim-runc-v2; do ln -sf "/usr/bin/$b" "$cdir/$b"; done
	log "ready: $runc_bin, $cdir ($(/usr/bin/containerd --version))"
	exit 0
fi
if [ ! -x "$cdir/containerd" ] || [ ! -x "$cdir/ctr" ] || [ ! -x "$cdir/containerd-shim-runc-v2" ]; then
	log "building containerd $CONTAINERD_VERSION"
	tmp=$(mktemp -d)
	mod=github.com/containerd/containerd/v2
	case "$CONTAINERD_VERSION" in v1.*) mod=github.com/containerd/containerd ;; esac
	tags="no_btrfs no_devmapper no_zfs"
	if ! GOBIN="$tmp" go install -tags "$tags" \
		"$mod/cmd/containerd@$CONTAINERD_VERSION" \
		"$mod/cmd/ctr@$CONTAINERD_VERSION" \
		"$mod/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"; then
		# `go install pkg@version` refuses modules whose go.mod has exclude or replace directives
		# (containerd 2.0-2.1, 1.7): build a copy of the module source as the main module instead.
		log "go install refused $CONTAINERD_VERSION; building from a copy of the module source"
		src=$(go mod download -json "$mod@$CONTAINERD_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		[ -d "$src" ] || { log "cannot download $mod@$CONTAINERD_VERSION"; exit 1; }
		cp -r "$src" "$tmp/src"
		chmod -R u+w "$tmp/src"
		for cmd in containerd ctr containerd-shim-runc-v2; do
			(cd "$tmp/src" && GOFLAGS=-mod=mod go build -tags "$tags" -o "$tmp/$cmd" "./cmd/$cmd")
		done
		rm -rf "$tmp/src"
	fi
	mkdir -p "$cdir"
	mv "$tmp"/* "$cdir/"
	rm -rf "$tmp"
fi
log "ready: $runc_bin, $cdir"
