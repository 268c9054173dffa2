//go:build !kernelemu

package stack

// buildTags are the tags the stack builds the shim and its helpers with (see tags_kernelemu.go).
const buildTags = ""
