package process

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/internal/testguard"
	"github.com/graceful-shim/graceful/internal/testtime"
)

// A container in its own cgroup: its members are found from the cgroup (and its sub-cgroups),
// and a host process put into that cgroup is not one of them.
func TestMembersAreFoundFromTheContainersCgroup(t *testing.T) {
	root, _ := cgroupRoot(t)
	base := testCgroups(t, root, "sub")
	ns := startNamespaceIn(t, base, `sleep 60 & sleep 60 & sleep 60 & echo ready; wait`)
	ns.awaitExeced(t, "sleep", 3)
	scope := ns.scope(t)
	if scope.cgroupDir != base {
		t.Fatalf("scope lists candidates from %q, want the container's cgroup %q", scope.cgroupDir, base)
	}
	all, err := scope.AllMembers()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 {
		t.Fatalf("the full pass found members %v, want 3", all)
	}
	moveTo(t, filepath.Join(base, "sub"), all[2]) // a member in a sub-cgroup
	outsider := sleeper(t)
	moveTo(t, base, outsider) // a host process in the container's cgroup
	members, err := scope.Members()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(members)
	slices.Sort(all)
	if !slices.Equal(members, all) {
		t.Fatalf("Members() = %v, want %v (the full pass's), without the outsider %d", members, all, outsider)
	}
	// What the shim's choice of signalling rests on (shim/plan.go decideSignalling).
	if size, ok := scope.Size(); !ok || size < len(all) {
		t.Fatalf("size %d (ok %v), want at least the %d members", size, ok, len(all))
	}
	if tasks, err := HostTasks(); err != nil || tasks < len(all) {
		t.Fatalf("host tasks %d (%v)", tasks, err)
	}
}

// A container with more processes than one page of cgroup.procs holds (a kernel seq_file hands
// it out a page per read) has every one of them among its candidates.
func TestCandidatesOfALargeContainer(t *testing.T) {
	root, _ := cgroupRoot(t)
	base := testCgroups(t, root)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	const n = 1500 // about 9 KB of cgroup.procs
	// As blockers(n, fifo) starts them, each spawner saying when it has started all of its own.
	spawner := func(k, i int) string {
		return fmt.Sprintf("(for i in $(seq %d); do read x < %q & done; echo spawned%d; read x < %q) &\n", k-1, fifo, i, fifo)
	}
	ns := startNamespaceIn(t, base, spawner(n/2, 0)+spawner(n-n/2, 1)+"echo ready; wait")
	for i := 0; i < 2; i++ {
		ns.expectWithin(t, fmt.Sprintf("spawned%d", i), testtime.Scale(2*time.Minute)) // 1500 forks on a loaded machine
	}
	scope := ns.scope(t)
	if all, err := scope.AllMembers(); err != nil || len(all) != n {
		t.Fatalf("the namespace holds %d members (%v) once its spawners are done, want %d", len(all), err, n)
	}
	members, err := scope.Members()
	if err != nil {
		t.Fatal(err)
	}
	listed, ok := scope.cgroupList()
	if len(members) != n || !ok || len(listed) < n {
		t.Fatalf("Members() found %d, the cgroup list %d (ok %v), want %d", len(members), len(listed), ok, n)
	}
	// Its size, for the choice of signalling at once, is read from the pids controller's counter where there is one.
	if size, ok := scope.Size(); !ok || size < n || (strings.HasSuffix(root, "/pids") && scope.pidsCounter == "") {
		t.Fatalf("size %d (ok %v, from %q under %s), want at least %d, from pids.current under a pids hierarchy", size, ok, scope.pidsCounter, root, n)
	}
	if !scope.CanSignalAtOnce() {
		t.Fatal("a PID namespace with a cgroup of its own: want it signallable at once")
	}
}

