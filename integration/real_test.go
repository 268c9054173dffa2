//go:build real

package integration

// make test-real: real inits and real servers from Debian 12's packages, in a root file system
// that install-real.sh builds with mmdebstrap (no registry), each under the stock shim and under
// graceful in the same run. Each case asserts what its user cares about; where the stock shim
// loses the work, the case asserts that it does. docs/real-world.md has the table.

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/graceful-shim/graceful/integration/stack"
)

// realRootfs is the root file system install-real.sh builds.
func realRootfs(t *testing.T) string {
	t.Helper()
	root, err := filepath.EvalSymlinks(filepath.Join(stack.StackDir(), "real", "rootfs"))
	if err != nil {
		t.Fatalf("no real-world root file system (run integration/stack/install-real.sh): %v", err)
	}
	return root
}

// realSpec runs args from the real root file system, read-only, with tmpfs on /tmp and /run.
func realSpec(t *testing.T, runtime string, args ...string) stack.Spec {
	return stack.Spec{Runtime: runtime, Rootfs: realRootfs(t), Args: args,
		Env:    []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"},
		Mounts: []specs.Mount{tmpfs("/tmp"), tmpfs("/run")}}
}

func tmpfs(at string) specs.Mount {
	return specs.Mount{Destination: at, Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}}
}

// bindDir bind-mounts the host directory dir at at, read-write.
func bindDir(dir, at string) specs.Mount {
	return specs.Mount{Destination: at, Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}
}

// confDir writes files (name → content; names ending in .sh or run are executable) into a new
// host directory, to bind-mount at /conf.
func confDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") || filepath.Base(name) == "run" {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// appScript is an app that exits at once on TERM, beside a helper whose TERM handler flushes
// through a child process (helperForks).
var appScript = helperForks("helper") + `trap "exit 0" TERM; echo ready; ` + waitLoop

// Real inits as PID 1, each with an app that exits at once on TERM and a helper that needs 0.3 s
// to flush, through a child process. Under the stock shim, init exits with the app (or on TERM
// itself, runsvdir) and the kernel zaps the flush; supervisord stops its programs one by one and
// waits for each, so the flush completes there too. Graceful completes it everywhere.
func TestRealInits(t *testing.T) {
	supervisord := map[string]string{
		"supervisord.conf": `[supervisord]
nodaemon=true
user=root
logfile=/dev/null
logfile_maxbytes=0
pidfile=/tmp/supervisord.pid

[program:app]
command=/bin/sh /conf/app.sh
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
redirect_stderr=true

[program:helper]
command=/bin/sh /conf/helper.sh
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
redirect_stderr=true
`,
		"app.sh":    `trap "exit 0" TERM; echo ready; ` + waitLoop + "\n",
		"helper.sh": helperForksScript("helper") + "\n",
	}
	runit := map[string]string{
		"service/app/run":    "#!/bin/sh\nexec /bin/sh /conf/app.sh\n",
		"service/helper/run": "#!/bin/sh\nexec /bin/sh /conf/helper.sh\n",
		"app.sh":             supervisord["app.sh"],
		"helper.sh":          supervisord["helper.sh"],
	}
	for _, tc := range []struct {
		name  string
		args  []string
		conf  map[string]string
		stock string // the helper's marker under the stock shim
	}{
		{"tini", []string{"tini", "--", "sh", "-c", appScript}, nil, ""},
		{"tini-g", []string{"tini", "-g", "--", "sh", "-c", appScript}, nil, ""},
		// dumb-init TERMs its child's whole process group again when the child exits, which
		// cuts a flush in that group under any shim: the helper runs in a session of its own.
		{"dumb-init", []string{"dumb-init", "sh", "-c", "setsid " + appScript}, nil, ""},
		{"catatonit", []string{"catatonit", "--", "sh", "-c", appScript}, nil, ""},
		{"supervisord", []string{"supervisord", "-n", "-c", "/conf/supervisord.conf"}, supervisord, "clean"},
		{"runsvdir", []string{"runsvdir", "-P", "/conf/service"}, runit, ""},
	} {
		for _, runtime := range runtimes {
			t.Run(tc.name+"/"+short(runtime), func(t *testing.T) {
				spec := realSpec(t, runtime, tc.args...)
				if tc.conf != nil {
					spec.Mounts = append(spec.Mounts, bindDir(confDir(t, tc.conf), "/conf"))
				}
				c := start(t, spec)
				waitTrapped(t, c, "helper")
				took, st, err := c.Stop(stackContext(), syscall.SIGTERM, 15*time.Second)
				if err != nil {
					t.Fatalf("stop: %v", err)
				}
				got := c.Marker("helper")
				t.Logf("%s under %s: stop took %v, init's exit code %d, the helper's flush %q", tc.name, short(runtime), took, st.ExitCode(), got)
				want := "clean"
				if runtime == stack.StockRuntime {
					want = tc.stock
				}
				if got != want {
					t.Fatalf("the helper's flush: %q, want %q", got, want)
				}
				if runtime == stack.GracefulRuntime && st.ExitCode() != exitOK {
					t.Fatalf("init exited with code %d, want 0", st.ExitCode())
				}
			})
		}
	}
}

