package stack

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// ImageName is the name the test image is imported under.
const ImageName = "docker.io/graceful/busybox:latest"

// ImageFile is a file put into the test image.
type ImageFile struct {
	Path   string // inside the image, no leading slash
	Source string // host file
}

// ImageOptions shape a test image.
type ImageOptions struct {
	// Name is the image's name (default ImageName).
	Name string
	// Entrypoint is the image config's entrypoint (none by default; a CRI sandbox image needs one).
	Entrypoint []string
	// Cmd is the image config's command (none by default; Docker Hub's busybox has sh).
	Cmd []string
	// HardLinks makes the applets hard links to bin/busybox, as in Docker Hub's busybox, instead
	// of symbolic links (masking an applet's path then masks that applet only).
	HardLinks bool
	// StopSignal is the image config's stop signal (none by default: SIGTERM), as a Dockerfile's
	// STOPSIGNAL sets it.
	StopSignal string
	// Extra files to put in the image.
	Extra []ImageFile
}

// BuildImage writes a single-layer OCI image archive holding Debian's static busybox (every applet
// linked in /bin) and extra files, without any registry.
func BuildImage(out io.Writer, busybox string, opts ImageOptions) error {
	if opts.Name == "" {
		opts.Name = ImageName
	}
	applets, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, dir := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "out"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755}); err != nil {
			return err
		}
	}
	files := append([]ImageFile{{Path: "bin/busybox", Source: busybox}}, opts.Extra...)
	for _, f := range files {
		data, err := os.ReadFile(f.Source)
		if err != nil {
			return fmt.Errorf("image file: %w", err)
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path, Mode: 0o755, Size: int64(len(data))}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	for _, applet := range strings.Fields(string(applets)) {
		if applet == "busybox" {
			continue
		}
		hdr := &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}
		if opts.HardLinks {
			hdr = &tar.Header{Typeflag: tar.TypeLink, Name: "bin/" + applet, Linkname: "bin/busybox", Mode: 0o755}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}

	blobs := map[string][]byte{}
	add := func(data []byte) (string, int) {
		sum := sha256.Sum256(data)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = data
		return d, len(data)
	}
	layerDigest, layerSize := add(layer.Bytes())
	imageConfig := map[string]any{"Env": []string{"PATH=/bin"}, "Entrypoint": opts.Entrypoint, "Cmd": opts.Cmd}
	if opts.StopSignal != "" {
		imageConfig["StopSignal"] = opts.StopSignal
	}
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       imageConfig,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	configDigest, configSize := add(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize}},
	})
	manifestDigest, manifestSize := add(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": opts.Name, "org.opencontainers.image.ref.name": "latest"},
		}},
	})

	ow := tar.NewWriter(out)
	write := func(name string, data []byte) error {
		if err := ow.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err := ow.Write(data)
		return err
	}
	if err := write("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := write("index.json", index); err != nil {
		return err
	}
	for d, data := range blobs {
		if err := write("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), data); err != nil {
			return err
		}
	}
	return ow.Close()
}
