# containerd-shim-graceful-v2
PREFIX ?= /usr/local
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/graceful-shim/graceful/shim.Version=$(VERSION)
BIN := bin/containerd-shim-graceful-v2
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
INIT_BIN := bin/graceful-init
HOLD_BIN := bin/graceful-hold
EXPORTER_BIN := bin/graceful-exporter

.PHONY: all build install stack bench bench-smoke check-test-names test test-kernel-emulated test-kernel-6.1 test-stress test-interrupt test-load test-unit test-integration test-oldest test-compat test-critest test-docker test-kubernetes test-nerdctl test-real test-cgroup2 demo vet fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/containerd-shim-graceful-v2
	sh initproc/build.sh $(INIT_BIN) $(VERSION) $(COMMIT)
	CGO_ENABLED=0 $(GO) build -o $(HOLD_BIN) ./cmd/graceful-hold
	CGO_ENABLED=0 $(GO) build -o $(EXPORTER_BIN) ./cmd/graceful-exporter

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/containerd-shim-graceful-v2
	install -D -m 0755 $(INIT_BIN) $(DESTDIR)$(PREFIX)/bin/graceful-init
	install -D -m 0755 $(HOLD_BIN) $(DESTDIR)$(PREFIX)/bin/graceful-hold
	install -D -m 0755 $(EXPORTER_BIN) $(DESTDIR)$(PREFIX)/bin/graceful-exporter

# Installs apt packages, runc and containerd into the stack cache (reused when present).
stack:
	bash integration/stack/install.sh

vet:
	$(GO) vet ./...
	$(GO) vet -tags real ./integration/
	$(GO) vet -tags nerdctl ./integration/
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test-unit:
	$(GO) test -race -count=1 -timeout 15m ./process/... ./helper/... ./shim/... ./initproc/... ./exporter/... ./internal/... ./integration/stack/

test-integration: stack
	bash integration/stack/install-prometheus.sh
	$(GO) test -count=1 -v -timeout 20m ./integration/

# The core stop tests, run against every containerd in COMPAT_VERSIONS by test-compat, and against
# the oldest (Debian 12's containerd 1.6) by test.
COMPAT_NAMES := TestSeedCaseChildHandlerRuns|TestRunShStopsInChildsShutdownTime|TestTermIgnoringChildKilledAtGrace|TestExecProcessIsDrained|TestSupervisorIsNotFooledUnderAuto
COMPAT_TESTS := ^($(COMPAT_NAMES))$$
COMPAT_VERSIONS ?= v2.4.2 v2.3.7 v2.2.9 v2.1.9 v2.0.14 v1.7.35 debian

# The load test at full size: 50 containers stopped concurrently (make test runs 10).
test-load: stack
	GRACEFUL_LOAD_N=50 $(GO) test -count=1 -v -timeout 20m -run '^TestConcurrentStopsUnderLoad$$' ./integration/

test-oldest:
	CONTAINERD_VERSION=debian bash integration/stack/install.sh
	CONTAINERD_VERSION=debian $(GO) test -count=1 -v -timeout 10m -run '$(COMPAT_TESTS)' ./integration/

test-compat:
	@set -e; for v in $(COMPAT_VERSIONS); do \
		echo "=== containerd $$v"; \
		CONTAINERD_VERSION=$$v bash integration/stack/install.sh; \
		CONTAINERD_VERSION=$$v $(GO) test -count=1 -timeout 10m -run '$(COMPAT_TESTS)' ./integration/; \
	done

# critest, the kubernetes-sigs CRI validation suite, against one private CRI daemon with the stock
# runc handler and each graceful handler (form A, form B, form A with graceful-init): fails unless
# each passes the same specs as runc. install-critest.sh adds the CNI plugins and builds critest
# into the stack cache.
test-critest: stack
	bash integration/stack/install-critest.sh
	GRACEFUL_CRITEST=1 $(GO) test -count=1 -v -timeout 30m -run '^(TestComparePassSets|TestCritestPassSetMatchesRunc)$$' ./integration/

# The Docker engine: dockerd (moby) on a private containerd with contrib/docker-daemon.json (paths
# rewritten), driven through the Docker Go SDK: stop, kill, exec, the grace period from an annotation
# and from the options file, an image's STOPSIGNAL. install-docker.sh builds dockerd into the stack
# cache (no docker CLI needed).
test-docker: stack
	bash integration/stack/install-docker.sh
	GRACEFUL_DOCKER=1 $(GO) test -count=1 -v -timeout 15m -run '^TestDocker$$' ./integration/