// nginxConf is an nginx configuration serving /conf/www on 127.0.0.1:port at 200 KB/s, with two
// workers and every writable path on /tmp (the root file system is read-only).
func nginxConf(port int) string {
	return fmt.Sprintf(`worker_processes 2;
pid /tmp/nginx.pid;
error_log stderr notice;
events {}
http {
	access_log off;
	client_body_temp_path /tmp/body;
	proxy_temp_path /tmp/proxy;
	fastcgi_temp_path /tmp/fastcgi;
	uwsgi_temp_path /tmp/uwsgi;
	scgi_temp_path /tmp/scgi;
	server {
		listen 127.0.0.1:%d;
		root /conf/www;
		sendfile off;
		limit_rate 200k;
	}
}
`, port)
}

// downloadSize is the file a slow client downloads from nginx: 4 s at 200 KB/s.
const downloadSize = 800 << 10

// download is a slow client's download in flight: started, it reports once the first bytes came,
// and then how many bytes it got in all, and when it ended.
type download struct {
	started chan struct{}
	done    chan struct{}
	got     int64
	end     time.Time
	err     error
}

func startDownload(t *testing.T, url string) *download {
	d := &download{started: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		resp, err := http.Get(url)
		if err != nil {
			d.err = err
			close(d.started)
			return
		}
		defer resp.Body.Close()
		r := bufio.NewReader(resp.Body)
		if _, err := r.Peek(1); err != nil {
			d.err = err
			close(d.started)
			return
		}
		close(d.started)
		d.got, d.err = io.Copy(io.Discard, r)
		d.end = time.Now()
	}()
	select {
	case <-d.started:
	case <-time.After(20 * time.Second):
		t.Fatal("the download did not start")
	}
	if d.err != nil {
		t.Fatalf("download: %v", d.err)
	}
	return d
}

// wait returns the bytes the download got once it has ended.
func (d *download) wait(t *testing.T) int64 {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the download did not end")
	}
	return d.got
}

