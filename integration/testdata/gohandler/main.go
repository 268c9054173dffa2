// Command gohandler is a Go program for the test image: like most Go services it shuts down on
// SIGTERM, here by writing /out/<name> after a short cleanup. It prints "ready <name>" once its
// handler is installed.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	name := "gohandler"
	if len(os.Args) > 1 {
		name = os.Args[1]
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	fmt.Println("ready " + name)
	sig := <-sigs
	time.Sleep(100 * time.Millisecond) // a short cleanup, cut short by a SIGKILL
	os.WriteFile("/out/"+name, []byte(sig.String()+"\n"), 0o644)
}
