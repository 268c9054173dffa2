// Package testtime scales the tests' waits and bounds for a slow machine: GRACEFUL_TEST_SLOWDOWN=N
// (a number ≥ 1, default 1) multiplies them by N. The kernel VM (make test-kernel-6.1), whose
// software-emulated CPUs run about ten times slower than this machine's, sets it.
package testtime

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// SlowdownEnv is the environment variable that holds the factor.
const SlowdownEnv = "GRACEFUL_TEST_SLOWDOWN"

// factor is the slowdown, read once when the package initialises; a bad value panics then,
// naming the variable.
var factor = func() float64 {
	v := os.Getenv(SlowdownEnv)
	if v == "" {
		return 1
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 1 {
		panic(fmt.Sprintf("%s=%q: want a number ≥ 1", SlowdownEnv, v))
	}
	return f
}()

// Scale returns d multiplied by the slowdown.
func Scale(d time.Duration) time.Duration { return time.Duration(float64(d) * factor) }
