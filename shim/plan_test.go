package shim

import (
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The rows are docs/design.md's tables: "Kill: which signals start a stop", "Stop order" with its
// fallbacks, and the drain's last step (what init is sent).

func TestDecideKill(t *testing.T) {
	def := DefaultPolicy()
	pass := DefaultPolicy()
	pass.Passthrough = true
	for _, tc := range []struct {
		name       string
		policy     Policy
		sig        unix.Signal
		inProgress StopOrder
		want       KillAction
	}{
		{"a stop signal starts a stop", def, unix.SIGTERM, "", StartStop},
		{"another signal goes to init only", def, unix.SIGHUP, "", Forward},
		{"SIGKILL with no stop is forwarded", def, unix.SIGKILL, "", Forward},
		{"a sandbox forwards every signal", pass, unix.SIGTERM, "", Forward},
		{"a sandbox forwards SIGKILL", pass, unix.SIGKILL, "", Forward},
		{"SIGKILL aborts a children-first stop", def, unix.SIGKILL, ChildrenFirst, AbortAndForward},
		{"SIGKILL aborts an init-first stop", def, unix.SIGKILL, InitFirst, AbortAndForward},
		{"SIGKILL aborts a stop that is starting", def, unix.SIGKILL, starting, AbortAndForward},
		{"a repeated stop signal reaches an init-first init", def, unix.SIGTERM, InitFirst, ForwardToInit},
		{"a repeated stop signal waits for the children-first order", def, unix.SIGTERM, ChildrenFirst, Absorb},
		{"a concurrent stop signal joins the stop being started", def, unix.SIGTERM, starting, Absorb},
		{"another signal during a stop goes to init", def, unix.SIGUSR1, ChildrenFirst, Forward},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := decideKill(tc.policy, tc.sig, tc.inProgress); got != tc.want {
				t.Fatalf("decideKill(%s, in progress %q) = %s, want %s", unix.SignalName(tc.sig), tc.inProgress, got, tc.want)
			}
		})
	}
}

func TestDecideStop(t *testing.T) {
	order := func(o StopOrder) Policy { p := DefaultPolicy(); p.StopOrder = o; return p }
	refused := errors.New("operation not permitted")
	for _, tc := range []struct {
		name    string
		policy  Policy
		init    InitStatus
		want    Strategy
		order   StopOrder
		noteHas string
	}{
		{"auto: init traps the signal → init-first", order(Auto), InitStatus{Handles: true}, HoldInitThenDrain, InitFirst, ""},
		{"auto: PID 1 without a trap → children-first", order(Auto), InitStatus{NamespaceInit: true}, DrainThenInit, ChildrenFirst, ""},
		{"auto: init ignores the signal → children-first", order(Auto), InitStatus{Ignores: true}, DrainThenInit, ChildrenFirst, ""},
		{"auto: tracer refused, init handles it → forwarded", order(Auto), InitStatus{Handles: true, TracerFailed: refused}, ForwardOnly, "", "cannot hold init's exit"},
		{"init-first: init traps the signal → init-first", order(InitFirst), InitStatus{Handles: true}, HoldInitThenDrain, InitFirst, ""},
		{"init-first: init does not handle it → children-first, not a zap", order(InitFirst), InitStatus{NamespaceInit: true}, DrainThenInit, ChildrenFirst, "children-first instead"},
		{"init-first: tracer refused, init handles it → forwarded", order(InitFirst), InitStatus{Handles: true, TracerFailed: refused}, ForwardOnly, "", "operation not permitted"},
		{"init-first: tracer refused, no handler → children-first", order(InitFirst), InitStatus{TracerFailed: refused}, DrainThenInit, ChildrenFirst, "children-first instead"},
		{"children-first: init traps the signal", order(ChildrenFirst), InitStatus{Handles: true}, DrainThenInit, ChildrenFirst, ""},
		{"children-first: PID 1 without a trap", order(ChildrenFirst), InitStatus{NamespaceInit: true}, DrainThenInit, ChildrenFirst, ""},
		{"auto under graceful-init → init-first without a tracer", order(Auto), InitStatus{Handles: true, InjectedInit: true}, SignalInitAwaitMain, InitFirst, ""},
		{"init-first under graceful-init → without a tracer", order(InitFirst), InitStatus{Handles: true, InjectedInit: true}, SignalInitAwaitMain, InitFirst, ""},
		{"children-first under graceful-init drains the main process too", order(ChildrenFirst), InitStatus{Handles: true, InjectedInit: true}, DrainThenInit, ChildrenFirst, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := decideStop(tc.policy, unix.SIGTERM, tc.init)
			if p.Strategy != tc.want || p.Order != tc.order {
				t.Fatalf("plan %+v, want strategy %s, order %q", p, tc.want, tc.order)
			}
			notes := strings.Join(p.Notes, "; ")
			if tc.noteHas == "" && notes != "" || !strings.Contains(notes, tc.noteHas) {
				t.Fatalf("notes %q, want them to say %q", notes, tc.noteHas)
			}
		})
	}
}

