#!/usr/bin/env bash
# kernel-vm.sh: runs the process/ suite and integration tests (a private containerd, runc and the
# shim inside the guest) on a real older kernel, Debian 12's own Linux 6.1, booted under qemu with
# software emulation (TCG: a KVM guest hung on this machine). `make test-kernel-6.1` runs it.
#
# The guest has no disk: its initramfs loads the 9p and overlay modules of that kernel, mounts the
# host's root file system read-only over virtio-9p with a tmpfs overlay on top, and runs the test
# binaries (built here, on the host) in it (switch_root), as root, with its own /proc, /sys, /dev
# and cgroups as this host has them (v1 hybrid). The tests' output comes back on the serial
# console, and the suites' status in the last line ("kernel-vm: exit N"), which this script turns
# into its own.
#
#   STACK_DIR       cache directory (default /var/cache/graceful-stack)
#   VM_KERNEL_PKG   the kernel package (default: what linux-image-amd64 depends on in bookworm)
#   VM_SUITES       which suites run, in order (default: process integration)
#   VM_PROCESS_ARGS arguments for the process/ test binary (default: -test.v -test.timeout 60m)
#   VM_INTEGRATION_ARGS
#                   arguments for the integration/ test binary (default: the same; make
#                   test-kernel-6.1 passes a -test.run of the core stop tests)
#   VM_TIMEOUT      the whole boot and run, in seconds (default 3600)
#   VM_SLOWDOWN     how much the tests' waits and bounds are stretched (GRACEFUL_TEST_SLOWDOWN,
#                   default 10: TCG runs the suite about ten times slower than this machine)
set -euo pipefail

STACK_DIR=${STACK_DIR:-/var/cache/graceful-stack}
VM_SUITES=${VM_SUITES:-process integration}
VM_PROCESS_ARGS=${VM_PROCESS_ARGS:--test.v -test.timeout 60m}
VM_INTEGRATION_ARGS=${VM_INTEGRATION_ARGS:--test.v -test.timeout 60m}
VM_TIMEOUT=${VM_TIMEOUT:-3600}
VM_SLOWDOWN=${VM_SLOWDOWN:-10}
SLOWDOWN_ENV=GRACEFUL_TEST_SLOWDOWN
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

log() { echo "kernel-vm: $*" >&2; }

need() {
	local missing=()
	for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
}
need qemu-system-x86 busybox-static kmod cpio

