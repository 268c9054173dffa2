package process

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// KernelRelease is a Linux release, major and minor.
type KernelRelease struct{ Major, Minor int }

func (r KernelRelease) String() string { return fmt.Sprintf("%d.%d", r.Major, r.Minor) }

func (r KernelRelease) before(o KernelRelease) bool {
	return r.Major < o.Major || (r.Major == o.Major && r.Minor < o.Minor)
}

// A kernelFeature is a system call or ioctl newer than the oldest kernel the package runs on, and
// the release that brought it.
type kernelFeature struct {
	name  string
	since KernelRelease
}

// The features the package uses that came after Linux 5.0. Each call site has a fallback but
// pidfd_open's, which is the minimum (see CheckKernel).
var (
	featurePidfdOpen     = kernelFeature{"pidfd_open", KernelRelease{5, 3}}
	featureEpollPwait2   = kernelFeature{"epoll_pwait2", KernelRelease{5, 11}}
	featureNSGetTgid     = kernelFeature{"NS_GET_TGID_IN_PIDNS", KernelRelease{6, 8}}
	featurePidfdGetPidNS = kernelFeature{"PIDFD_GET_PID_NAMESPACE", KernelRelease{6, 11}}
	emulatedKernel       KernelRelease // set only by builds with the kernelemu tag (kernelemu.go)
)

// missing reports whether this process behaves as on a kernel older than f: never, unless a test
// build emulates one. A call site that finds its feature missing takes the error that kernel gives
// (ENOSYS for a system call, ENOTTY for an ioctl) without making the call.
func missing(f kernelFeature) bool {
	return emulatedKernel != (KernelRelease{}) && emulatedKernel.before(f.since)
}

// EmulatedKernel is the release a kernelemu test build behaves as, or the zero release: always,
// in a production build.
func EmulatedKernel() KernelRelease { return emulatedKernel }

// MinimumKernel is the oldest release the shim works on: it follows a container's processes
// through pidfds (pidfd_open and polling one, Linux 5.3).
var MinimumKernel = featurePidfdOpen.since

// CheckKernel returns an error naming the missing feature and the release that brings it when the
// running kernel is older than MinimumKernel. It probes the feature (distributions backport system
// calls, so the version number would mislead) once per process.
var CheckKernel = sync.OnceValue(func() error {
	fd, err := pidfdOpen(unix.Getpid(), 0)
	if err == nil {
		unix.Close(fd)
		return nil
	}
	if errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("this kernel has no %s (Linux %s or later): the shim cannot follow a container's processes; run the container with io.containerd.runc.v2 instead", featurePidfdOpen.name, featurePidfdOpen.since)
	}
	return fmt.Errorf("probe %s: %w", featurePidfdOpen.name, err)
})
