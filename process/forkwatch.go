package process

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/graceful-shim/graceful/internal/procfs"

	"golang.org/x/sys/unix"
)

// Proc connector constants (linux/connector.h, linux/cn_proc.h).
const (
	cnIdxProc          = 1
	cnValProc          = 1
	procCnMcastListen  = 1
	procCnMcastIgnore  = 2
	procEventFork      = 1
	nlmsgHeaderLen     = 16
	cnMsgLen           = 20
	procEventOffset    = nlmsgHeaderLen + cnMsgLen
	forkEventMinLength = procEventOffset + 32
)

// fork is one process creation: parent and child thread-group ids, in the initial PID namespace,
// and when it happened (CLOCK_MONOTONIC nanoseconds, the kernel's ktime_get_ns).
type fork struct {
	parent, child int
	ts            int64
}

// Inodes of the initial user and PID namespaces (PROC_USER_INIT_INO, PROC_PID_INIT_INO): fixed by
// the kernel.
const (
	procUserInitIno = 0xEFFFFFFD
	procPidInitIno  = 0xEFFFFFFC
)

// forkWatcher reports every process creation on the host from the kernel's proc connector, so a
// drain learns at once which process started which, even when the parent exits right after. It
// needs CAP_NET_ADMIN in the initial user, PID and network namespaces (a shim has them).
type forkWatcher struct {
	fd  int
	buf []byte
}

// newForkWatcher subscribes to the proc connector. Outside the initial user or PID namespace the
// kernel ignores the subscription without an error and the socket stays silent, so that case is
// refused up front: the drain then falls back to re-reading the process table.
func newForkWatcher() (*forkWatcher, error) {
	if err := inInitialNamespaces(); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_CONNECTOR)
	if err != nil {
		return nil, fmt.Errorf("proc connector socket: %w", err)
	}
	w := &forkWatcher{fd: fd, buf: make([]byte, 64<<10)}
	// A large buffer keeps a fork storm from overflowing it; an overflow is reported, not fatal.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	// Only fork events reach the socket: a drain of thousands of processes would otherwise queue
	// an exit event for each, and overflow it.
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, forkFilter()); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("filter proc connector: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind proc connector: %w", err)
	}
	if err := w.control(procCnMcastListen); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return w, nil
}

// inInitialNamespaces returns an error unless the caller is in the initial user and PID
// namespaces, the only place where the proc connector reports anything. A process's namespaces
// do not change, so this is found out once.
var inInitialNamespaces = sync.OnceValue(readInitialNamespaces)

func readInitialNamespaces() error {
	for _, ns := range []struct {
		path string
		ino  uint64
	}{{"/proc/self/ns/user", procUserInitIno}, {"/proc/self/ns/pid", procPidInitIno}} {
		ino, err := procfs.NSInode(ns.path)
		if err != nil {
			return fmt.Errorf("proc connector: %w", err)
		}
		if ino != ns.ino {
			return fmt.Errorf("proc connector: %s is not the initial namespace (inode %d), fork events would never arrive", ns.path, ino)
		}
	}
	return nil
}

// forkFilter is a classic BPF program that accepts PROC_EVENT_FORK messages only. BPF loads words
// in network byte order, so the native-endian event type is compared byte-swapped as needed.
func forkFilter() *unix.SockFprog {
	var what [4]byte
	binary.NativeEndian.PutUint32(what[:], procEventFork)
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: procEventOffset},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: binary.BigEndian.Uint32(what[:])},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
	return &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
}

func (w *forkWatcher) control(op uint32) error {
	msg := make([]byte, procEventOffset+4)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], unix.NLMSG_DONE)
	binary.NativeEndian.PutUint32(msg[nlmsgHeaderLen:], cnIdxProc)
	binary.NativeEndian.PutUint32(msg[nlmsgHeaderLen+4:], cnValProc)
	binary.NativeEndian.PutUint16(msg[nlmsgHeaderLen+16:], 4)
	binary.NativeEndian.PutUint32(msg[procEventOffset:], op)
	if err := unix.Sendto(w.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("proc connector control %d: %w", op, err)
	}
	return nil
}

