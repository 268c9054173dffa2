package shim

import (
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
)

// RuntimeName is the runtime type users select: runtime_type = "io.containerd.graceful.v2".
const RuntimeName = "io.containerd.graceful.v2"

// Version is the shim's version, set at build time.
var Version = "dev"

func init() {
	registry.Register(&plugin.Registration{
		Type: plugins.TTRPCPlugin,
		ID:   "task",
		Requires: []plugin.Type{
			plugins.EventPlugin,
			plugins.InternalPlugin,
		},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			exits := newExitEvents(pp.(shim.Publisher))
			runc, err := task.NewTaskService(ic.Context, exits, ss.(shutdown.Service))
			if err != nil {
				return nil, err
			}
			svc := newService(ic.Context, runc, pp.(shim.Publisher), exits, ic.Properties[plugins.PropertyGRPCAddress])
			ss.(shutdown.Service).RegisterCallback(svc.awaitReports)
			return svc, nil
		},
	})
}

// NewManager returns the shim manager: containerd's runc manager under the graceful name, with
// the runtime options translated to runc options for its Info and Start (see optionsManager).
func NewManager() shim.Shim {
	return newManager(manager.NewShimManager(RuntimeName))
}
