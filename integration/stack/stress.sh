#!/usr/bin/env bash
# stress.sh COUNT INTEGRATION_COUNT INTEGRATION_NAMES: runs the process/, shim/ and initproc/
# suites COUNT times and the integration tests named (a |-list) INTEGRATION_COUNT times, one package
# at a time (the 2-core machines here make timing-sensitive suites flaky when they overlap), and
# prints every test that failed at least once with its count. It fails if any did.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH
count=$1 icount=$2 names=$3
log=$(mktemp /tmp/graceful-stress-XXXXXX.log)
run() { echo "stress: go test $*" >&2; go test "$@" >>"$log" 2>&1; }
for pkg in ./process/ ./shim/ ./initproc/; do
	run -count="$count" -v -timeout 60m "$pkg"
done
bash integration/stack/check-test-names.sh ./integration ${names//|/ } || exit 1
run -count="$icount" -v -timeout 60m -run "^($names)\$" ./integration/
failed=$(grep -E '^\s*--- FAIL: ' "$log" | sed -E 's/^\s*--- FAIL: ([^ ]+).*/\1/' | sort | uniq -c | sort -rn)
if [ -n "$failed" ]; then
	echo "stress: tests that failed (count, name; process/shim/initproc $count runs, integration $icount), log $log:"
	echo "$failed"
	exit 1
fi
if grep -qE '^(FAIL|panic:)' "$log"; then
	echo "stress: a package failed outside any test, log $log:"
	grep -E '^(FAIL|panic:)' "$log" | head
	exit 1
fi
echo "stress: no failure (process/shim/initproc $count runs, integration $icount), log $log"