# A real kubelet: etcd, kube-apiserver and a kubelet (Kubernetes v1.37.2) in a private mount and
# network namespace, on a private CRI containerd with the handlers of contrib/containerd-config.toml
# (paths rewritten); contrib/runtimeclass.yaml applied and pods driven with kubectl (TestKubernetes).
# Then the fleet path (TestKubernetesFleet): a second cluster with kube-controller-manager and
# kube-scheduler, whose containerd has no graceful handler, runs contrib/node-installer's and
# contrib/exporter's DaemonSets from a node image imported without a registry. install-kubernetes.sh
# builds the Kubernetes binaries and etcd into the stack cache.
test-kubernetes: stack
	bash integration/stack/install-kubernetes.sh
	GRACEFUL_KUBERNETES=1 $(GO) test -count=1 -v -timeout 25m -run '^TestKubernetes(Fleet)?$$' ./integration/

# nerdctl: the real nerdctl v2.4.2 binary (install-nerdctl.sh builds it from its module source
# into the stack cache, about a minute on first use) against the stack's containerd, with a data
# root of its own and no CNI network: run --runtime, stop, stop -t, kill, an image's STOPSIGNAL,
# --annotation, --init and graceful-init, rm -f, under the stock runtime and graceful.
test-nerdctl: stack
	bash integration/stack/install-nerdctl.sh
	$(GO) test -tags nerdctl -count=1 -v -timeout 15m -run '^TestNerdctl$$' ./integration/

# Real inits and real servers from Debian's packages (tini, dumb-init, catatonit, supervisord,
# runit, nginx, PostgreSQL 15, a JVM, Python), each under the stock shim and under graceful in the
# same run. install-real.sh builds their root file system with mmdebstrap into the stack cache
# (about a minute on first use). docs/real-world.md has the results.
test-real: stack
	bash integration/stack/install-real.sh
	$(GO) test -tags real -count=1 -v -timeout 20m -run '^TestReal' ./integration/

# The core stop tests, the isolation tests and the CRI shared-PID and hostPID pods in cgroup v2
# unified mode, on this cgroup v1 (hybrid) host: a private mount namespace with a cgroup2 hierarchy
# mounted over /sys/fs/cgroup, where containerd and runc see unified mode (GRACEFUL_CGROUP2=1 makes
# the stack refuse anything else and check every container's cgroups), and the process package's
# cgroup membership tests in the same hierarchy, with the one that runs its binary in a PID
# namespace of its own (whose guard must leave the outer binary's cgroup alone).
CGROUP2_NAMES := $(COMPAT_NAMES)|TestStopNeverSignalsOutsideTheContainer|TestSharedPIDProcessWithExitedMainThreadIsDrained|TestCRI
CGROUP2_TESTS := ^($(CGROUP2_NAMES))$$/.*/^(shared-pid|host-pid)$$
test-cgroup2: stack
	GRACEFUL_RUN='$(CGROUP2_TESTS)' GRACEFUL_CGROUP2=1 unshare -m sh -ec ' \
		mount --make-rprivate /; \
		mount -t cgroup2 none /sys/fs/cgroup; \
		$(GO) test -count=1 -v -timeout 10m -run "Cgroup|^TestDrainOutsideTheInitialPIDNamespaceWaitsForCleanupHelpers$$" ./process/; \
		$(GO) test -count=1 -v -timeout 15m -run "$$GRACEFUL_RUN" ./integration/'

# Stability: the process/, shim/ and initproc/ suites STRESS_COUNT times and the core integration
# stop tests (and every integration test the history records as flaky) STRESS_INTEGRATION_COUNT
# times, one package at a time; prints each test that failed at least once, with its count. CI
# runs the short version (make test-stress STRESS_COUNT=3 STRESS_INTEGRATION_COUNT=3).
STRESS_COUNT ?= 20
STRESS_INTEGRATION_COUNT ?= 5
STRESS_NAMES := $(COMPAT_NAMES)|TestSigkillDuringDrainStopsAtOnce|TestInitClassicCases|TestInitStopRightAfterStartEnds|TestInitReapsAnOrphanThatPID1NeverWaitsFor|TestStopReportFollowsTheExitEvent|TestSignallerLeavesOnceItHasSignalled|TestTiniAsInitLetsTheHelperFinish|TestTraplessScriptWhoseServerExitsFirst|TestInitMainThatExitsAtOnceIsNotMistaken|TestGroupForwardingInitLetsForkingHandlersFinish|TestOrphansAreReaped
test-stress: stack
	bash integration/stack/stress.sh $(STRESS_COUNT) $(STRESS_INTEGRATION_COUNT) '$(STRESS_NAMES)'

