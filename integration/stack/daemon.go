package stack

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Daemon is a long-running process of a test environment (dockerd, etcd, the kubelet, ...), in a
// process group of its own, logging to a file.
type Daemon struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	exited  chan error
}

// StartDaemon starts cmd as the daemon name, its output written to logPath (created anew); the
// kernel sends it pdeathsig when the test process dies.
func StartDaemon(name, logPath string, cmd *exec.Cmd, pdeathsig syscall.Signal) (*Daemon, error) {
	return startDaemon(name, logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, cmd, pdeathsig)
}

// startDaemon is StartDaemon with the log opened with flag (O_APPEND keeps containerd's log
// across its restarts).
func startDaemon(name, logPath string, flag int, cmd *exec.Cmd, pdeathsig syscall.Signal) (*Daemon, error) {
	logFile, err := os.OpenFile(logPath, flag, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log of %s: %w", name, err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: pdeathsig}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &Daemon{Name: name, Cmd: cmd, LogPath: logPath, exited: make(chan error, 1)}
	go func() { d.exited <- cmd.Wait() }()
	return d, nil
}

// Exited reports whether the daemon has exited, and its exit, waiting up to wait for it (0: not
// at all).
func (d *Daemon) Exited(wait time.Duration) (bool, error) {
	if wait <= 0 {
		select {
		case err := <-d.exited:
			d.exited <- err
			return true, err
		default:
			return false, nil
		}
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case err := <-d.exited:
		d.exited <- err
		return true, err
	case <-timer.C:
		return false, nil
	}
}

// Stop sends the daemon SIGTERM and waits up to timeout for it to exit; past that it fails tb
// and SIGKILLs it.
func (d *Daemon) Stop(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	d.Cmd.Process.Signal(syscall.SIGTERM)
	if exited, _ := d.Exited(timeout); !exited {
		tb.Errorf("%s did not exit on SIGTERM", d.Name)
		d.Cmd.Process.Kill()
		d.exited <- <-d.exited
	}
}

// kill SIGKILLs the daemon and waits for it to exit.
func (d *Daemon) kill() {
	d.Cmd.Process.Kill()
	d.exited <- <-d.exited
}

// Log returns the daemon's log, its last max bytes only when max > 0.
func (d *Daemon) Log(max int) string {
	data, _ := os.ReadFile(d.LogPath)
	if max > 0 && len(data) > max {
		data = data[len(data)-max:]
	}
	return string(data)
}

// SaveLog copies the daemon's log to graceful-<name>.log in the temporary directory, where it
// outlives the test's files, and says so on tb.
func (d *Daemon) SaveLog(tb testing.TB) {
	tb.Helper()
	p := filepath.Join(os.TempDir(), "graceful-"+d.Name+".log")
	if err := os.WriteFile(p, []byte(d.Log(0)), 0o644); err == nil {
		tb.Logf("%s log saved to %s", d.Name, p)
	}
}
