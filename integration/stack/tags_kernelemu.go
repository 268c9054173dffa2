//go:build kernelemu

package stack

// buildTags are the tags the stack builds the shim and its helpers with: those of the test binary,
// so that a kernelemu test run gets shims that honour GRACEFUL_EMULATE_KERNEL.
const buildTags = "kernelemu"
