package stack

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// CRINamespace is the containerd namespace of containerd's CRI plugin (Kubernetes).
const CRINamespace = "k8s.io"

// BuildShim builds containerd-shim-graceful-v2 into dir, for configurations that must name the
// binary before the daemon starts (a CRI runtime_path). It returns the binary's path.
func BuildShim(dir string) (string, error) {
	out := filepath.Join(dir, "containerd-shim-graceful-v2")
	if err := buildGo(out, "./cmd/containerd-shim-graceful-v2", true); err != nil {
		return "", err
	}
	if err := buildHelpers(dir); err != nil {
		return "", err
	}
	return out, nil
}

// buildHelpers builds graceful-init and graceful-hold into dir, next to the shim, where the shim
// looks for them.
func buildHelpers(dir string) error { return buildHelpersTags(dir, buildTags) }

// buildHelpersTags is buildHelpers with graceful-hold built with the build tags tags.
func buildHelpersTags(dir, tags string) error {
	if err := BuildInit(filepath.Join(dir, "graceful-init"), "v0.0.0-test", InitTestCommit); err != nil {
		return err
	}
	return buildGoTags(filepath.Join(dir, "graceful-hold"), "./cmd/graceful-hold", tags, false)
}

// InitTestCommit is the commit the stack's graceful-init reports in its --version line.
const InitTestCommit = "stack"

// BuildInit builds graceful-init (C, static) into out with version and commit, as the Makefile
// does, and syncs it.
func BuildInit(out, version, commit string) error {
	if ok, err := prebuilt(out, "graceful-init"); err != nil {
		return err
	} else if !ok {
		cmd := exec.Command("sh", "initproc/build.sh", out, version, commit)
		cmd.Dir = ModuleRoot()
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build graceful-init: %w\n%s", err, msg)
		}
	}
	// Written to disk now: pages of a fresh file stay dirty until written back, and would count
	// as the private dirty memory of every init that maps them.
	f, err := os.Open(out)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ImportInto imports an image archive into containerd namespace ns and unpacks it for overlayfs.
func (s *Stack) ImportInto(ctx context.Context, ns string, archive io.Reader) (containerd.Image, error) {
	ctx = namespaces.WithNamespace(ctx, ns)
	imgs, err := s.Client.Import(ctx, archive)
	if err != nil {
		return nil, fmt.Errorf("import image into %s: %w", ns, err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("import image into %s: got %d images", ns, len(imgs))
	}
	img := containerd.NewImage(s.Client, imgs[0])
	if err := img.Unpack(ctx, "overlayfs"); err != nil {
		return nil, fmt.Errorf("unpack image %s in %s: %w", img.Name(), ns, err)
	}
	return img, nil
}

// ShimPids returns the pids of the shim processes of this stack serving the shim id (for CRI, the
// pod sandbox id): processes whose command line names containerd-shim, the stack's Dir and
// "-id <id>".
func (s *Stack) ShimPids(id string) []int {
	return Shims(s.Dir, "\x00-id\x00"+id+"\x00")
}
