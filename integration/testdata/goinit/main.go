// Command goinit is a multithreaded init for the test image: it starts `sh -c SCRIPT` as its
// child, keeps a few goroutines busy on their own threads, and on SIGTERM exits at once, while
// the child may still be cleaning up.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"
)

func main() {
	runtime.GOMAXPROCS(4)
	for i := 0; i < 4; i++ {
		go func() {
			for {
				time.Sleep(time.Millisecond)
			}
		}()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	child := exec.Command("sh", "-c", os.Args[1])
	child.Stdout, child.Stderr = os.Stdout, os.Stderr
	if err := child.Start(); err != nil {
		fmt.Println("goinit:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	<-sigs
	os.Exit(0)
}
