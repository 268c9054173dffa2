//go:build kernelemu

package process

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// EmulateKernelEnv names the release a test build behaves as (GRACEFUL_EMULATE_KERNEL=6.1): each
// newer feature the package uses then fails as on that kernel. Only binaries built with the
// kernelemu tag read it, so a production build cannot be switched by its environment.
const EmulateKernelEnv = "GRACEFUL_EMULATE_KERNEL"

func init() {
	v, ok := os.LookupEnv(EmulateKernelEnv)
	if !ok || v == "" {
		return
	}
	r, err := parseRelease(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%s: %v\n", EmulateKernelEnv, v, err)
		os.Exit(2)
	}
	emulatedKernel = r
}

// parseRelease parses "MAJOR.MINOR".
func parseRelease(v string) (KernelRelease, error) {
	major, minor, ok := strings.Cut(v, ".")
	a, err1 := strconv.Atoi(major)
	b, err2 := strconv.Atoi(minor)
	if !ok || err1 != nil || err2 != nil || a < 3 || b < 0 {
		return KernelRelease{}, errors.New("want a release such as 6.1 or 5.10")
	}
	return KernelRelease{a, b}, nil
}
