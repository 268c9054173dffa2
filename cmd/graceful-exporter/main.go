// Command graceful-exporter turns the graceful shim's stop reports, read from containerd's event
// stream, into Prometheus metrics and, optionally, Kubernetes Events (see package exporter).
package main

import (
	"os"

	"github.com/graceful-shim/graceful/exporter"
)

func main() {
	os.Exit(exporter.Main(os.Args[1:]))
}
