package process

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ParseSignal accepts a signal as a name with or without the SIG prefix, in any case (SIGTERM,
// term), or as a number from 1 to 64 (32 and 33 are reserved by the C library).
func ParseSignal(s string) (unix.Signal, error) {
	v := strings.ToUpper(strings.TrimSpace(s))
	if n, err := strconv.Atoi(v); err == nil {
		if n < 1 || n > 64 || n == 32 || n == 33 {
			return 0, fmt.Errorf("signal number %d out of range: accepted 1-31 and 34-64", n)
		}
		return unix.Signal(n), nil
	}
	if !strings.HasPrefix(v, "SIG") {
		v = "SIG" + v
	}
	if sig := unix.SignalNum(v); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q: accepted a name such as SIGTERM, TERM or SIGINT, or a number 1-64", s)
}

// SignalName returns the conventional name of sig (SIGTERM), or its number for unnamed signals.
func SignalName(sig unix.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	return strconv.Itoa(int(sig))
}