// nginx with its image's STOPSIGNAL SIGQUIT (recorded in the container label), serving a slow
// download when the stop comes, as PID 1 and behind an entrypoint script without a trap (no exec),
// with a helper beside it whose TERM handler forks: as PID 1 nginx's graceful quit keeps the
// download under both shims, and only graceful also lets the helper (an exec process) finish.
// Behind the script, the stock shim's QUIT is dropped by the script: the container runs on until a
// SIGKILL, which cuts the download; graceful sends nginx QUIT and the helper TERM, and the download
// completes whole before the workers exit.
func TestRealNginx(t *testing.T) {
	nginx := `nginx -c /conf/nginx.conf -g "daemon off;"`
	for _, shape := range []string{"pid1", "script"} {
		for _, runtime := range runtimes {
			t.Run(shape+"/"+short(runtime), func(t *testing.T) {
				port := freePort(t)
				conf := confDir(t, map[string]string{"nginx.conf": nginxConf(port), "www/big": strings.Repeat("x", downloadSize)})
				args := []string{"sh", "-c", helperForks("helper") + "echo ready\n" + nginx + "\n"}
				if shape == "pid1" {
					args = []string{"nginx", "-c", "/conf/nginx.conf", "-g", "daemon off;"}
				}
				spec := realSpec(t, runtime, args...)
				spec.HostNetwork = true
				spec.Labels = map[string]string{"io.containerd.image.config.stop-signal": "SIGQUIT"}
				spec.Mounts = append(spec.Mounts, bindDir(conf, "/conf"), tmpfs("/var/log/nginx"), tmpfs("/var/lib/nginx"))
				c := startWaiting(t, spec, func(o *stack.Output) error { return o.WaitContains("start worker process", 20*time.Second) })
				if shape == "pid1" {
					execHelper(t, c)
				} else {
					waitTrapped(t, c, "helper")
				}
				d := startDownload(t, fmt.Sprintf("http://127.0.0.1:%d/big", port))
				stopAt := time.Now()
				if shape == "script" && runtime == stack.StockRuntime {
					expectDroppedThenKilled(t, c, syscall.SIGQUIT, "helper")
					got := d.wait(t)
					t.Logf("stock, behind a script: the download got %d of %d bytes", got, downloadSize)
					if got >= downloadSize {
						t.Fatalf("stock: the download completed (%d bytes) although nginx was SIGKILLed", got)
					}
					return
				}
				took, st, err := c.Stop(stackContext(), syscall.SIGQUIT, 20*time.Second)
				exited := time.Now()
				if err != nil {
					t.Fatalf("stop: %v", err)
				}
				got := d.wait(t)
				helper := c.Marker("helper")
				t.Logf("%s under %s: stop took %v, exit code %d, download %d of %d bytes (ended %v after the stop), helper %q",
					shape, short(runtime), took, st.ExitCode(), got, downloadSize, d.end.Sub(stopAt), helper)
				if got != downloadSize || d.err != nil {
					t.Fatalf("the download got %d of %d bytes (%v)", got, downloadSize, d.err)
				}
				if !d.end.Before(exited) {
					t.Fatal("the container exited before the download ended")
				}
				if st.ExitCode() != exitOK {
					t.Fatalf("exit code %d, want 0 (nginx's graceful quit)", st.ExitCode())
				}
				if !strings.Contains(c.Output.String(), "gracefully shutting down") {
					t.Fatalf("nginx did not quit gracefully: %q", tail(c.Output.String()))
				}
				// The exec'd helper is zapped under stock when nginx's master exits.
				zappedUnderStock(t, helper, runtime, "helper", took)
			})
		}
	}
}

// execHelper starts helperForks's script as an exec process of c (a sidecar-like helper beside a
// PID 1 without a script) and waits until its trap is set.
func execHelper(t *testing.T, c *stack.Container) {
	t.Helper()
	out, _, err := c.Exec(stackContext(), "helper", "sh", "-c", helperForksScript("helper"))
	if err != nil {
		t.Fatal(err)
	}
	if err := out.WaitLine("trapped helper", 20*time.Second); err != nil {
		t.Fatal(err)
	}
}

// tail is the end of a long output, for a failure message.
func tail(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}

// postgresUID is the postgres user of the real root file system.
func postgresUID(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(realRootfs(t), "etc", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Split(line, ":"); len(f) > 3 && f[0] == "postgres" {
			uid, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatal(err)
			}
			return uid
		}
	}
	t.Fatal("no postgres user in the root file system")
	return 0
}

const (
	pgBin   = "/usr/lib/postgresql/15/bin/"
	pgReady = "LOG:  database system is ready to accept connections"
	// pgStart runs PostgreSQL in the foreground on /data, logging without a prefix.
	pgStart = pgBin + `postgres -D /data -k /tmp -c listen_addresses= -c "log_line_prefix="`
)

