package initproc

import (
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"unsafe"
)

// gcPercent is the GC target init runs with: its heap is a few kilobytes that do not grow (the loop
// does not allocate), so a low target costs nothing and keeps the heap from ever reaching the
// default 4 MiB goal.
const gcPercent = 10

// Exit statuses of init itself, as shells use them.
const (
	exitUsage         = 2   // bad command line
	exitNotExecutable = 126 // the program exists but cannot be executed
	exitNotFound      = 127 // the program does not exist
)

// Main runs graceful-init with args (the command line without argv[0]) and returns the status to
// exit with: the main process's exit status, or 128+n if a signal n killed it, once no child of
// init is left; 126 or 127 if the program cannot be started; 2 for a bad command line.
func Main(args []string) int {
	argv, version, ok := parseArgs(args)
	if ok && len(argv) > 0 {
		// Returns in the re-executed init, or if the re-exec is not possible (no /proc), and
		// init then runs as it is.
		reexecLean(args)
	}
	runtime.GOMAXPROCS(1)
	debug.SetGCPercent(gcPercent)
	if version {
		line := "graceful-init " + Version + "\n"
		if len(argv) == 0 {
			os.Stdout.WriteString(line)
			return 0
		}
		os.Stderr.WriteString(line)
	}
	if !ok {
		os.Stderr.WriteString("usage: graceful-init [-v] [--] PROGRAM [ARGS...]\n       graceful-init -v\n")
		return exitUsage
	}

	// Catch the signals before the child exists, so that one sent in between is forwarded rather
	// than lost (PID 1 without a handler: the kernel drops it, or, sent from outside the namespace,
	// it kills init). SIGCHLD gets its
	// own channel: a full forwarding channel must never delay a reap, and a buffer of one suffices
	// because each reap collects every exit before it.
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)
	fwd := make(chan os.Signal, 16)
	signal.Notify(fwd, forwardable()...)
	// SIGTTIN and SIGTTOU get a handler whose signals are dropped: init is not stopped when it is not
	// the terminal's foreground process group (the child is), and, unlike signal.Ignore, a handler
	// is reset to the default when the child execs, so the child does not inherit SIG_IGN.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGTTIN, syscall.SIGTTOU)

	// In a PID namespace of its own init is PID 1, and every orphan in it comes to init. In a shared
	// one (a pod's shareProcessNamespace, hostPID) orphans would go to the namespace's PID 1
	// instead, init would find itself without children as soon as the main process exits, and exit
	// under the rest: as a subreaper it still collects every orphan of its own subtree.
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)

	pid, status := spawn(argv)
	if pid == 0 {
		return status
	}
	return supervise(pid, chld, fwd)
}

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER (linux/prctl.h).
const prSetChildSubreaper = 36

// parseArgs splits init's command line into the program's argv and whether -v was given. ok is
// false for a command line that names no program (other than a lone -v) or an unknown option.
func parseArgs(args []string) (argv []string, version, ok bool) {
	for len(args) > 0 {
		switch a := args[0]; {
		case a == "--":
			args = args[1:]
			return args, version, len(args) > 0
		case a == "-v" || a == "--version":
			version = true
			args = args[1:]
		case len(a) > 1 && a[0] == '-':
			return nil, version, false
		default:
			return args, version, true
		}
	}
	return nil, version, version
}

// forwardable lists the signals init forwards to the main process: all of them but SIGCHLD (init's
// own), SIGKILL and SIGSTOP (which cannot be caught), and SIGTTIN and SIGTTOU (which, as tini does,
// init keeps from stopping itself). The Go runtime cannot deliver signals 32 and 33 (reserved for
// libc's threads) or SIGPROF to a program, so those are not forwarded either.
func forwardable() []os.Signal {
	sigs := make([]os.Signal, 0, 64)
	for s := syscall.Signal(1); s <= 64; s++ {
		switch s {
		case syscall.SIGCHLD, syscall.SIGKILL, syscall.SIGSTOP, syscall.SIGTTIN, syscall.SIGTTOU,
			syscall.SIGPROF, 32, 33:
			continue
		}
		sigs = append(sigs, s)
	}
	return sigs
}

