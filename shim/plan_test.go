package shim

import (
	"errors"
	"strings"
	"testing"

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
