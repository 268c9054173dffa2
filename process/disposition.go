package process

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// Disposition is how a process will treat a signal sent to it now, and how that was read.
type Disposition string

const (
	// Caught: the process has a handler for the signal (SigCgt).
	Caught Disposition = "caught"
	// Sigwait: a thread waits for the signal in rt_sigtimedwait (tini). The kernel unblocks the
	// waited set meanwhile, so /proc shows the signal neither caught nor blocked.
	Sigwait Disposition = "sigwait"
	// Signalfd: the signal is blocked and a signalfd of the process reads it (catatonit).
	Signalfd Disposition = "signalfd"
	// Blocked: the signal is blocked, so it stays pending until the process takes it.
	Blocked Disposition = "blocked"
	// Ignored: the signal is explicitly ignored.
	Ignored Disposition = "ignored"
	// Default: none of the above; the default action applies, which PID 1 of a namespace drops.
	Default Disposition = "default"
)

// Handles reports whether the process acts on the signal: caught, awaited, read or left pending.
func (d Disposition) Handles() bool {
	return d == Caught || d == Sigwait || d == Signalfd || d == Blocked
}

// ReadDisposition reads how pid will treat sig if it is sent now, as the kernel decides: against
// the main thread's masks first (a PID 1 drops sig unless that thread blocks it, waits for it, or
// a handler is installed), then delivered to a thread that does not block it.
//
//   - caught: a handler is installed.
//   - sigwait: a thread waits in rt_sigtimedwait with sig in its set, and it is the main thread
//     or the main thread blocks sig.
//   - signalfd: the main thread blocks sig and a signalfd of the process has it in its mask.
//   - blocked: the main thread blocks sig; resampled for up to blockedPatience first, as shells
//     block every signal around a fork.
//   - ignored, default: otherwise.
func ReadDisposition(pid int, sig unix.Signal) (Disposition, error) {
	start := time.Now()
	for i := 0; ; i++ {
		d, st, err := lookDisposition(pid, sig)
		switch {
		case err != nil:
			return "", err
		case d == Blocked && time.Since(start) < blockedPatience:
		case d == Default && i == 0 && mayBeBetweenWaits(pid):
		case d == Default && st.Ignored&procfs.Bit(sig) != 0:
			return Ignored, nil
		default:
			return d, nil
		}
		time.Sleep(time.Millisecond)
	}
}

// blockedPatience is how long ReadDisposition resamples a signal seen only as blocked: long enough
// for a shell's fork on a loaded machine, and paid once for a process that really blocks it.
const blockedPatience = 50 * time.Millisecond

// lookDisposition is one look of ReadDisposition (Ignored shows as Default), with the status read.
func lookDisposition(pid int, sig unix.Signal) (Disposition, Status, error) {
	st, err := ReadStatus(pid)
	if err != nil {
		return "", st, err
	}
	if st.Caught&procfs.Bit(sig) != 0 {
		return Caught, st, nil
	}
	blocked := st.Blocked&procfs.Bit(sig) != 0
	waiting, err := sigwaitingThread(pid, sig)
	switch {
	case err != nil:
		return "", st, err
	case waiting == pid || (waiting != 0 && blocked):
		return Sigwait, st, nil
	case blocked && readsSignalfd(pid, sig):
		return Signalfd, st, nil
	case blocked:
		return Blocked, st, nil
	}
	return Default, st, nil
}

// WillHandle reports whether the process pid will act on sig if it is sent now (ReadDisposition).
func WillHandle(pid int, sig unix.Signal) (bool, error) {
	d, err := ReadDisposition(pid, sig)
	return d.Handles(), err
}

// Catches reports, from one look, whether pid takes sig itself (handler, sigwait, signalfd). It
// does not resample a blocked signal: a drain member that does not catch it gets another signal.
func Catches(pid int, sig unix.Signal) bool {
	d, _, err := lookDisposition(pid, sig)
	return err == nil && (d == Caught || d == Sigwait || d == Signalfd)
}

// mayBeBetweenWaits reports whether a thread of pid runs, so a sigwait loop may be between waits.
func mayBeBetweenWaits(pid int) bool {
	tids, err := threadsOf(pid)
	if err != nil {
		return false
	}
	for _, tid := range tids {
		if nr, _, ok := threadSyscall(pid, tid); !ok || nr < 0 {
			return true
		}
	}
	return false
}

// sigwaitingThread returns a thread of pid (main first) in rt_sigtimedwait for sig, 0 if none.
func sigwaitingThread(pid int, sig unix.Signal) (int, error) {
	if len(sigwaitSyscalls) == 0 {
		return 0, nil
	}
	tids, err := threadsOf(pid)
	if err != nil {
		return 0, err
	}
	for _, tid := range tids {
		nr, set, ok := threadSyscall(pid, tid)
		if !ok || !slices.Contains(sigwaitSyscalls, nr) || set == 0 {
			continue
		}
		var mask [8]byte
		local := []unix.Iovec{{Base: &mask[0], Len: uint64(len(mask))}}
		remote := []unix.RemoteIovec{{Base: uintptr(set), Len: len(mask)}}
		if n, err := unix.ProcessVMReadv(pid, local, remote, 0); err != nil || n != len(mask) {
			continue // the thread left the wait, or its set is unreadable
		}
		// A sigset_t is little-endian on every architecture read here; a compat (32-bit) one
		// is two 32-bit words, the same bytes.
		if binary.LittleEndian.Uint64(mask[:])&procfs.Bit(sig) != 0 {
			return tid, nil
		}
	}
	return 0, nil
}

// threadsOf lists the threads of pid, the main thread first.
func threadsOf(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("threads of %d: %w", pid, ErrGone)
		}
		return nil, fmt.Errorf("threads of %d: %w", pid, err)
	}
	tids := []int{pid}
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil && tid != pid {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// threadSyscall reads from /proc/PID/task/TID/syscall the call tid is blocked in (-1: outside one)
// and its first argument; ok is false when the thread is running or unreadable.
func threadSyscall(pid, tid int) (nr int, arg0 uint64, ok bool) {
	var buf [256]byte
	data, err := readProcFile("/proc/"+strconv.Itoa(pid)+"/task/"+strconv.Itoa(tid)+"/syscall", buf[:])
	if err != nil {
		return 0, 0, false
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 || fields[0] == "running" {
		return 0, 0, false
	}
	if nr, err = strconv.Atoi(fields[0]); err != nil {
		return 0, 0, false
	}
	if nr < 0 || len(fields) < 2 {
		return nr, 0, true
	}
	if arg0, err = strconv.ParseUint(strings.TrimPrefix(fields[1], "0x"), 16, 64); err != nil {
		return 0, 0, false
	}
	return nr, arg0, true
}

// readsSignalfd reports whether a signalfd of pid has sig in its mask (fdinfo's sigmask).
func readsSignalfd(pid int, sig unix.Signal) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if link, err := os.Readlink(dir + "/" + e.Name()); err != nil || link != "anon_inode:[signalfd]" {
			continue
		}
		var buf [512]byte
		data, err := readProcFile("/proc/"+strconv.Itoa(pid)+"/fdinfo/"+e.Name(), buf[:])
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "sigmask:"); ok {
				if mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && mask&procfs.Bit(sig) != 0 {
					return true
				}
			}
		}
	}
	return false
}
