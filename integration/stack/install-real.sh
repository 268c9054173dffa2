#!/usr/bin/env bash
# install-real.sh: builds the root file system of `make test-real` into the stack cache (reused
# when present): Debian 12 with real inits and real servers from Debian's packages, made by
# mmdebstrap from the Debian mirror (no registry), plus the JVM test's class compiled inside it.
# The containers mount it read-only, as `ctr run --rootfs` does.
#
#   STACK_DIR     cache directory (default /var/cache/graceful-stack)
#   REAL_MIRROR   Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

STACK_DIR=${STACK_DIR:-/var/cache/graceful-stack}
REAL_MIRROR=${REAL_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "stack: $*" >&2; }

# The packages, and the version of this recipe: a change to either makes a new root file system.
packages=tini,dumb-init,catatonit,supervisor,runit,nginx-light,postgresql-15,openjdk-17-jdk-headless,python3,busybox,procps
recipe=$( (echo "$packages"; cat "$here/../testdata/real/Hook.java") | sha256sum | cut -c1-12)
root="$STACK_DIR/real/rootfs-$recipe"

if [ ! -e "$root/.complete" ]; then
	command -v mmdebstrap >/dev/null || {
		log "installing mmdebstrap"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
	}
	log "building the real-world root file system (about a minute)"
	rm -rf "$root" "$root.tmp"
	mkdir -p "$STACK_DIR/real"
	mmdebstrap --mode=root --variant=essential --quiet \
		--aptopt='Acquire::Check-Valid-Until "false"' \
		--include="$packages" bookworm "$root.tmp" "deb $REAL_MIRROR bookworm main"
	# Mount points the tests bind over (the root file system is mounted read-only).
	mkdir -p "$root.tmp/out" "$root.tmp/conf" "$root.tmp/data" "$root.tmp/opt/graceful-real"
	cp "$here/../testdata/real/Hook.java" "$root.tmp/opt/graceful-real/"
	# javac finds its libraries through /proc/self/exe: /proc is mounted in a private mount namespace.
	unshare --mount --fork sh -ec 'mount --make-rprivate /; mount -t proc proc "$1/proc"
		chroot "$1" javac -d /opt/graceful-real /opt/graceful-real/Hook.java' sh "$root.tmp"
	touch "$root.tmp/.complete"
	mv "$root.tmp" "$root"
	# Older recipes' root file systems.
	find "$STACK_DIR/real" -mindepth 1 -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$recipe" -exec rm -rf {} +
fi
ln -sfn "rootfs-$recipe" "$STACK_DIR/real/rootfs"
log "ready: $root"
