#!/usr/bin/env bash
# check-test-names.sh PACKAGE NAME... : fails unless every NAME is a top-level test of PACKAGE, so
# that a Makefile list of test names (a -run regex) cannot silently shrink when a test is renamed.
set -euo pipefail
export PATH=/usr/local/go/bin:$PATH
pkg=$1
shift
listed=$(go test -list '.*' "$pkg" | grep -E '^(Test|Benchmark|Fuzz|Example)' || true)
missing=()
for name in "$@"; do
	grep -qxF "$name" <<<"$listed" || missing+=("$name")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "check-test-names: no test in $pkg named: ${missing[*]}" >&2
	exit 1
fi
