package shim

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	containerdshim "github.com/containerd/containerd/v2/pkg/shim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/graceful-shim/graceful/helper"
)

// Main is the shim binary's main: the version, the tracer mode, the stop signal lookup, the start bootstrap for daemons
// of every generation, and otherwise containerd's shim runtime.
func Main() {
	args := os.Args[1:]
	switch {
	case len(args) == 1 && (args[0] == "-v" || args[0] == "-version" || args[0] == "--version"):
		printVersion()
		return
	case len(args) >= 2 && args[0] == HoldCommand:
		os.Exit(helper.Main(args[1:]))
	case len(args) >= 1 && args[0] == StopSignalCommand:
		os.Exit(StopSignalMain(args[1:], os.Stdout))
	case len(args) > 0 && args[len(args)-1] == "start":
		handled, err := legacyStart(args)
		if err != nil {
			fmt.Fprintln(os.Stderr, "containerd-shim-graceful-v2:", err)
			os.Exit(1)
		}
		if handled {
			return
		}
	}
	containerdshim.RunShim(context.Background(), NewManager())
}

func printVersion() {
	containerd := "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/containerd/containerd/v2" {
				containerd = dep.Version
			}
		}
	}
	fmt.Printf("containerd-shim-graceful-v2:\n  Version:    %s\n  Runtime:    %s\n  containerd: %s\n", Version, RuntimeName, containerd)
}

// legacyStart answers the start bootstrap of daemons older than 2.3. Those pass the runtime
// options (or nothing) on stdin and expect the shim's address as plain text, where 2.3 and later
// pass BootstrapParams and expect a BootstrapResult, both in protobuf. It reports false, with stdin
// restored, when stdin holds BootstrapParams naming this shim's id and namespace: containerd's shim
// runtime then answers as usual.
func legacyStart(args []string) (bool, error) {
	fs := flag.NewFlagSet("start", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	namespace := fs.String("namespace", "", "")
	id := fs.String("id", "", "")
	address := fs.String("address", "", "")
	publishBinary := fs.String("publish-binary", "", "")
	debugFlag := fs.Bool("debug", false, "")
	fs.String("bundle", "", "")
	fs.String("socket", "", "")
	fs.String("debug-socket", "", "")
	if err := fs.Parse(args); err != nil {
		return false, nil // not flags this knows: let containerd's runtime report them
	}
	input, err := io.ReadAll(io.LimitReader(os.Stdin, 10<<20))
	if err != nil {
		return false, fmt.Errorf("read stdin: %w", err)
	}
	var params bootapi.BootstrapParams
	if len(input) > 0 && proto.Unmarshal(input, &params) == nil && params.InstanceID == *id && params.Namespace == *namespace {
		return false, restoreStdin(input)
	}

	params = bootapi.BootstrapParams{
		InstanceID:             *id,
		Namespace:              *namespace,
		ContainerdGrpcAddress:  *address,
		ContainerdTtrpcAddress: os.Getenv("TTRPC_ADDRESS"),
		ContainerdBinary:       *publishBinary,
		LogLevel:               bootapi.LogLevel_LOG_LEVEL_INFO,
	}
	if *debugFlag {
		params.LogLevel = bootapi.LogLevel_LOG_LEVEL_DEBUG
	}
	var opts anypb.Any
	if len(input) > 0 && proto.Unmarshal(input, &opts) == nil && opts.GetTypeUrl() != "" {
		params.Extensions = append(params.Extensions, &bootapi.Extension{Value: &opts})
	}
	ctx := namespaces.WithNamespace(context.Background(), *namespace)
	result, err := NewManager().Start(ctx, &params)
	if err != nil {
		return true, err
	}
	_, err = fmt.Fprint(os.Stdout, result.GetAddress())
	return true, err
}

// restoreStdin makes data readable again on os.Stdin.
func restoreStdin(data []byte) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	go func() {
		io.Copy(w, bytes.NewReader(data))
		w.Close()
	}()
	os.Stdin = r
	return nil
}
