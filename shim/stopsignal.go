package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

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
					StopSignal runtimeapi.Signal `json:"stop_signal"`
				}
				StopSignal string
			}
		}
		if err := json.Unmarshal(ext.GetValue(), &meta); err != nil {
			return 0, "", fmt.Errorf("CRI container metadata: %w", err)
		}
		if cfg := meta.Metadata.Config; cfg != nil && cfg.StopSignal != runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT {
			name := strings.TrimPrefix(cfg.StopSignal.String(), "SIGNAL_")
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
