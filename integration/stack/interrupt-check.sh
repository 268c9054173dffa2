#!/usr/bin/env bash
# interrupt-check.sh: kills the process and integration test binaries (and their go test) in the
# middle of their runs with SIGKILL, as a timeout or an impatient user would, then checks that
# what they had started dies with them or is removed by the next run's TestMain: no test cgroup,
# no stuckargv, no process of a private stack, and `ps aux` answers within 5 s. It never reads
# a command line (that read is what a jammed stuckargv hangs); it reads comm, exe and cgroup files.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH
fail=0
say() { echo "interrupt-check: $*"; }

# pids_by_comm NAME: the processes whose comm is NAME.
pids_by_comm() {
	local c
	for c in /proc/[0-9]*/comm; do
		[ "$(cat "$c" 2>/dev/null)" = "$1" ] && { c=${c#/proc/}; echo "${c%/comm}"; }
	done
}

# interrupt PKG COMM SECONDS: runs PKG's tests, SIGKILLs its test binary (comm COMM) and go test
# SECONDS after the binary started, and waits for both to be gone.
interrupt() {
	local pkg=$1 comm=${2:0:15} after=$3 bin="" i # comm keeps 15 characters
	go test -count=1 -timeout 20m "$pkg" >/tmp/interrupt-check.log 2>&1 &
	local gotest=$!
	for i in $(seq 6000); do # the build may take minutes cold
		# The test binary is go test's child: its own helpers (re-executed) have its comm too.
		for p in $(pids_by_comm "$comm"); do
			[ "$(awk '/^PPid:/ {print $2}' /proc/$p/status 2>/dev/null)" = "$gotest" ] && bin=$p
		done
		[ -n "$bin" ] && break
		sleep 0.1
	done
	[ -n "$bin" ] || { say "the $pkg test binary never started"; kill -9 $gotest; exit 1; }
	sleep "$after"
	if ! kill -0 "$bin" 2>/dev/null; then
		say "the $pkg tests ended within $after s, before the kill: the check would prove nothing"
		exit 1
	fi
	say "SIGKILL $pkg's test binary ($bin) and go test, $after s into its run"
	kill -9 "$bin" $gotest 2>/dev/null
	wait $gotest 2>/dev/null
	sleep 1
}

check_left() {
	local what=$1 p
	for p in $(pids_by_comm stuckargv); do say "$what: stuckargv $p is left"; fail=1; done
	for cg in /sys/fs/cgroup/{pids,freezer,unified}/graceful-{guard,test,bench}-* /sys/fs/cgroup/graceful-{guard,test,bench}-*; do
		[ -d "$cg" ] && { say "$what: cgroup $cg is left ($(wc -l <"$cg/cgroup.procs") processes)"; fail=1; }
	done
	for e in /proc/[0-9]*/exe; do
		t=$(readlink "$e" 2>/dev/null) || continue
		case "$t" in /run/graceful-*) say "$what: $e runs $t, of a private stack"; fail=1 ;; esac
	done
	for m in $(awk '$2 ~ /^\/run\/graceful-/ {print $2}' /proc/self/mounts); do
		say "$what: mount $m of a private stack is left"; fail=1
	done
	if ! timeout 5 ps aux >/dev/null; then say "$what: ps aux did not answer within 5 s"; fail=1; fi
}

# The process suite (about 20 s in all), 8 s in: its namespaces, cgroups, frozen and FUSE-stuck
# processes.
interrupt ./process/ process.test 8
# What dies with the binary is gone now; what cannot (cgroups, processes moved out of its reach) is
# the next run's to remove, before its tests.
go test -count=1 -timeout 5m -run '^$' ./process/ >/dev/null || { say "the next process run failed"; fail=1; }
check_left "after the process suite"

# The integration suite, 40 s in (containerd, shims, containers of its private stack).
interrupt ./integration/ integration.test 40
go test -count=1 -timeout 10m -run '^$' ./integration/ >/dev/null || { say "the next integration run failed"; fail=1; }
check_left "after the integration suite"

if [ $fail = 0 ]; then say "nothing left behind"; else say "FAILED: see above"; exit 1; fi
