package shim

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/process"
)

// This file is the whole stop policy: what a Kill does (decideKill, decideBegin), whether init's
// exit may be held (mayHold, holdsDuringDrain), how a stop runs (decideStop), how the drain
// signals (decideSignalling), its bounds (drainGrace, killWait, killSweeps) and what init is
// finally sent (initSignal). Everything else carries these out, from facts process/ reads.

// KillAction is what the service does with one Kill of a container's init.
type KillAction string

const (
	// Forward: hand the Kill to the runc service unchanged, as the stock shim would.
	Forward KillAction = "forward"
	// StartStop: begin a graceful stop.
	StartStop KillAction = "start-stop"
	// AbortAndForward: end the stop in progress (the drain and any hold) and forward the SIGKILL.
	AbortAndForward KillAction = "abort-and-forward"
	// ForwardToInit: a stop signal repeated during an init-first stop reaches init, as with the
	// stock shim.
	ForwardToInit KillAction = "forward-to-init"
	// Absorb: a stop signal repeated during a children-first stop is left to the stop, which
	// signals init only once the others are drained.
	Absorb KillAction = "absorb"
)

// starting is the order of a stop that has been claimed but not yet planned.
const starting StopOrder = "starting"

// MainExited is the order of the drain after the main process's own exit under graceful-init.
const MainExited StopOrder = "main-exit"

// decideKill is the Kill decision table. inProgress is the order of the stop in progress
// (starting while it is being planned), "" when none is.
//
//	signal                  stop in progress            action
//	any (passthrough)       any                         forward
//	SIGKILL                 any                         abort the stop, forward
//	SIGKILL, or not a stop  none                        forward
//	  signal
//	a stop signal           none                        start a stop
//	a stop signal           init-first                  forward to init (as the stock shim would)
//	a stop signal           starting or children-first  absorb: the stop signals init in order
func decideKill(p Policy, sig unix.Signal, inProgress StopOrder) KillAction {
	switch {
	case p.Passthrough:
		return Forward
	case sig == unix.SIGKILL && inProgress != "":
		return AbortAndForward
	case sig == unix.SIGKILL || !p.IsStopSignal(sig):
		return Forward
	case inProgress == InitFirst:
		return ForwardToInit
	case inProgress != "":
		return Absorb
	}
	return StartStop
}

// decideBegin forwards a claimed stop's Kill when the container is not running (created, paused,
// stopped): the runc service answers as it always has.
func decideBegin(running bool) KillAction {
	if !running {
		return Forward
	}
	return StartStop
}

// InitStatus is what a stop observes of init before it starts.
type InitStatus struct {
	// Handles: init will act on the stop signal (process.Disposition.Handles).
	Handles bool
	// Disposition is how init's treatment of the stop signal was read (process.ReadDisposition).
	Disposition process.Disposition
	// Ignores: init explicitly ignores the stop signal.
	Ignores bool
	// NamespaceInit: init is PID 1 of its PID namespace, so the kernel drops a signal it does not
	// handle (no zap follows unless it exits).
	NamespaceInit bool
	// TracerFailed, if set, is why the tracer could not attach; the plan is asked again with it.
	TracerFailed error
	// InjectedInit: init is graceful-init, which passes the signal to the main process and, once
	// that exits, holds the namespace open until the rest is gone.
	InjectedInit bool
}

// Strategy is how a stop runs.
type Strategy string

const (
	// ForwardOnly: the stop signal goes to init as with the stock shim; there is no drain.
	ForwardOnly Strategy = "forward"
	// DrainThenInit: drain every process but init, then signal init (children-first).
	DrainThenInit Strategy = "drain-then-init"
	// HoldInitThenDrain: trace init, signal it, drain the rest while its exit is held (init-first).
	HoldInitThenDrain Strategy = "hold-init-then-drain"
	// SignalInitAwaitMain: signal graceful-init, which passes it to the main process; drain the
	// rest when that exits (init-first without a tracer: graceful-init holds the namespace open).
	SignalInitAwaitMain Strategy = "signal-init-await-main"
	// DrainOnly: drain every process but init, and nothing else (after the main process exited
	// by itself under graceful-init; init exits once the rest is gone).
	DrainOnly Strategy = "drain-only"
)

