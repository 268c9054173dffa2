//go:build kernelemu

package process

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestEmulatedKernelTakesTheFallbacks: under GRACEFUL_EMULATE_KERNEL, each feature newer than the
// emulated release fails as that kernel fails it, and the code takes its fallback (the flag each
// call site latches), while membership still answers: the test that the emulation is in effect
// for the suites run under it.
func TestEmulatedKernelTakesTheFallbacks(t *testing.T) {
	k := EmulatedKernel()
	if k == (KernelRelease{}) {
		t.Fatalf("set %s (make test-kernel-emulated)", EmulateKernelEnv)
	}
	ns := startNamespace(t, `sleep 60 & echo ready; wait`)
	ns.expect(t, "ready")
	scope := ns.scope(t)
	members := scope.mustMembers(t)
	if len(members) == 0 {
		t.Fatal("the namespace has no member")
	}
	h, err := Open(members[0])
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, ok := scope.memberByHandle(h); !ok {
		t.Fatalf("process %d is not a member through its pidfd", members[0])
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	if _, err := epollWait(ep, make([]unix.EpollEvent, 1), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		feature kernelFeature
		latched bool
	}{
		{featureNSGetTgid, pidnsTranslationUnsupported.Load()},
		{featurePidfdGetPidNS, pidfdNamespaceUnsupported.Load()},
		{featureEpollPwait2, epollPwait2Unsupported.Load()},
	} {
		if want := k.before(c.feature.since); c.latched != want {
			t.Errorf("as on %s: %s (Linux %s) fell back %v, want %v", k, c.feature.name, c.feature.since, c.latched, want)
		}
	}
}

// mustMembers lists the scope's members.
func (s *Scope) mustMembers(t *testing.T) []int {
	t.Helper()
	m, err := s.Members()
	if err != nil {
		t.Fatal(err)
	}
	return m
}