// A process that entered the container's PID namespace by setns (nsenter) from outside its
// cgroup is in none of the container's own lists: the full pass over /proc finds it, and it is
// drained like the rest. The process that ran nsenter, outside the namespace, is left alone.
func TestDrainFindsAProcessThatEnteredByNsenter(t *testing.T) {
	root, _ := cgroupRoot(t)
	base := testCgroups(t, root)
	dir := t.TempDir()
	// The member waits, in its TERM handler, until the straggler has handled TERM too, so that the
	// drain cannot end before the full pass has reached the straggler.
	ns := startNamespaceIn(t, base, fmt.Sprintf(`
sh -c 'trap "while [ ! -f %[1]s/straggler ]; do sleep 0.01; done; echo m > %[1]s/member; exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
echo ready; wait`, dir))
	ns.expect(t, "trapped") // the member's trap is set
	nsenter := exec.Command("nsenter", "-t", fmt.Sprint(ns.init), "-p", "--", "sh", "-c",
		fmt.Sprintf(`trap "echo t > %s/straggler; exit 0" TERM; echo in; while :; do sleep 0.05; done`, dir))
	out, err := nsenter.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := testguard.Start(nsenter); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsenter.Process.Kill() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "in" {
		t.Fatalf("nsenter's shell: %q, %v", line, err)
	}
	straggler := appendChildren(nil, nsenter.Process.Pid)
	if len(straggler) != 1 {
		t.Fatalf("nsenter has children %v, want one", straggler)
	}
	// A process that started in the drain's own clock tick could be one started during the drain,
	// which the full pass leaves alone: start the drain a tick later. (A wait on the clock itself,
	// which no event tells of, not on a process getting ready.)
	started, ok := startTime(straggler[0])
	if !ok {
		t.Fatal("no start time for nsenter's child")
	}
	for bootTicks() <= started {
		time.Sleep(time.Millisecond)
	}
	scope := ns.scope(t)
	members, _ := scope.Members()
	all, _ := scope.AllMembers()
	if slices.Contains(members, straggler[0]) || !slices.Contains(all, straggler[0]) {
		t.Fatalf("nsenter's child %d: in the container's own lists %v, in the full pass %v; want only the latter", straggler[0], members, all)
	}

	report := Drain(context.Background(), scope, DrainConfig{Signal: unix.SIGTERM, KillWait: testKillWait, KillSweeps: testKillSweeps}, 20*time.Second)
	if got := readMarker(t, filepath.Join(dir, "straggler")); got != "t" {
		t.Errorf("the nsenter'd process did not run its TERM handler (marker %q)", got)
	}
	if got := readMarker(t, filepath.Join(dir, "member")); got != "m" {
		t.Errorf("the member did not finish its TERM handler (marker %q)", got)
	}
	if !report.HostScanDone || report.HostScanFound < 1 {
		t.Errorf("report: host scan done %v, found %d; want done, and the nsenter'd process found", report.HostScanDone, report.HostScanFound)
	}
	if report.GraceExpired || report.Count(Killed) > 0 {
		t.Errorf("report: grace expired %v, killed %d; want every process gone on TERM", report.GraceExpired, report.Count(Killed))
	}
	// nsenter itself (outside the namespace) was not signalled: it exits with its child's status.
	waited := make(chan error, 1)
	go func() { waited <- nsenter.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("nsenter: %v, want exit status 0 (its child exited 0 on TERM, and nsenter got no signal)", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("nsenter has not exited 10 s after the drain: its child was not drained")
		unix.Kill(straggler[0], unix.SIGKILL)
		<-waited
	}
}

// Membership read through a pidfd (PIDFD_GET_PID_NAMESPACE) agrees with membership read through
// /proc for every process on the host: the container's own, those of a namespace nested in it,
// a sibling namespace's, and the host's.
func TestMembershipThroughThePidfdAgreesWithProc(t *testing.T) {
	ns := startNamespace(t, `sleep 60 & unshare --pid --fork sleep 60 & echo ready; wait`)
	ns.awaitExeced(t, "sleep", 2) // the nested sleep too: unshare has forked
	sibling := startNamespace(t, `sleep 60 & echo ready; wait`)
	scope := ns.scope(t)
	// The ioctl, where the kernel has it, names the caller's own namespace as /proc does.
	self, err := Open(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if fd, err := unix.IoctlRetInt(self.fd, pidfdGetPidNamespace); err == nil {
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		unix.Close(fd)
		if st.Ino != scope.selfNS {
			t.Fatalf("PIDFD_GET_PID_NAMESPACE gave namespace %d for the caller, /proc says %d: wrong request", st.Ino, scope.selfNS)
		}
	} else {
		t.Logf("this kernel has no PIDFD_GET_PID_NAMESPACE (%v): both go through /proc", err)
	}
	pids, err := allPIDs()
	if err != nil {
		t.Fatal(err)
	}
	members := 0
	for _, pid := range pids {
		h, err := Open(pid)
		if err != nil {
			continue
		}
		inoPidfd, viaPidfd := scope.memberByHandle(h)
		h.Close()
		inoProc, viaProc := scope.member(pid)
		if viaPidfd != viaProc || inoPidfd != inoProc {
			t.Errorf("process %d: through the pidfd namespace %d, member %v; through /proc namespace %d, member %v", pid, inoPidfd, viaPidfd, inoProc, viaProc)
		}
		if viaPidfd {
			members++
		}
		if pid == sibling.init && viaPidfd {
			t.Errorf("the sibling namespace's init %d counts as a member", pid)
		}
	}
	// sleep, the nested unshare and its sleep
	if members != 3 {
		t.Errorf("%d members, want 3", members)
	}
}

// Membership read with one ioctl on the container's namespace (NS_GET_TGID_IN_PIDNS) agrees with
// membership read through /proc for every process on the host: the container's own, a zombie of
// it, those of a namespace nested in it, a sibling namespace's and the host's. Once the scope is
// closed, the check goes through /proc again, with the same answers.
func TestMembershipThroughTheNamespaceAgreesWithProc(t *testing.T) {
	// The zombie: true, whose parent exec's a sleep that never waits for it.
	ns := startNamespace(t, `sleep 60 & unshare --pid --fork sleep 60 & sh -c 'true & exec sleep 60' & echo ready; wait`)
	ns.awaitExeced(t, "sleep", 3) // the nested sleep and sh's: unshare has forked, sh has exec'd
	sibling := startNamespace(t, `sleep 60 & echo ready; wait`)
	scope := ns.scope(t)
	if _, known := scope.visible(ns.init); !known {
		if kernelAtLeast(t, 6, 8) {
			t.Fatal("the kernel refused NS_GET_TGID_IN_PIDNS, which it has since Linux 6.8")
		}
		t.Skip("this kernel has no NS_GET_TGID_IN_PIDNS (Linux 6.8): membership goes through /proc alone")
	}
	waitZombieMember(t, scope)
	pids, err := allPIDs()
	if err != nil {
		t.Fatal(err)
	}
	check := func(closed bool) {
		members, zombies := 0, 0
		for _, pid := range pids {
			_, known := scope.visible(pid)
			if known == closed {
				t.Fatalf("closed %v: the namespace check of %d answered %v", closed, pid, known)
			}
			viaNS := scope.Contains(pid)
			_, viaProc := scope.member(pid)
			if viaNS != viaProc {
				t.Errorf("closed %v: process %d is a member %v through the namespace, %v through /proc", closed, pid, viaNS, viaProc)
			}
			if !viaNS {
				continue
			}
			members++
			if pid == sibling.init {
				t.Errorf("the sibling namespace's init %d counts as a member", pid)
			}
			if st, err := ReadStatus(pid); err == nil && st.State == 'Z' {
				zombies++
			}
		}
		// sleep, the nested unshare and its sleep, sh's sleep and its zombie
		if members != 5 || zombies != 1 {
			t.Errorf("closed %v: %d members, %d of them zombies; want 5 and 1", closed, members, zombies)
		}
	}
	check(false)
	scope.Close()
	check(true)
}

// waitZombieMember waits until a member of scope is a zombie.
func waitZombieMember(t *testing.T, scope *Scope) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		members, err := scope.Members()
		if err != nil {
			t.Fatal(err)
		}
		for _, pid := range members {
			if st, err := ReadStatus(pid); err == nil && st.State == 'Z' {
				return
			}
		}
	}
	t.Fatal("no member of the namespace became a zombie in 10 s")
}

// kernelAtLeast reports whether the running kernel is at least major.minor: the emulated one, in a
// kernelemu build that emulates one.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	t.Helper()
	if emulatedKernel != (KernelRelease{}) {
		return !emulatedKernel.before(KernelRelease{major, minor})
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var maj, min int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &maj, &min); err != nil {
		t.Fatalf("kernel release %q: %v", unix.ByteSliceToString(u.Release[:]), err)
	}
	return maj > major || maj == major && min >= minor
}