// Plan is a stop's decision: the order and strategy, and why.
type Plan struct {
	Order    StopOrder // the order used ("" when forwarded)
	Strategy Strategy
	Notes    []string
}

// decideStop is the stop order, from the policy and what init looks like now:
//
//	policy          init                                   plan
//	auto            handles the signal, tracer attaches    init-first (hold)
//	auto            handles it, tracer fails               forward (init shuts down itself)
//	auto            does not handle it                     children-first
//	init-first      handles it, tracer attaches            init-first (hold)
//	init-first      handles it, tracer fails               forward
//	init-first      does not handle it                     children-first: init would die of
//	                                                       the signal or of SIGKILL, and a task
//	                                                       with a fatal signal pending is not
//	                                                       held at its exit (Linux >= 5.19), so
//	                                                       the kernel would zap the rest
//	children-first  any                                    children-first
//	auto or         graceful-init (injected)               init-first without a tracer:
//	init-first                                             graceful-init passes the signal to
//	                                                       the main process; the rest is drained
//	                                                       when that exits
//
// With graceful-init and children-first, the main process is drained with the rest.
func decideStop(p Policy, sig unix.Signal, init InitStatus) Plan {
	name := process.SignalName(sig)
	order := p.StopOrder
	if order == Auto {
		order = ChildrenFirst
		if init.Handles {
			order = InitFirst
		}
	}
	if p.StopOrder != ChildrenFirst && init.InjectedInit {
		return Plan{Order: InitFirst, Strategy: SignalInitAwaitMain}
	}
	if order == ChildrenFirst {
		return Plan{Order: ChildrenFirst, Strategy: DrainThenInit}
	}
	switch {
	case !init.Handles:
		return Plan{Order: ChildrenFirst, Strategy: DrainThenInit, Notes: []string{fmt.Sprintf(
			"init-first needs init to handle %s; it does not, and its exit cannot be held: children-first instead", name)}}
	case init.TracerFailed != nil:
		return Plan{Strategy: ForwardOnly, Notes: []string{fmt.Sprintf(
			"cannot hold init's exit: %v; init handles %s itself: forwarded", init.TracerFailed, name)}}
	}
	return Plan{Order: InitFirst, Strategy: HoldInitThenDrain}
}

// mayHold reports whether a stop starts the tracer (milliseconds) before its plan is made: whenever
// the plan may hold init, so not for an explicit children-first of an init that is not PID 1 of its
// namespace (no zap to prevent), and never under graceful-init, which holds the namespace itself.
func mayHold(p Policy, namespaceInit, injectedInit bool) bool {
	return !injectedInit && (p.StopOrder != ChildrenFirst || namespaceInit)
}

// holdsDuringDrain reports whether a children-first drain holds init at its exit should init exit
// by itself meanwhile: when init is PID 1, whose exit would zap a member still in its handler.
func holdsDuringDrain(init InitStatus) bool { return init.NamespaceInit }

// decideMainExit is the plan when the main process under graceful-init exits by itself.
func decideMainExit() Plan {
	return Plan{Order: MainExited, Strategy: DrainOnly}
}

// initSignal is what init is sent for the requested stop signal: the signal, or SIGKILL when init
// would drop or ignore it, so that the stop completes instead of hanging; the note says why.
func initSignal(sig unix.Signal, init InitStatus) (unix.Signal, string) {
	name := process.SignalName(sig)
	switch {
	case init.Handles:
		return sig, ""
	case init.NamespaceInit:
		return unix.SIGKILL, fmt.Sprintf("init has no %s handler and, as PID 1, would drop it: sent SIGKILL", name)
	case init.Ignores:
		return unix.SIGKILL, fmt.Sprintf("init ignores %s: sent SIGKILL", name)
	}
	return sig, ""
}