// spawn starts the main process from argv, resolving argv[0] through PATH as execvp does, with
// init's environment, working directory and standard streams. Like tini, it puts the child in a
// process group of its own (always: tini's -g only changes where signals go, to the whole group)
// and, when standard input is init's controlling terminal, makes that group the terminal's
// foreground group, so that the kernel sends the terminal's ^C and ^Z to the program, not init.
// It returns the child's PID, or 0 and the status to exit with after telling why on stderr.
func spawn(argv []string) (pid, status int) {
	path, err := lookPath(argv[0])
	if err == nil {
		attr := &syscall.ProcAttr{
			Env:   childEnv(syscall.Environ()),
			Files: []uintptr{0, 1, 2},
			// With Foreground, the child sets itself as the terminal's foreground group between
			// fork and exec, with its signals still blocked (so without a SIGTTOU), as tini does.
			Sys: &syscall.SysProcAttr{Setpgid: true, Foreground: isControllingTerminal(0), Ctty: 0},
		}
		pid, err = syscall.ForkExec(path, argv, attr)
		if err == nil {
			return pid, 0
		}
	}
	status = exitNotExecutable
	if err == syscall.ENOENT || err == syscall.ENOTDIR {
		status = exitNotFound
	}
	// The child may have taken the terminal's foreground before its exec failed: ignore SIGTTOU so
	// that this write cannot be held up by a terminal with TOSTOP set (no child will inherit it).
	signal.Ignore(syscall.SIGTTIN, syscall.SIGTTOU)
	os.Stderr.WriteString("graceful-init: " + argv[0] + ": " + err.Error() + "\n")
	return 0, status
}

// lookPath resolves name as execvp does: a name with a slash is used as it is, any other is
// searched in the directories of $PATH (an empty entry is the working directory; with PATH unset,
// the C library's default /bin:/usr/bin). The first executable regular file wins; it returns
// EACCES if only non-executable files were found and ENOENT if none.
func lookPath(name string) (string, error) {
	if name == "" {
		return "", syscall.ENOENT
	}
	if strings.IndexByte(name, '/') >= 0 {
		return name, nil
	}
	dirs, set := syscall.Getenv("PATH")
	if !set {
		dirs = "/bin:/usr/bin"
	}
	notFound := error(syscall.ENOENT)
	for {
		dir, rest, more := strings.Cut(dirs, ":")
		if dir == "" {
			dir = "."
		}
		path := dir + "/" + name
		var st syscall.Stat_t
		if syscall.Stat(path, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFREG {
			if syscall.Access(path, 1 /* X_OK */) == nil {
				return path, nil
			}
			notFound = syscall.EACCES
		}
		if !more {
			break
		}
		dirs = rest
	}
	return "", notFound
}

// isControllingTerminal reports whether fd is a terminal and init's controlling terminal (the
// one runc gives a container with a terminal): only then can the child take its foreground. A
// terminal that is not init's (stdin inherited from elsewhere) is left alone, as tini's tolerated
// ENOTTY from tcsetpgrp leaves it.
func isControllingTerminal(fd int) bool {
	var sid int32
	_, _, errno := syscall.RawSyscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TIOCGSID, uintptr(unsafe.Pointer(&sid)))
	if errno != 0 {
		return false
	}
	own, _, errno := syscall.RawSyscall(syscall.SYS_GETSID, 0, 0, 0)
	return errno == 0 && int32(own) == sid
}

// supervise runs init's loop once the main process (pid) is started: it reaps every child that
// exits, forwards signals to the main process while it lives, and returns the main process's exit
// status once init has no child left at all. Signals that arrive after the main process exited are
// dropped.
func supervise(pid int, chld, fwd <-chan os.Signal) int {
	status := -1 // the main process's exit status once it is reaped
	for {
		if reap(pid, &status) {
			if status < 0 {
				// Cannot happen: the main process is init's child until init reaps it.
				return 255
			}
			return status
		}
		select {
		case <-chld:
		case s := <-fwd:
			if status < 0 {
				// The main process is not reaped yet, so pid still names it (a zombie at worst,
				// whose signal is then lost harmlessly).
				syscall.Kill(pid, s.(syscall.Signal))
			}
		}
	}
}

// reap collects every child of init that has exited, setting *status from the main process (pid)
// when it is among them, and reports whether init has no child left.
func reap(pid int, status *int) bool {
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.ECHILD:
			return true
		case err != nil || got <= 0:
			return false
		}
		if got == pid {
			*status = exitStatus(ws)
		}
	}
}

// exitStatus is the status a shell would report for a process that ended with ws: its exit code,
// or 128+n when signal n killed it.
func exitStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
