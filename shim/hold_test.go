package shim

import (
	"strings"
	"testing"
	"time"

	"github.com/graceful-shim/graceful/process"
)

// The tracer's messages are read to the end even when nobody waits for the attach result any
// more (startHold gave up after its timeout): the reader must not block on a second result.
func TestTracerReaderNeverBlocksOnALateAttach(t *testing.T) {
	h := &hold{exiting: make(chan struct{}), done: make(chan struct{})}
	messages := strings.NewReader(process.HoldAttached + "\n" + process.HoldExiting + "\n")
	returned := make(chan struct{})
	go func() {
		h.readTracer(messages, make(chan error, 1)) // buffered for one result, as startHold's
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("the tracer reader blocked after the tracer had attached and exited")
	}
	select {
	case <-h.exiting:
	default:
		t.Fatal("the tracer's exiting message was not passed on")
	}
}
