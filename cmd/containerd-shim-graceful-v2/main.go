// Command containerd-shim-graceful-v2 is containerd's runc shim with graceful stops: every process
// of the container gets the stop signal and a grace period before anything is SIGKILLed.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"

	containerdshim "github.com/containerd/containerd/v2/pkg/shim"

	"github.com/graceful-shim/graceful/shim"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "-v" || os.Args[1] == "-version" || os.Args[1] == "--version") {
		printVersion()
		return
	}
	if len(os.Args) == 3 && os.Args[1] == shim.HoldCommand {
		// The shim re-executes itself as the tracer that holds a container's init at exit.
		if err := shim.RunHold(os.Args[2]); err != nil {
			os.Exit(1)
		}
		return
	}
	containerdshim.RunShim(context.Background(), shim.NewManager())
}

func printVersion() {
	containerd := "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/containerd/containerd/v2" {
				containerd = dep.Version
			}
		}
	}
	fmt.Printf("containerd-shim-graceful-v2:\n  Version:    %s\n  Runtime:    %s\n  containerd: %s\n", shim.Version, shim.RuntimeName, containerd)
}