func TestInitSignal(t *testing.T) {
	for _, tc := range []struct {
		name string
		init InitStatus
		want unix.Signal
	}{
		{"init traps it: the signal itself", InitStatus{Handles: true, NamespaceInit: true}, unix.SIGTERM},
		{"PID 1 without a trap would drop it: SIGKILL", InitStatus{NamespaceInit: true}, unix.SIGKILL},
		{"init ignores it: SIGKILL", InitStatus{Ignores: true}, unix.SIGKILL},
		{"not PID 1, default action: the signal itself", InitStatus{}, unix.SIGTERM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := initSignal(unix.SIGTERM, tc.init)
			if got != tc.want || (got != unix.SIGTERM) != (why != "") {
				t.Fatalf("initSignal = %s (%q), want %s, with a note only when changed", unix.SignalName(got), why, unix.SignalName(tc.want))
			}
		})
	}
}

func TestDecideBegin(t *testing.T) {
	if got := decideBegin(true); got != StartStop {
		t.Fatalf("running container: %s, want %s", got, StartStop)
	}
	if got := decideBegin(false); got != Forward {
		t.Fatalf("container not running (created, paused, stopped): %s, want %s", got, Forward)
	}
}

// The tracer starts before the plan whenever the plan may hold init; a children-first drain holds
// an init that is PID 1 of its namespace.
func TestMayHold(t *testing.T) {
	order := func(o StopOrder) Policy { p := DefaultPolicy(); p.StopOrder = o; return p }
	for _, tc := range []struct {
		name                        string
		policy                      Policy
		namespaceInit, injectedInit bool
		want                        bool
	}{
		{"auto, PID 1", order(Auto), true, false, true},
		{"auto, shared namespace", order(Auto), false, false, true},
		{"init-first, shared namespace", order(InitFirst), false, false, true},
		{"children-first, PID 1: held if it exits by itself", order(ChildrenFirst), true, false, true},
		{"children-first, shared namespace: nothing to hold", order(ChildrenFirst), false, false, false},
		{"graceful-init holds the namespace itself", order(Auto), true, true, false},
	} {
		if got := mayHold(tc.policy, tc.namespaceInit, tc.injectedInit); got != tc.want {
			t.Errorf("%s: mayHold = %v, want %v", tc.name, got, tc.want)
		}
	}
	if !holdsDuringDrain(InitStatus{NamespaceInit: true}) || holdsDuringDrain(InitStatus{Handles: true}) {
		t.Error("holdsDuringDrain: want a hold for PID 1 of the namespace only")
	}
}

// The drain signals at once when kill(-1) over the host costs less than a pidfd per member, the
// scope allows it, and every member gets the same signal.
func TestDecideSignalling(t *testing.T) {
	def := DefaultPolicy()
	facts := func(size, host int) ScopeFacts {
		return ScopeFacts{CanSignalAtOnce: true, Size: size, SizeKnown: true, HostTasks: host}
	}
	for _, tc := range []struct {
		name    string
		sig     unix.Signal
		facts   ScopeFacts
		want    bool
		noteHas string
	}{
		{"1 000 members on a host of 2 000 tasks", unix.SIGTERM, facts(1000, 2000), true, ""},
		{"10 members on a host of 20 000 tasks", unix.SIGTERM, facts(10, 20000), false, ""},
		{"1 000 members on a host of 100 000 tasks", unix.SIGTERM, facts(1000, 100000), false, ""},
		{"5 000 members on a host of 100 000 tasks", unix.SIGTERM, facts(5000, 100000), true, ""},
		{"host size unknown", unix.SIGTERM, facts(100, 0), true, ""},
		{"size unknown", unix.SIGTERM, ScopeFacts{CanSignalAtOnce: true, HostTasks: 100}, false, ""},
		{"a shared PID namespace or no cgroup", unix.SIGTERM, ScopeFacts{Size: 1000, SizeKnown: true, HostTasks: 100}, false, ""},
		{"the image's SIGQUIT for its handlers, TERM for the rest", unix.SIGQUIT, facts(1000, 2000), false, "member by member"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, note := decideSignalling(def, tc.sig, tc.facts)
			if got != tc.want || !strings.Contains(note, tc.noteHas) || (tc.noteHas == "") != (note == "") {
				t.Fatalf("decideSignalling = %v (note %q), want %v (note with %q)", got, note, tc.want, tc.noteHas)
			}
		})
	}
}

// The grace is the policy's, cut to end within Kubernetes' budget when there is one.
func TestDrainGrace(t *testing.T) {
	p := DefaultPolicy() // 10 s
	if g, note := drainGrace(p, 3*time.Second); g != 10*time.Second || note != "" {
		t.Fatalf("no budget: %v (%q), want 10s", g, note)
	}
	p.StopBudget = 8 * time.Second
	if g, note := drainGrace(p, 3*time.Second); g != 5*time.Second || !strings.Contains(note, "kubelet") {
		t.Fatalf("8 s budget, 3 s gone: %v (%q), want 5s, noted", g, note)
	}
	if g, _ := drainGrace(p, 9*time.Second); g != 0 {
		t.Fatalf("budget spent: %v, want 0", g)
	}
	p.StopBudget = time.Minute
	if g, note := drainGrace(p, time.Second); g != 10*time.Second || note != "" {
		t.Fatalf("a budget longer than the grace: %v (%q), want 10s", g, note)
	}
}
