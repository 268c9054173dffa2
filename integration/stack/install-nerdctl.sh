#!/usr/bin/env bash
# install-nerdctl.sh: builds what `make test-nerdctl` needs on top of install.sh's stack: nerdctl
# built through the Go module proxy into the stack cache (reused when present). `go install` refuses
# nerdctl (its go.mod has a replace directive), so a copy of the module source is built as the main
# module; its github.com/moby/moby/v2 (v2.0.0-beta.28, which the proxy refuses) is replaced by
# v2.0.0-beta.24, the version the Docker tests already use. No CNI plugins: the tests run with
# --net none or --net host.
#
#   STACK_DIR         cache directory (default /var/cache/graceful-stack)
#   NERDCTL_VERSION   github.com/containerd/nerdctl/v2 tag (default v2.4.2)
#   NERDCTL_MOBY      github.com/moby/moby/v2 version to build it with (default v2.0.0-beta.24)
set -euo pipefail

STACK_DIR=${STACK_DIR:-/var/cache/graceful-stack}
NERDCTL_VERSION=${NERDCTL_VERSION:-v2.4.2}
NERDCTL_MOBY=${NERDCTL_MOBY:-v2.0.0-beta.24}
export PATH=/usr/local/go/bin:$PATH

log() { echo "stack: $*" >&2; }

out="$STACK_DIR/bin/nerdctl-$NERDCTL_VERSION"
if [ ! -x "$out" ]; then
	log "building nerdctl $NERDCTL_VERSION (about a minute on first use)"
	mkdir -p "$STACK_DIR/bin"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	mod=github.com/containerd/nerdctl/v2
	src=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$mod@$NERDCTL_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$src" ] || { log "cannot download $mod@$NERDCTL_VERSION"; exit 1; }
	cp -r "$src" "$tmp/src"
	chmod -R u+w "$tmp/src"
	(
		cd "$tmp/src"
		if grep -q 'github.com/moby/moby/v2 ' go.mod; then
			go mod edit -replace "github.com/moby/moby/v2=github.com/moby/moby/v2@$NERDCTL_MOBY"
		fi
		GOFLAGS=-mod=mod go build -o "$tmp/nerdctl" ./cmd/nerdctl
	)
	mv "$tmp/nerdctl" "$out"
fi
log "ready: $out"