// PostgreSQL 15 started by an entrypoint script without a trap (no exec), a helper beside it.
// Under graceful, the postmaster gets TERM (its smart shutdown): afterwards pg_controldata says
// "shut down" and the next start needs no crash recovery. Under the stock shim the script drops
// TERM, the SIGKILL that follows leaves the cluster "in production", and the next start recovers.
func TestRealPostgres(t *testing.T) {
	uid := postgresUID(t)
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			data := t.TempDir()
			if err := os.Chown(data, uid, uid); err != nil {
				t.Fatal(err)
			}
			os.Chmod(data, 0o700)
			script := pgBin + "initdb -D /data --locale=C.UTF-8 -E UTF8 >/dev/null\n" + helperForks("helper") + pgStart + "\n"
			spec := realSpec(t, runtime, "sh", "-c", script)
			spec.User = strconv.Itoa(uid)
			spec.Mounts = append(spec.Mounts, bindDir(data, "/data"))
			c := startUntil(t, spec, pgReady)
			waitTrapped(t, c, "helper")
			if runtime == stack.StockRuntime {
				expectDroppedThenKilled(t, c, syscall.SIGTERM, "helper")
			} else {
				took := stopExpect(t, c, 20*time.Second, exitOK)
				t.Logf("graceful: stop took %v, helper %q", took, c.Marker("helper"))
				if c.Marker("helper") != "clean" {
					t.Fatal("the helper's flush did not complete")
				}
			}
			// The next start: what pg_controldata says, then whether the server recovers.
			next := realSpec(t, stack.GracefulRuntime, "sh", "-c", pgBin+"pg_controldata /data; exec "+pgStart)
			next.User = spec.User
			next.Mounts = append(next.Mounts, bindDir(data, "/data"))
			n := startUntil(t, next, pgReady)
			out := n.Output.String()
			state := ""
			for _, line := range strings.Split(out, "\n") {
				if s, ok := strings.CutPrefix(line, "Database cluster state:"); ok {
					state = strings.TrimSpace(s)
				}
			}
			recovered := strings.Contains(out, "automatic recovery in progress")
			t.Logf("%s: after the stop the cluster is %q; the next start recovered: %v", short(runtime), state, recovered)
			if runtime == stack.StockRuntime {
				if state != "in production" || !recovered {
					t.Fatalf("stock: want the cluster left in production and a recovery at the next start: %q", tail(out))
				}
				return
			}
			if state != "shut down" || recovered {
				t.Fatalf("graceful: want the cluster shut down and no recovery at the next start: %q", tail(out))
			}
		})
	}
}

// A JVM with a shutdown hook (1 s) behind run.sh, a script without a trap that runs java without
// exec, and a helper beside it: the seed's case with Debian's default JRE. Graceful gives the JVM
// its TERM: the hook runs to its end. The stock shim's TERM is dropped by the script, and the
// SIGKILL that follows skips the hook.
func TestRealJVM(t *testing.T) {
	conf := map[string]string{"run.sh": "#!/bin/sh\n" + helperForks("helper") +
		"java -Xmx64m -XX:+UseSerialGC -cp /opt/graceful-real Hook\n"}
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			spec := realSpec(t, runtime, "/conf/run.sh")
			spec.Mounts = append(spec.Mounts, bindDir(confDir(t, conf), "/conf"))
			c := start(t, spec)
			waitTrapped(t, c, "helper")
			if runtime == stack.StockRuntime {
				expectDroppedThenKilled(t, c, syscall.SIGTERM, "hook")
				return
			}
			took := stopExpect(t, c, 20*time.Second, exitSIGTERM)
			t.Logf("graceful: stop took %v, hook %q, helper %q", took, c.Marker("hook"), c.Marker("helper"))
			if c.Marker("hook") != "done" {
				t.Fatal("the JVM's shutdown hook did not run to its end")
			}
			if c.Marker("helper") != "clean" {
				t.Fatal("the helper's flush did not complete")
			}
		})
	}
}

// pythonServer is an HTTP server whose SIGTERM handler takes 0.3 s to finish its work, writes
// /out/server and exits 0.
const pythonServer = `
import http.server, signal, sys, time
def stop(signum, frame):
    time.sleep(0.3)
    open("/out/server", "w").write("graceful\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
print("ready", flush=True)
server.serve_forever()
`

// A Python HTTP server with a SIGTERM handler as PID 1, and a helper exec'd beside it: its
// handler runs under both shims, but only graceful lets the helper finish; the stock shim's
// stop zaps it when the server exits.
func TestRealPython(t *testing.T) {
	for _, runtime := range runtimes {
		t.Run(short(runtime), func(t *testing.T) {
			c := start(t, realSpec(t, runtime, "python3", "-c", pythonServer))
			execHelper(t, c)
			took := stopExpect(t, c, 15*time.Second, exitOK)
			t.Logf("%s: stop took %v, server %q, helper %q", short(runtime), took, c.Marker("server"), c.Marker("helper"))
			if c.Marker("server") != "graceful" {
				t.Fatal("the server's handler did not finish")
			}
			zappedUnderStock(t, c.Marker("helper"), runtime, "helper", took)
		})
	}
}
