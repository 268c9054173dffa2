// Command containerd-shim-graceful-v2 is containerd's runc shim with graceful stops: every process
// of the container gets the stop signal and a grace period before anything is SIGKILLed.
package main

import "github.com/graceful-shim/graceful/shim"

func main() {
	shim.Main()
}