// observeInit reads init's status for the plan; st is its /proc status, read just before.
func observeInit(pid int, st process.Status, sig unix.Signal) (InitStatus, error) {
	disposition, err := process.ReadDisposition(pid, sig)
	if err != nil {
		return InitStatus{}, err
	}
	return InitStatus{Handles: disposition.Handles(), Disposition: disposition, Ignores: disposition == process.Ignored,
		NamespaceInit: st.NamespaceInit()}, nil
}

// observeRunningInit is observeInit, reading init's status first.
func observeRunningInit(pid int, sig unix.Signal) (InitStatus, error) {
	st, err := process.ReadStatus(pid)
	if err != nil {
		return InitStatus{}, err
	}
	return observeInit(pid, st, sig)
}

// reportedDisposition names init's disposition as read, except that a PID 1's default "drops".
func reportedDisposition(init InitStatus) string {
	if init.Disposition == process.Default && init.NamespaceInit {
		return "drops"
	}
	return string(init.Disposition)
}

// Signalling at once costs two kill(-1) walks of every host task (killCostPerTask each) plus the
// signaller's start; each member signalled through its own pidfd costs pidfdCostPerMember.
const (
	killCostPerTask    = 400 * time.Nanosecond
	signallerCost      = time.Millisecond
	pidfdCostPerMember = 20 * time.Microsecond
)

// ScopeFacts is what the drain's choice of signalling rests on, as process/ reads it.
type ScopeFacts struct {
	// CanSignalAtOnce: a PID namespace of its own and a cgroup to list (Scope.CanSignalAtOnce).
	CanSignalAtOnce bool
	// Size is the container's task count (process.Scope.Size), if SizeKnown.
	Size      int
	SizeKnown bool
	// HostTasks is the host's task count (process.HostTasks); 0 when it could not be read.
	HostTasks int
}

// decideSignalling reports whether the drain signals the namespace at once (kill(-1) from a
// signaller inside it) rather than through a pidfd per member: when the scope allows it and the
// members are many enough that kill(-1), whose cost grows with the host, costs less. A drain with
// a DrainStopSignal picks each member's signal, so it never signals at once; note says so.
func decideSignalling(p Policy, sig unix.Signal, f ScopeFacts) (atOnce bool, note string) {
	if !f.CanSignalAtOnce || !f.SizeKnown {
		return false, ""
	}
	if f.HostTasks > 0 && time.Duration(f.Size)*pidfdCostPerMember <= time.Duration(f.HostTasks)*killCostPerTask+signallerCost {
		return false, ""
	}
	if own := p.DrainStopSignal(sig); own != 0 {
		return false, fmt.Sprintf("signalled member by member: the processes that handle %s get it, the rest %s",
			process.SignalName(own), process.SignalName(p.DrainSignal))
	}
	return true, ""
}

// The bounds of a drain's end, once the grace period is over.
const (
	// killWait bounds the wait for SIGKILLed members (one in D state is reported as survived).
	killWait = 2 * time.Second
	// killSweeps bounds the SIGKILL sweeps, which a fork bomb would otherwise refill forever.
	killSweeps = 8
)

// drainGrace is the grace period of a drain starting elapsed after the stop began: the policy's,
// cut to end within the stop budget (kubelet's grace less a margin) if any; note says so.
func drainGrace(p Policy, elapsed time.Duration) (grace time.Duration, note string) {
	grace = p.GracePeriod
	if p.StopBudget > 0 {
		if left := max(p.StopBudget-elapsed, 0); left < grace {
			return left, fmt.Sprintf("grace period cut to %s to end before kubelet's SIGKILL", left.Round(time.Millisecond))
		}
	}
	return grace, ""
}