# An interrupted run leaves nothing behind: the process and integration test binaries are
# SIGKILLed in the middle of their runs; what they started dies with them or is removed by the
# next run's TestMain, and `ps aux` still answers within 5 s.
test-interrupt: stack
	bash integration/stack/interrupt-check.sh

# The process/ suite and the core stop tests as on older kernels: shims, graceful-hold and the test
# binaries built with the kernelemu tag, where GRACEFUL_EMULATE_KERNEL=R makes each feature newer
# than release R fail as that kernel fails it (see process/kernel.go; production builds ignore the
# variable). Two points: 6.1 (no NS_GET_TGID_IN_PIDNS, no PIDFD_GET_PID_NAMESPACE) and 5.10 (nor
# epoll_pwait2); then Create on 5.2 (no pidfd_open), which the shim refuses.
KERNEL_EMU_POINTS := 6.1 5.10
KERNEL_EMU_NAMES := $(STRESS_NAMES)|TestStopNeverSignalsOutsideTheContainer|TestSharedPIDProcessWithExitedMainThreadIsDrained|TestDrainSignalsTheNamespaceAtOnce|TestStandaloneInitDrainsWhenMainExits
test-kernel-emulated: stack
	set -e; for k in $(KERNEL_EMU_POINTS); do \
		echo "== as on Linux $$k"; \
		GRACEFUL_EMULATE_KERNEL=$$k $(GO) test -tags kernelemu -count=1 -timeout 10m ./process/; \
		GRACEFUL_EMULATE_KERNEL=$$k $(GO) test -tags kernelemu -count=1 -v -timeout 20m -run '^($(KERNEL_EMU_NAMES)|TestShimsBehaveAsTheEmulatedKernel)$$' ./integration/; \
	done
	$(GO) test -tags kernelemu -count=1 -v -timeout 10m -run '^TestCreateRefusedBelowTheMinimumKernel$$' ./integration/

# The process/ suite and the core stop tests on a real older kernel: Debian 12's Linux 6.1, booted
# under qemu (TCG), with the host's file system over 9p and a private containerd, runc and the shim
# inside the guest (integration/stack/kernel-vm.sh). Waits and bounds are stretched tenfold
# (GRACEFUL_TEST_SLOWDOWN): the emulated CPUs run the suite about ten times slower. About 5 min.
test-kernel-6.1: stack
	VM_INTEGRATION_ARGS='-test.v -test.timeout 60m -test.run ^($(KERNEL_EMU_NAMES))$$' bash integration/stack/kernel-vm.sh

# Every test-name list above must name existing tests: a rename would otherwise empty a -run
# regex silently (and the process package's cgroup tests must still match "Cgroup").
check-test-names:
	bash integration/stack/check-test-names.sh ./integration $(subst |, ,$(CGROUP2_NAMES)) $(subst |, ,$(STRESS_NAMES)) \
		$(subst |, ,$(KERNEL_EMU_NAMES)) TestConcurrentStopsUnderLoad TestComparePassSets TestCritestPassSetMatchesRunc TestDocker TestKubernetes TestKubernetesFleet
	@$(GO) test -list 'Cgroup' ./process/ | grep -q '^Test' || { echo "check-test-names: no test in ./process matches Cgroup"; exit 1; }

test: stack check-test-names vet test-unit test-integration test-oldest test-cgroup2

# A short fuzz pass over the annotation and options-file parsers (FUZZTIME each): a count of
# executions, not a duration, since a duration's end can fail the run with "context deadline
# exceeded" and no crasher (golang/go#75804, not fixed in go1.26; seen in CI on 2026-12-07).
# 50 000 is what FuzzParseConfigFile ran in 10 s here.
FUZZTIME ?= 50000x
fuzz:
	$(GO) test -timeout 10m -run '^$$' -fuzz '^FuzzParseConfigFile$$' -fuzztime $(FUZZTIME) ./shim/
	$(GO) test -timeout 10m -run '^$$' -fuzz '^FuzzApplyAnnotations$$' -fuzztime $(FUZZTIME) ./shim/

# Benchmarks against the stock runc shim in the same run, and of graceful-init against tini (not a
# CI gate): writes docs/benchmarks.md, docs/stop-latency.svg, docs/init-start-latency.svg and
# docs/init-memory.svg. bench-smoke is the short version CI runs so they keep working.
bench: stack
	$(GO) run ./integration/bench -reps 5 -out docs

bench-smoke: stack
	$(GO) run ./integration/bench -smoke

demo: stack
	$(GO) run ./integration/demo

clean:
	rm -rf bin
