// Command demo runs the same two-process container under containerd's stock runc shim and under
// graceful, stops each with SIGTERM, and prints side by side what each process received and how
// long each stop took. It starts (and removes again) a private containerd: run it as root, through
// `make demo`.
package main

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/graceful-shim/graceful/integration/stack"
)

// The seed case: init traps TERM and exits; its child traps TERM and needs 300ms to clean up.
const script = `sh -c 'trap "echo got SIGTERM > /out/child; sleep 0.3; echo cleaned up >> /out/child; exit 0" TERM; echo trapped; while :; do sleep 0.05; done' &
trap "echo got SIGTERM > /out/init; exit 0" TERM
echo ready
while :; do sleep 0.05; done`

type result struct {
	took        time.Duration
	init, child string
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	fmt.Println("starting a private containerd", stack.ContainerdVersion(), "with runc and both shims...")
	s, err := stack.Start(ctx, stack.Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	results := map[string]result{}
	for _, runtime := range []string{stack.StockRuntime, stack.GracefulRuntime} {
		r, err := stopOnce(ctx, s, runtime)
		if err != nil {
			return fmt.Errorf("%s: %w", runtime, err)
		}
		results[runtime] = r
	}
	show := func(v string) string {
		if v == "" {
			return "(nothing: SIGKILLed)"
		}
		return v
	}
	fmt.Printf("\ncontainer: init traps TERM and exits; its child traps TERM and cleans up for 300ms\n\n")
	fmt.Printf("%-28s %-34s %-34s\n", "", stack.StockRuntime, stack.GracefulRuntime)
	st, gr := results[stack.StockRuntime], results[stack.GracefulRuntime]
	fmt.Printf("%-28s %-34s %-34s\n", "init (PID 1) recorded", show(st.init), show(gr.init))
	fmt.Printf("%-28s %-34s %-34s\n", "child recorded", show(st.child), show(gr.child))
	fmt.Printf("%-28s %-34s %-34s\n", "stop took", st.took.Round(time.Millisecond), gr.took.Round(time.Millisecond))
	fmt.Println("\nWith the stock shim the kernel SIGKILLs the child as soon as init exits; graceful gives it")
	fmt.Println("SIGTERM first and waits (up to the grace period) for it to finish before init is stopped.")
	return nil
}

func stopOnce(ctx context.Context, s *stack.Stack, runtime string) (result, error) {
	id := fmt.Sprintf("demo-%d", time.Now().UnixNano())
	c, err := s.Run(ctx, stack.Spec{ID: id, Runtime: runtime, Script: script})
	if err != nil {
		return result{}, err
	}
	defer c.Delete()
	for _, line := range []string{"ready", "trapped"} {
		if err := c.Output.WaitLine(line, 20*time.Second); err != nil {
			return result{}, err
		}
	}
	took, _, err := c.Stop(ctx, syscall.SIGTERM, 30*time.Second)
	if err != nil {
		return result{}, err
	}
	return result{took: took, init: c.Marker("init"), child: oneLine(c.Marker("child"))}, nil
}

func oneLine(s string) string {
	out := []rune{}
	for _, r := range s {
		if r == '\n' {
			r = ','
		}
		out = append(out, r)
	}
	return string(out)
}
