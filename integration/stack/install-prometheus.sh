#!/usr/bin/env bash
# install-prometheus.sh: puts Debian 12's Prometheus server and promtool into the stack cache
# (reused when present), for the exporter tests: Prometheus scrapes graceful-exporter and evaluates
# contrib/exporter/alerts.yaml, promtool runs the rule's unit tests. The package is downloaded and unpacked, not installed: no service
# is started and nothing outside the cache changes.
#
#   STACK_DIR   cache directory (default /var/cache/graceful-stack)
set -euo pipefail

STACK_DIR=${STACK_DIR:-/var/cache/graceful-stack}
bin="$STACK_DIR/bin/prometheus-debian"
tool="$STACK_DIR/bin/promtool-debian"
log() { echo "stack: $*" >&2; }

[ -x "$bin" ] && [ -x "$tool" ] && exit 0
log "downloading Debian's prometheus package (about 20 MB)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null; }
dpkg -x prometheus_*.deb root
mkdir -p "$STACK_DIR/bin"
install -m 0755 root/usr/bin/prometheus "$bin.new"
install -m 0755 root/usr/bin/promtool "$tool.new"
mv "$bin.new" "$bin"
mv "$tool.new" "$tool"
log "ready: $bin, $tool ($(dpkg-deb -f prometheus_*.deb Version))"