// read returns the process creations queued now, without blocking. lost reports that the kernel
// dropped events (the buffer overflowed): the caller must re-read the process table.
func (w *forkWatcher) read() (forks []fork, lost bool) {
	for {
		n, _, err := unix.Recvfrom(w.fd, w.buf, 0)
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				lost = true
				continue
			}
			return forks, lost
		}
		for msg := w.buf[:n]; len(msg) >= nlmsgHeaderLen; {
			size := int(binary.NativeEndian.Uint32(msg[0:]))
			if size < nlmsgHeaderLen || size > len(msg) {
				break
			}
			if size >= forkEventMinLength && binary.NativeEndian.Uint32(msg[procEventOffset:]) == procEventFork {
				ts := int64(binary.NativeEndian.Uint64(msg[procEventOffset+8:]))
				ev := msg[procEventOffset+16:]
				parentTgid := int(binary.NativeEndian.Uint32(ev[4:]))
				childPid := int(binary.NativeEndian.Uint32(ev[8:]))
				childTgid := int(binary.NativeEndian.Uint32(ev[12:]))
				if childPid == childTgid { // a process, not a thread
					forks = append(forks, fork{parent: parentTgid, child: childTgid, ts: ts})
				}
			}
			next := (size + 3) &^ 3
			if next >= len(msg) {
				break
			}
			msg = msg[next:]
		}
	}
}

func (w *forkWatcher) close() {
	_ = w.control(procCnMcastIgnore)
	unix.Close(w.fd)
}

// ForkWatch follows process creations on the host from the moment it is made, to tell exactly
// which process another one created first (the proc connector; see forkWatcher).
type ForkWatch struct {
	w *forkWatcher
	// from is when the watch was made, or when MarkNow was last called (CLOCK_MONOTONIC
	// nanoseconds, as a fork's time).
	from int64
}

// MarkNow records now as the moment that matters to the watch's user: a drain handed the watch
// (DrainConfig.Begun) takes it for init's stop signal.
func (f *ForkWatch) MarkNow() { f.from = monotonicNow() }

// NewForkWatch starts following process creations. Close it when done.
func NewForkWatch() (*ForkWatch, error) {
	w, err := newForkWatcher()
	if err != nil {
		return nil, err
	}
	return &ForkWatch{w: w, from: monotonicNow()}, nil
}

// ErrForksLost reports that the kernel dropped creation events while the watch was behind: the
// first child cannot be told exactly.
var ErrForksLost = errors.New("process creation events were lost")

// FirstChild returns the first process that parent created since the watch was made, waiting for
// it until deadline, or until cancel (an eventfd, -1 for none) becomes readable
// (ErrWatchCancelled).
func (f *ForkWatch) FirstChild(parent int, deadline time.Time, cancel int) (int, error) {
	fds := []unix.PollFd{{Fd: int32(f.w.fd), Events: unix.POLLIN}, {Fd: int32(cancel), Events: unix.POLLIN}}
	if cancel < 0 {
		fds = fds[:1]
	}
	for {
		forks, lost := f.w.read()
		for _, fk := range forks {
			if fk.parent == parent {
				return fk.child, nil
			}
		}
		if lost {
			return 0, ErrForksLost
		}
		left := time.Until(deadline)
		if left <= 0 {
			return 0, fmt.Errorf("process %d created no process within the time allowed", parent)
		}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, fmt.Errorf("wait for process creations: %w", err)
		}
		if len(fds) > 1 && fds[1].Revents != 0 {
			return 0, ErrWatchCancelled
		}
	}
}

// ErrWatchCancelled: FirstChild's wait was cancelled.
var ErrWatchCancelled = errors.New("the watch was cancelled")

// Close ends the watch.
func (f *ForkWatch) Close() { f.w.close() }
