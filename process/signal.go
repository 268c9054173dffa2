package process

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The real-time signals as the C library numbers them: the kernel's 32 and 33 are taken by glibc
// and musl for their threads, so SIGRTMIN is 34 for every program a container runs.
const (
	sigRTMin = 34
	sigRTMax = 64
)

// signalSyntax is what ParseSignal accepts, for its errors.
const signalSyntax = "a name such as SIGTERM, TERM or SIGINT, a real-time signal such as SIGRTMIN+3, RTMIN+3 or " +
	"SIGRTMAX-1, or a number 1-31 or 34-64"

// ParseSignal accepts a signal as a name with or without the SIG prefix, in any case (SIGTERM,
// term); a real-time signal as SIGRTMIN+N or SIGRTMAX-N (RTMIN+N, and CRI's SIGRTMINPLUSN and
// SIGRTMAXMINUSN alike), where SIGRTMIN is 34 and SIGRTMAX 64 as in the C library; or a number
// from 1 to 64 but 32 and 33 (reserved by the C library).
func ParseSignal(s string) (unix.Signal, error) {
	v := strings.ToUpper(strings.TrimSpace(s))
	if n, err := strconv.Atoi(v); err == nil {
		if n < 1 || n > sigRTMax || n == 32 || n == 33 {
			return 0, fmt.Errorf("signal number %d out of range: accepted 1-31 and 34-64", n)
		}
		return unix.Signal(n), nil
	}
	if !strings.HasPrefix(v, "SIG") {
		v = "SIG" + v
	}
	if strings.HasPrefix(v, "SIGRTMIN") || strings.HasPrefix(v, "SIGRTMAX") {
		return parseRealtime(s, v)
	}
	if sig := unix.SignalNum(v); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q: accepted %s", s, signalSyntax)
}

// parseRealtime parses v, the upper-case SIGRTMIN or SIGRTMAX form of s, with an optional offset.
func parseRealtime(s, v string) (unix.Signal, error) {
	base, dir, rest := sigRTMin, 1, strings.TrimPrefix(v, "SIGRTMIN")
	if strings.HasPrefix(v, "SIGRTMAX") {
		base, dir, rest = sigRTMax, -1, strings.TrimPrefix(v, "SIGRTMAX")
	}
	offset := 0
	if rest != "" {
		op, digits := "+", ""
		switch {
		case strings.HasPrefix(rest, "+"), strings.HasPrefix(rest, "-"):
			op, digits = rest[:1], rest[1:]
		case strings.HasPrefix(rest, "PLUS"):
			digits = strings.TrimPrefix(rest, "PLUS")
		case strings.HasPrefix(rest, "MINUS"):
			op, digits = "-", strings.TrimPrefix(rest, "MINUS")
		default:
			return 0, fmt.Errorf("unknown signal %q: accepted %s", s, signalSyntax)
		}
		n, err := strconv.Atoi(digits)
		if err != nil || n < 0 || (op == "+") != (dir > 0) {
			return 0, fmt.Errorf("unknown signal %q: accepted %s", s, signalSyntax)
		}
		offset = n
	}
	sig := base + dir*offset
	if sig < sigRTMin || sig > sigRTMax {
		return 0, fmt.Errorf("signal %q out of range: the real-time signals are SIGRTMIN (34) to SIGRTMAX (64)", s)
	}
	return unix.Signal(sig), nil
}

// SignalName returns the conventional name of sig (SIGTERM, SIGRTMIN+3), or its number for
// signals without one.
func SignalName(sig unix.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	switch n := int(sig); {
	case n == sigRTMin:
		return "SIGRTMIN"
	case n > sigRTMin && n <= sigRTMax:
		return "SIGRTMIN+" + strconv.Itoa(n-sigRTMin)
	}
	return strconv.Itoa(int(sig))
}
