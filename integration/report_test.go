package integration

import (
	"context"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"

	"github.com/graceful-shim/graceful/integration/stack"
)

// Every stop is published on containerd's event stream (topic /graceful/stop, as `ctr events`
// shows it): the order used, and per process the signals sent and how it ended.
func TestStopReportIsPublished(t *testing.T) {
	reports := subscribeReports(t)

	script := childTraps("child") + ignoringChild + `echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script,
		Annotations: map[string]string{"io.containerd.graceful.v2.grace-period": "1s"}})
	waitTrapped(t, c, "child", "ignoring")
	stopExpect(t, c, 15*time.Second, exitSIGKILL)

	r := reports.NextReport(t, c.ID)
	t.Logf("report: %+v", r)
	if r.Order != "children-first" || r.InitSignal != "SIGKILL" || !r.Drain.GraceExpired {
		t.Fatalf("order %q, init signal %q, grace expired %v: want children-first, SIGKILL (PID 1 without a TERM trap), true",
			r.Order, r.InitSignal, r.Drain.GraceExpired)
	}
	outcomes := map[string]int{}
	for _, p := range r.Drain.Processes {
		outcomes[p.Outcome]++
		if p.Pid == 0 || p.Command == "" {
			t.Errorf("process without pid or command: %+v", p)
		}
	}
	if outcomes["exited"] < 1 || outcomes["killed"] < 1 {
		t.Fatalf("outcomes %v: want the trapping child exited and the ignoring one killed", outcomes)
	}
}

// kubelet's termination grace period (container annotation io.kubernetes.pod.terminationGracePeriod)
// caps the drain so that it ends before kubelet's SIGKILL: 3s less a 1s margin.
func TestKubernetesGracePeriodCapsTheDrain(t *testing.T) {
	script := ignoringChild + `trap "exit 0" TERM
echo ready
` + loop
	c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script, Annotations: map[string]string{
		"io.containerd.graceful.v2.grace-period":   "30s",
		"io.kubernetes.pod.terminationGracePeriod": "3",
		"io.containerd.graceful.v2.stop-order":     "children-first",
	}})
	waitTrapped(t, c, "ignoring")
	took := stop(t, c, 15*time.Second)
	t.Logf("stop took %v", took)
	if took < 2*time.Second || took >= 3*time.Second {
		t.Fatalf("stop took %v: want the drain cut to 2s, ending before kubelet's SIGKILL at 3s", took)
	}
}

// subscribeReports subscribes to the stop reports, for 30s at most.
func subscribeReports(t *testing.T) *stack.Events {
	t.Helper()
	return theStack.Subscribe(stackContext(), t, 30*time.Second, `topic=="/graceful/stop"`)
}

// A stop's report follows the container's exit event on containerd's event stream: it is built
// and published once the exit event has gone out, so that it does not delay it. A container
// deleted as soon as it exits (the shim then shuts down) still gets its report.
func TestStopReportFollowsTheExitEvent(t *testing.T) {
	ctx, cancel := context.WithTimeout(stackContext(), 60*time.Second)
	defer cancel()
	stream, errs := theStack.Client.Subscribe(ctx, `topic=="/graceful/stop"`, `topic=="/tasks/exit"`)
	for i := 0; i < 3; i++ {
		script := childTraps("child") + `trap "exit 0" TERM
echo ready
` + loop
		c := start(t, stack.Spec{Runtime: stack.GracefulRuntime, Script: script})
		waitTrapped(t, c, "child")
		stopExpect(t, c, 15*time.Second, exitOK)
		// The task is deleted at once, as a client does on the exit event: its shim shuts down.
		if _, err := c.Task.Delete(stackContext()); err != nil {
			t.Fatalf("delete the task of %s at once: %v", c.ID, err)
		}
		var order []string
		for len(order) < 2 {
			select {
			case env := <-stream:
				ev, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					t.Fatal(err)
				}
				switch x := ev.(type) {
				case *apievents.TaskExit:
					if x.ContainerID == c.ID && x.ID == c.ID {
						order = append(order, "exit")
					}
				default:
					if r, err := stack.DecodeStopReport(env.Event); err == nil && r.ContainerID == c.ID {
						order = append(order, "report")
					}
				}
			case err := <-errs:
				t.Fatalf("event stream: %v", err)
			case <-ctx.Done():
				t.Fatalf("stop %d: events seen %v: want the exit event, then the stop report", i, order)
			}
		}
		if order[0] != "exit" || order[1] != "report" {
			t.Fatalf("stop %d: events in the order %v, want the exit event first", i, order)
		}
	}
}
