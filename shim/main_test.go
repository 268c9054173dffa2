package shim

import (
	"os"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/helper"
	"github.com/graceful-shim/graceful/internal/testguard"
)

// holdDelayEnv names a file that the test binary, run as the tracer (HoldCommand), writes when it
// has set up an autoreap injection, before it lets init run it, and then waits holdDelay: a test
// aborts the hold inside that window.
const (
	holdDelayEnv = "GRACEFUL_TEST_HOLD_DELAY_MARK"
	holdDelay    = 300 * time.Millisecond
)

func TestMain(m *testing.M) {
	// Run as the tracer (helperCommand re-executes the test binary when graceful-hold is not
	// next to it).
	if len(os.Args) > 1 && os.Args[1] == HoldCommand {
		if mark := os.Getenv(holdDelayEnv); mark != "" {
			helper.InjectionHook = func(int) {
				os.WriteFile(mark, []byte("injecting\n"), 0o644)
				time.Sleep(holdDelay)
			}
		}
		os.Exit(helper.Main(os.Args[2:]))
	}
	os.Exit(testguard.Main(m))
}
