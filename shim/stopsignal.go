package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"

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

// recordedSignal is the outcome of a lookup, as the lookup process writes it.
type recordedSignal struct {
	Signal unix.Signal `json:"signal"`
	Where  string      `json:"where,omitempty"`
	Error  string      `json:"error,omitempty"`
}

// StopSignalMain is the lookup process's main: args are containerd's gRPC address, the namespace
// and the container id; it writes one recordedSignal to out.
func StopSignalMain(args []string, out io.Writer) int {
	if len(args) != 3 {
		fmt.Fprintf(os.Stderr, "usage: %s ADDRESS NAMESPACE ID\n", StopSignalCommand)
		return 2
	}
	var r recordedSignal
	sig, where, err := recordedStopSignal(context.Background(), args[0], args[1], args[2])
	r.Signal, r.Where = sig, where
	if err != nil {
		r.Error = err.Error()
	}
	if err := json.NewEncoder(out).Encode(r); err != nil {
		return 1
	}
	return 0
}

// stopSignalLookup is a lookup of a container's recorded stop signal running in a process of its
// own (StopSignalMain).
type stopSignalLookup struct {
	outcome chan recordedSignal // gets one value
	// stop ends the lookup, if it still runs, without waiting for it.
	stop context.CancelFunc
}

// lookupStopSignal starts the lookup of container id's recorded stop signal; Create overlaps it
// with runc's create. The outcome comes at most stopSignalLookupTimeout and a second later.
func lookupStopSignal(address, ns, id string) *stopSignalLookup {
	limit := stopSignalLookupTimeout + time.Second
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	l := &stopSignalLookup{outcome: make(chan recordedSignal, 1), stop: cancel}
	if address == "" {
		cancel()
		l.outcome <- recordedSignal{Error: "no containerd address"}
		return l
	}
	cmd := lookupCommand(address, ns, id)
	in, out, done, err := startHelper(cmd)
	if err != nil {
		cancel()
		l.outcome <- recordedSignal{Error: fmt.Sprintf("start the lookup: %v", err)}
		return l
	}
	in.Close()
	go func() {
		defer out.Close()
		defer cancel()
		decoded := make(chan recordedSignal, 1)
		go func() {
			var r recordedSignal
			if err := json.NewDecoder(out).Decode(&r); err != nil {
				r = recordedSignal{Error: fmt.Sprintf("read the lookup's answer: %v", err)}
			}
			decoded <- r
		}()
		select {
		case r := <-decoded:
			l.outcome <- r
		case <-ctx.Done():
			cmd.Process.Kill()
			l.outcome <- recordedSignal{Error: fmt.Sprintf("the lookup did not answer (limit %s): %v", limit, ctx.Err())}
		}
		<-done
	}()
	return l
}

// result waits for the lookup's outcome, or for ctx to end, which ends the lookup.
func (l *stopSignalLookup) result(ctx context.Context) recordedSignal {
	select {
	case r := <-l.outcome:
		return r
	case <-ctx.Done():
		l.stop()
		return recordedSignal{Error: fmt.Sprintf("the lookup was cut short: %v", ctx.Err())}
	}
}

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
	req := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), id) // GetContainerRequest.id
	var resp []byte
	if err := conn.Invoke(ctx, getContainerMethod, req, &resp, grpc.ForceCodec(wireCodec{})); err != nil {
		return 0, "", fmt.Errorf("get container %s: %w", id, err)
	}
	rec, err := decodeGetContainerResponse(resp)
	if err != nil {
		return 0, "", fmt.Errorf("get container %s: %w", id, err)
	}
	return stopSignalOf(rec)
}

// getContainerMethod is containerd's Containers.Get (api/services/containers/v1).
const getContainerMethod = "/containerd.services.containers.v1.Containers/Get"

// wireCodec passes protobuf messages already in wire form: the lookup reads the two fields it
// needs itself rather than link the containers API's generated types, whose descriptors every
// shim would otherwise register at start.
type wireCodec struct{}

func (wireCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("wire codec: %T is not []byte", v)
	}
	return b, nil
}

func (wireCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("wire codec: %T is not *[]byte", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

// Name is "proto", so that containerd's server decodes the request with its protobuf codec.
func (wireCodec) Name() string { return "proto" }

// containerRecord is what the stop signal lookup reads of containerd's Container message: its
// labels, and the value of each extension (a google.protobuf.Any) by name.
type containerRecord struct {
	Labels     map[string]string
	Extensions map[string][]byte
}

// Field numbers of containerd's containers API (containers.proto) and of google.protobuf.Any.
const (
	getContainerResponseContainer = 1
	containerLabels               = 2
	containerExtensions           = 10
	mapEntryKey, mapEntryValue    = 1, 2
	anyValue                      = 2
)

// decodeGetContainerResponse reads a GetContainerResponse's container record.
func decodeGetContainerResponse(b []byte) (containerRecord, error) {
	rec := containerRecord{Labels: map[string]string{}, Extensions: map[string][]byte{}}
	err := eachField(b, func(num protowire.Number, v []byte) error {
		if num != getContainerResponseContainer {
			return nil
		}
		return eachField(v, func(num protowire.Number, v []byte) error {
			switch num {
			case containerLabels:
				key, value, err := mapEntry(v)
				rec.Labels[key] = string(value)
				return err
			case containerExtensions:
				key, value, err := mapEntry(v)
				if err != nil {
					return err
				}
				return eachField(value, func(num protowire.Number, v []byte) error {
					if num == anyValue {
						rec.Extensions[key] = v
					}
					return nil
				})
			}
			return nil
		})
	})
	return rec, err
}

// mapEntry reads a protobuf map entry with a string key.
func mapEntry(b []byte) (key string, value []byte, err error) {
	err = eachField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case mapEntryKey:
			key = string(v)
		case mapEntryValue:
			value = v
		}
		return nil
	})
	return key, value, err
}

// eachField calls f with the number and contents of each length-delimited field of message b,
// skipping fields of other wire types.
func eachField(b []byte, f func(protowire.Number, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("container record: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return fmt.Errorf("container record: %w", protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("container record: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, v); err != nil {
			return err
		}
	}
	return nil
}

// stopSignalOf finds the stop signal in a container record: CRI's metadata first (the pod's
// lifecycle.stopSignal, else the image's StopSignal, which is what CRI's StopContainer sends), then
// the well-known label.
func stopSignalOf(c containerRecord) (unix.Signal, string, error) {
	if ext, ok := c.Extensions[criMetadataExtension]; ok {
		var meta struct {
			Metadata struct {
				Config *struct {
					StopSignal int32 `json:"stop_signal"` // CRI's Signal enum
				}
				StopSignal string
			}
		}
		if err := json.Unmarshal(ext, &meta); err != nil {
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
	if v := c.Labels[StopSignalLabel]; v != "" {
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
