package kube

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dialPrivate dials addr in the private network namespace (where the apiserver, the controllers'
// /healthz and the kubelet listen), from a thread locked to the dialing goroutine that joins that
// namespace and then returns to its own. The connection's socket belongs to the private
// namespace for good, whatever thread uses it.
//
// The thread is not discarded (left locked, in the private namespace, for the runtime to end with
// the goroutine), but restored: the daemons of the test (containerd, the namespace's holder, the
// cluster's daemons) are started with Pdeathsig, which the kernel sends when the THREAD that
// forked them ends, and any thread of the process may have forked one. Only when it cannot
// return does the thread stay locked, to be discarded.
func (k *Cluster) dialPrivate(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, fmt.Errorf("the thread's network namespace: %w", err)}
			return
		}
		defer own.Close()
		private, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", k.holder.Process.Pid))
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, fmt.Errorf("the private network namespace: %w", err)}
			return
		}
		err = unix.Setns(int(private.Fd()), unix.CLONE_NEWNET)
		private.Close()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, fmt.Errorf("join the private network namespace: %w", err)}
			return
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked, and ends with the goroutine
		done <- result{conn, err}
	}()
	r := <-done
	return r.conn, r.err
}

// APIServerForward starts a TCP forwarder in the test process that listens on 127.0.0.1 of the
// host's network namespace (a free port) and forwards each connection to the apiserver,
// 127.0.0.1:6443 of the private namespace; it returns the address it listens on, "127.0.0.1:PORT".
// A hostNetwork pod reaches the apiserver through it (in-cluster config with
// KUBERNETES_SERVICE_HOST=127.0.0.1 and KUBERNETES_SERVICE_PORT=PORT: the apiserver's
// certificate has the IP SAN 127.0.0.1). Cleanup closes the listener and every connection and
// waits for the forwarder's goroutines.
func (k *Cluster) APIServerForward(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen for the apiserver forwarder: %v", err)
	}
	f := &forwarder{conns: map[net.Conn]bool{}}
	tb.Cleanup(func() {
		ln.Close()
		f.closeAll()
		waited := make(chan struct{})
		go func() { f.wg.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(30 * time.Second):
			tb.Errorf("the apiserver forwarder's goroutines did not end")
		}
	})
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by the cleanup
			}
			if !f.track(c) {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				k.forward(f, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// forwarder is the state of an APIServerForward: its open connections, both sides.
type forwarder struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]bool
}

// track adds c to the open connections, or closes it and returns false once closeAll ran.
func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return false
	}
	f.conns[c] = true
	return true
}

// untrack closes c and removes it from the open connections.
func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c.Close()
	delete(f.conns, c)
}

// closeAll closes every open connection, and those tracked afterwards.
func (f *forwarder) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
}

// forward copies between the accepted connection c and a new connection to the apiserver, each
// direction until its reader ends, which half-closes the other side; both are closed at the end.
func (k *Cluster) forward(f *forwarder, c net.Conn) {
	defer f.untrack(c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := k.dialPrivate(ctx, "tcp", "127.0.0.1:6443")
	cancel()
	if err != nil {
		return
	}
	if !f.track(up) {
		return
	}
	defer f.untrack(up)
	var both sync.WaitGroup
	both.Add(2)
	pipe := func(dst, src net.Conn) {
		defer both.Done()
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go pipe(up, c)
	go pipe(c, up)
	both.Wait()
}
