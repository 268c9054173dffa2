package shim

import (
	"bytes"
	"context"
	"fmt"
	"io"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/shim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// optionsManager decorates containerd's runc shim manager: Info and Start get the runtime options
// translated to runc options exactly as Create does (RuncOptions), so that CRI's
// runtimeoptions.v1.Options (a runtime type other than io.containerd.runc.v2) yield the runc
// features (user namespaces, recursive read-only mounts) and the options file's shim_cgroup.
type optionsManager struct {
	shim.Shim
}

// newManager wraps inner, a runc shim manager.
func newManager(inner shim.Shim) shim.Shim {
	return &optionsManager{Shim: inner}
}

// Info reads the runtime options from optionsR (a marshalled Any, or nothing) and asks the runc
// manager for its info with the runc options they translate to.
func (m *optionsManager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	data, err := io.ReadAll(optionsR)
	if err != nil {
		return nil, fmt.Errorf("read runtime options: %w", err)
	}
	var opts *anypb.Any
	if len(data) > 0 {
		opts = &anypb.Any{}
		if err := proto.Unmarshal(data, opts); err != nil {
			return nil, fmt.Errorf("parse runtime options: %w", err)
		}
	}
	runc, err := RuncOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("runtime info: %w", err)
	}
	var translated []byte
	if runc != nil {
		if translated, err = proto.Marshal(runc); err != nil {
			return nil, fmt.Errorf("marshal runc options: %w", err)
		}
	}
	return m.Shim.Info(ctx, bytes.NewReader(translated))
}

// Start starts the shim with the runtime options extension of params translated to runc options,
// so that the runc manager applies their shim_cgroup.
func (m *optionsManager) Start(ctx context.Context, params *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	translated, err := translateBootstrap(params)
	if err != nil {
		return nil, fmt.Errorf("start shim: %w", err)
	}
	return m.Shim.Start(ctx, translated)
}

// translateBootstrap returns params with the runtime options extension (runtimeoptions.v1 or
// none) replaced by the runc options it translates to; params itself is not changed. Runc
// options pass through.
func translateBootstrap(params *bootapi.BootstrapParams) (*bootapi.BootstrapParams, error) {
	out := proto.Clone(params).(*bootapi.BootstrapParams)
	idx := -1
	for i, ext := range out.GetExtensions() {
		v := ext.GetValue()
		if v.MessageIs(&options.Options{}) {
			return out, nil
		}
		if v.MessageIs(&runtimeoptions.Options{}) {
			idx = i
		}
	}
	var opts *anypb.Any
	if idx >= 0 {
		opts = out.Extensions[idx].GetValue()
		out.Extensions = append(out.Extensions[:idx:idx], out.Extensions[idx+1:]...)
	}
	runc, err := RuncOptions(opts)
	if err != nil {
		return nil, err
	}
	if runc != nil {
		out.Extensions = append(out.Extensions, &bootapi.Extension{Value: runc})
	}
	return out, nil
}
