#!/usr/bin/env bash
# install-docker.sh: installs what `make test-docker` needs on top of install.sh's stack: dockerd
# (the Docker engine, moby) built through the Go module proxy into the stack cache (reused when
# present). No docker CLI: the tests drive dockerd through its Go SDK (github.com/moby/moby/client).
# Debian's docker.io package is not used: its dockerd cannot run a shim v2 runtimeType.
#
#   STACK_DIR        cache directory (default /var/cache/graceful-stack)
#   DOCKERD_VERSION  github.com/moby/moby/v2 tag (default v2.0.0-beta.24)
set -euo pipefail

STACK_DIR=${STACK_DIR:-/var/cache/graceful-stack}
DOCKERD_VERSION=${DOCKERD_VERSION:-v2.0.0-beta.24}
export PATH=/usr/local/go/bin:$PATH

log() { echo "stack: $*" >&2; }

bin="$STACK_DIR/bin"
out="$bin/dockerd-$DOCKERD_VERSION"
if [ ! -x "$out" ]; then
	log "building dockerd $DOCKERD_VERSION (a few minutes on first use)"
	mkdir -p "$bin"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	GOBIN="$tmp" go install "github.com/moby/moby/v2/cmd/dockerd@$DOCKERD_VERSION"
	mv "$tmp/dockerd" "$out"
fi
log "ready: $out"
