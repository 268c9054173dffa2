package shim

import (
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/graceful-shim/graceful/helper"
	"github.com/graceful-shim/graceful/process"
)

// A signaller answers and exits at once: its answer is read all the same. The shim's reaper
// closes an exec.Cmd's pipes when it reaps the process, which used to be before the reader got the
// answer now and then: the drain then took a signal that had been sent for a failure, and
// signalled member by member processes that had already died of it.
func TestSignallerAnswerIsReadWhenItExitsAtOnce(t *testing.T) {
	runReaper(t)
	for i := 0; i < 500; i++ {
		s := newSignaller()
		s.err = s.run(exec.Command("sh", "-c", `echo `+helper.SignallerReady+`; read sig; echo "`+helper.Signalled+` 1 2"`))
		close(s.started)
		win, err := s.SignalAll(unix.SIGTERM)
		if err != nil || win != (process.SignalWindow{From: 1, To: 2}) {
			t.Fatalf("run %d: SignalAll = %+v, %v; want the answer {1 2}", i, win, err)
		}
		<-s.done
	}
}