# The kernel: Debian's package, unpacked into the stack cache (not installed on the host).
pkg=${VM_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')}
kdir="$STACK_DIR/kernel/$pkg"
if [ ! -e "$kdir/.complete" ]; then
	log "unpacking $pkg"
	rm -rf "$kdir" && mkdir -p "$kdir"
	(cd "$kdir" && apt-get download -qq "$pkg" && dpkg-deb -x ./*.deb unpacked && rm -f ./*.deb)
	ver=$(ls "$kdir/unpacked/lib/modules")
	depmod -b "$kdir/unpacked" "$ver"
	touch "$kdir/.complete"
fi
ver=$(ls "$kdir/unpacked/lib/modules")
vmlinuz="$kdir/unpacked/boot/vmlinuz-$ver"

# On the host's disk, which the guest sees (its /tmp and /run are its own).
mkdir -p "$STACK_DIR/kernel"
work=$(mktemp -d "$STACK_DIR/kernel/run.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The test binaries, built on the host: the guest runs them from the host's file system. For the
# integration suite, the shim, its helpers and the test images' programs too (GRACEFUL_STACK_PREBUILT),
# and containerd and runc from the stack cache.
log "building the test binaries"
(cd "$root" && CGO_ENABLED=0 go test -c -o "$work/process.test" ./process/)
if [[ " $VM_SUITES " == *" integration "* ]]; then
	(cd "$root" && go test -c -o "$work/integration.test" ./integration/)
	pre="$work/prebuilt"
	(cd "$root" && go build -o "$pre/containerd-shim-graceful-v2" ./cmd/containerd-shim-graceful-v2)
	for pkg in ./cmd/graceful-hold ./integration/testdata/gohandler ./integration/testdata/goinit ./integration/testdata/runcnocpu; do
		(cd "$root" && CGO_ENABLED=0 go build -o "$pre/$(basename "$pkg")" "$pkg")
	done
	(cd "$root" && sh initproc/build.sh "$pre/graceful-init" v0.0.0-test stack)
fi

# What the guest runs: each suite in turn (VM_*_ARGS split into words here and
# quoted for it), then the first failure's status or 0.
suite() { # suite NAME ARGS [ENV...]
	local name=$1 args=() ; read -ra args <<< "$2"; shift 2
	echo "cd $root/$name"
	printf 'env PATH=/usr/local/go/bin:/usr/sbin:/usr/bin:/sbin:/bin %s=%q' "$SLOWDOWN_ENV" "$VM_SLOWDOWN"
	printf ' %q' "$@" "$work/$name.test" "${args[@]}"
	echo
	printf 's=$?; echo "kernel-vm: the %s suite exited $s"; [ "$status" -ne 0 ] || status=$s\n' "$name"
}
{
	echo 'status=0'
	for name in $VM_SUITES; do
		case $name in
		process) suite process "$VM_PROCESS_ARGS" ;;
		integration) suite integration "$VM_INTEGRATION_ARGS" "GRACEFUL_STACK_PREBUILT=$pre" ;;
		*) log "VM_SUITES: unknown suite $name (process, integration)"; exit 2 ;;
		esac
	done
	echo 'exit $status'
} > "$work/run.sh"

# The initramfs: busybox, the modules that 9p, overlay and fuse (for the stuck-argv test) need, in
# the order modprobe would load them, and /init.
init="$work/initramfs"
mkdir -p "$init"/{bin,proc,sys,dev,newroot,lower,upper,modules}
cp /bin/busybox "$init/bin/busybox"
for m in virtio_pci 9pnet_virtio 9p overlay fuse; do
	modprobe -d "$kdir/unpacked" -S "$ver" --show-depends "$m"
done | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' > "$work/modules.order"
n=0
while read -r ko; do
	n=$((n + 1))
	cp "$ko" "$init/modules/$(printf %02d "$n")-$(basename "$ko")"
done < "$work/modules.order"
cat > "$init/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for ko in /modules/*; do
	case "\$ko" in
	*.xz) xz -dc "\$ko" > /tmp.ko && insmod /tmp.ko && rm /tmp.ko ;;
	*) insmod "\$ko" ;;
	esac
done
# The 9p device appears once virtio_pci has probed it.
for i in 1 2 3 4 5 6 7 8 9 10; do
	mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /lower 2>/dev/null && break
	sleep 0.5
done
grep -q " /lower " /proc/mounts || { echo "kernel-vm: cannot mount the host's root over 9p"; echo "kernel-vm: exit 125"; poweroff -f; }
mount -t tmpfs tmpfs /upper
mkdir -p /upper/up /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/up,workdir=/upper/work /newroot
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
# The cgroups as this host has them (cgroup v1 hybrid): v1 controllers, name=systemd and cgroup2
# at unified, as the suite runs in CI.
mount -t tmpfs -o mode=755 cgroup /newroot/sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
	mkdir /newroot/sys/fs/cgroup/\$c && mount -t cgroup -o \$c cgroup /newroot/sys/fs/cgroup/\$c
done
mkdir /newroot/sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /newroot/sys/fs/cgroup/systemd
mkdir /newroot/sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup/unified
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
# The guest's own /tmp and /run; a source tree in the host's (a CI clone in /tmp) stays visible.
mkdir /keep && mount --bind /newroot$root /keep
for d in tmp run; do mount -t tmpfs tmpfs /newroot/\$d; done
mkdir -p /newroot$root && mount --move /keep /newroot$root
ulimit -n 1048576 # as containerd's and systemd's services have it
echo "kernel-vm: \$(uname -r), \$(nproc) CPUs, running: $VM_SUITES"
# switch_root, not chroot: the overlay becomes the mount namespace's root, so that runc can
# pivot_root into a container: from the initramfs it cannot, and the containers it starts there
# anyway have a root that a later runc exec does not enter (the exec'd process saw the initramfs).
exec switch_root /newroot /bin/bash -c 'bash $work/run.sh; echo "kernel-vm: exit \$?"; exec /bin/busybox poweroff -f'
EOF
chmod +x "$init/init"
(cd "$init" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initramfs.gz"

log "booting Linux $ver under qemu (TCG)"
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -m 8192 -smp 2 -nographic -no-reboot \
	-kernel "$vmlinuz" -initrd "$work/initramfs.gz" \
	-append "console=ttyS0 rdinit=/init panic=-1 quiet" \
	-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
	< /dev/null | tee "$work/console.log"
status=$(sed -n 's/^kernel-vm: exit \([0-9]*\).*/\1/p' "$work/console.log" | tail -1)
if [ -z "$status" ]; then
	log "the guest ended without the test's exit status"
	exit 1
fi
log "the suites on Linux $ver exited $status"
exit "$status"
