// Command graceful-init is a minimal init for PID 1 of a container: it runs a program, forwards
// signals to it, reaps every zombie, and exits with the program's status once no process is left
// under it. See package initproc.
//
// Usage:
//
//	graceful-init [-v] [--] PROGRAM [ARGS...]
//	graceful-init -v
//
// -v prints "graceful-init VERSION": alone, on stdout, and exits; before a program, on stderr.
package main

import (
	"os"

	"github.com/graceful-shim/graceful/initproc"
)

func main() {
	os.Exit(initproc.Main(os.Args[1:]))
}
