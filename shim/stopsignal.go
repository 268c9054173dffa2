package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/graceful-shim/graceful/process"
)

// Where containerd's clients record a container's own stop signal (the image's STOPSIGNAL, or
// Kubernetes' lifecycle.stopSignal), read from the container record through containerd's API.
const (
	// StopSignalLabel is the well-known container label set by ctr, nerdctl and the containerd
	// client (WithImageStopSignal).
	StopSignalLabel = "io.containerd.image.config.stop-signal"
	// criMetadataExtension is the container extension in which CRI keeps its metadata, StopSignal
	// included (the pod's lifecycle.stopSignal, else the image's).
	criMetadataExtension = "io.cri-containerd.container.metadata"
)

// stopSignalLookupTimeout bounds the call to containerd at Create.
const stopSignalLookupTimeout = 2 * time.Second

// recordedStopSignal asks containerd (gRPC at address) for the stop signal that a client recorded
// for container id in namespace ns, and says where it was found. It returns 0 when none is.
func recordedStopSignal(ctx context.Context, address, ns, id string) (unix.Signal, string, error) {
	if address == "" {
		return 0, "", fmt.Errorf("no containerd address")
	}
	ctx, cancel := context.WithTimeout(ctx, stopSignalLookupTimeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, "", fmt.Errorf("connect to containerd: %w", err)
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "containerd-namespace", ns)
	resp, err := containersapi.NewContainersClient(conn).Get(ctx, &containersapi.GetContainerRequest{ID: id})
	if err != nil {
		return 0, "", fmt.Errorf("get container %s: %w", id, err)
	}
	return stopSignalOf(resp.GetContainer())
}

// stopSignalOf finds the stop signal in a container record: CRI's metadata first (the pod's
// lifecycle.stopSignal, else the image's StopSignal, which is what CRI's StopContainer sends), then
// the well-known label.
func stopSignalOf(c *containersapi.Container) (unix.Signal, string, error) {
	if ext, ok := c.GetExtensions()[criMetadataExtension]; ok {
		var meta struct {
			Metadata struct {
				Config *struct {
					StopSignal int32 `json:"stop_signal"` // CRI's Signal enum
				}
				StopSignal string
			}
		}
		if err := json.Unmarshal(ext.GetValue(), &meta); err != nil {
			return 0, "", fmt.Errorf("CRI container metadata: %w", err)
		}
		if cfg := meta.Metadata.Config; cfg != nil && cfg.StopSignal != 0 { // 0: RUNTIME_DEFAULT
			if cfg.StopSignal < 0 || int(cfg.StopSignal) >= len(criSignalNames) {
				return 0, "", fmt.Errorf("CRI stop_signal %d: not a value of CRI's Signal enum", cfg.StopSignal)
			}
			name := criSignalNames[cfg.StopSignal]
			sig, err := process.ParseSignal(name)
			if err != nil {
				return 0, "", fmt.Errorf("CRI stop_signal %s: %w", name, err)
			}
			return sig, "the pod's lifecycle.stopSignal", nil
		}
		if v := meta.Metadata.StopSignal; v != "" {
			sig, err := process.ParseSignal(v)
			if err != nil {
				return 0, "", fmt.Errorf("CRI image stop signal %q: %w", v, err)
			}
			return sig, "the image's StopSignal (CRI)", nil
		}
	}
	if v := c.GetLabels()[StopSignalLabel]; v != "" {
		sig, err := process.ParseSignal(v)
		if err != nil {
			return 0, "", fmt.Errorf("label %s=%q: %w", StopSignalLabel, v, err)
		}
		return sig, "label " + StopSignalLabel, nil
	}
	return 0, "", nil
}

// criSignalNames are the names of CRI's Signal enum (k8s.io/cri-api runtime/v1), by value, without
// its SIGNAL_ prefix. A table rather than the package: importing it registers the whole CRI API's
// protobuf descriptors in every shim, about 150 KB of each idle shim's heap
// (TestCRISignalNamesMatchTheCRIAPI keeps the two the same).
var criSignalNames = [...]string{
	"RUNTIME_DEFAULT", "SIGABRT", "SIGALRM", "SIGBUS", "SIGCHLD", "SIGCLD",
	"SIGCONT", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGIO",
	"SIGIOT", "SIGKILL", "SIGPIPE", "SIGPOLL", "SIGPROF", "SIGPWR",
	"SIGQUIT", "SIGSEGV", "SIGSTKFLT", "SIGSTOP", "SIGSYS", "SIGTERM",
	"SIGTRAP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGUSR1",
	"SIGUSR2", "SIGVTALRM", "SIGWINCH", "SIGXCPU", "SIGXFSZ", "SIGRTMIN",
	"SIGRTMINPLUS1", "SIGRTMINPLUS2", "SIGRTMINPLUS3", "SIGRTMINPLUS4", "SIGRTMINPLUS5", "SIGRTMINPLUS6",
	"SIGRTMINPLUS7", "SIGRTMINPLUS8", "SIGRTMINPLUS9", "SIGRTMINPLUS10", "SIGRTMINPLUS11", "SIGRTMINPLUS12",
	"SIGRTMINPLUS13", "SIGRTMINPLUS14", "SIGRTMINPLUS15", "SIGRTMAXMINUS14", "SIGRTMAXMINUS13", "SIGRTMAXMINUS12",
	"SIGRTMAXMINUS11", "SIGRTMAXMINUS10", "SIGRTMAXMINUS9", "SIGRTMAXMINUS8", "SIGRTMAXMINUS7", "SIGRTMAXMINUS6",
	"SIGRTMAXMINUS5", "SIGRTMAXMINUS4", "SIGRTMAXMINUS3", "SIGRTMAXMINUS2", "SIGRTMAXMINUS1", "SIGRTMAX",
}
