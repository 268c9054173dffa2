#!/bin/sh
# install.sh: install containerd-shim-graceful-v2, graceful-init and graceful-hold on a node and register the CRI
# runtime handlers "graceful" and "graceful-init" with containerd 2.x, or remove exactly that again.
# Run by contrib/node-installer/daemonset.yaml (host filesystem at /host), or directly on a node.
#
#   install.sh install   [options]
#   install.sh uninstall [options]
#
# Options (each also as an environment variable, shown in brackets; flags win):
#   --host-root DIR          the host's / as seen by this script [GRACEFUL_HOST_ROOT]
#                            (default /host in a Kubernetes pod with /host mounted, else /)
#   --src-dir DIR            where containerd-shim-graceful-v2, graceful-init, graceful-hold are [GRACEFUL_SRC_DIR]
#                            (default /opt/graceful/bin, the installer image's copy)
#   --bin-dir DIR            host path to install them to [GRACEFUL_BIN_DIR] (default /usr/local/bin)
#   --conf-dir DIR           host path of containerd's drop-in dir [GRACEFUL_CONF_DIR]
#                            (default /etc/containerd/conf.d)
#   --containerd-config FILE host path of containerd's main config [GRACEFUL_CONTAINERD_CONFIG]
#                            (default /etc/containerd/config.toml)
#   --state-dir DIR          host path where install records what it added [GRACEFUL_STATE_DIR]
#                            (default /var/lib/graceful-node-installer)
#   --restart MODE           auto | systemd | command | none [GRACEFUL_RESTART] (default auto:
#                            systemd when the host runs systemd, else a warning)
#   --restart-cmd CMD        a shell command that restarts containerd, run by sh -c here (the host
#                            is at $GRACEFUL_HOST_ROOT); used unless --restart is systemd or none
#                            [GRACEFUL_RESTART_CMD]
#   --systemd-cgroup V       auto | true | false: SystemdCgroup of the handlers [GRACEFUL_SYSTEMD_CGROUP]
#                            (default auto: true when the containerd config sets SystemdCgroup = true)
#   --add-imports            add `imports = ["<conf-dir>/*.toml"]` to the main config when it lacks
#                            it (recorded; uninstall removes the line again) [GRACEFUL_ADD_IMPORTS=1]
#   --force                  overwrite binaries or a drop-in that this installer did not write
#                            [GRACEFUL_FORCE=1]
#
# Host paths (--bin-dir, --conf-dir, --containerd-config, --state-dir) are paths on the host; the
# script reaches them below --host-root. containerd is restarted only when something changed.
# Tested by integration/installer_test.go against a private containerd 2.x (see README.md here).
set -eu

prog=install.sh
die() { echo "$prog: error: $*" >&2; exit 1; }
log() { echo "$prog: $*"; }
warn() { echo "$prog: WARNING: $*" >&2; }

usage() {
	sed -n '2,/^set -eu/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit "${1:-0}"
}

[ $# -ge 1 ] || usage 2
action=$1
shift
case $action in
install | uninstall) ;;
-h | --help | help) usage 0 ;;
*) echo "$prog: error: unknown action '$action' (want install or uninstall)" >&2; usage 2 ;;
esac

if [ -z "${GRACEFUL_HOST_ROOT:-}" ]; then
	if [ -n "${KUBERNETES_SERVICE_HOST:-}" ] && [ -d /host/etc ]; then
		GRACEFUL_HOST_ROOT=/host
	else
		GRACEFUL_HOST_ROOT=/
	fi
fi
host_root=$GRACEFUL_HOST_ROOT
src_dir=${GRACEFUL_SRC_DIR:-/opt/graceful/bin}
bin_dir=${GRACEFUL_BIN_DIR:-/usr/local/bin}
conf_dir=${GRACEFUL_CONF_DIR:-/etc/containerd/conf.d}
main_config=${GRACEFUL_CONTAINERD_CONFIG:-/etc/containerd/config.toml}
state_dir=${GRACEFUL_STATE_DIR:-/var/lib/graceful-node-installer}
restart=${GRACEFUL_RESTART:-auto}
restart_cmd=${GRACEFUL_RESTART_CMD:-}
systemd_cgroup=${GRACEFUL_SYSTEMD_CGROUP:-auto}
add_imports=${GRACEFUL_ADD_IMPORTS:-0}
force=${GRACEFUL_FORCE:-0}

while [ $# -gt 0 ]; do
	opt=$1
	case $opt in
	--*=*) val=${opt#*=}; opt=${opt%%=*}; shift; set -- "$opt" "$val" "$@" ;;
	esac
	case $1 in
	--add-imports) add_imports=1; shift; continue ;;
	--force) force=1; shift; continue ;;
	-h | --help) usage 0 ;;
	--host-root | --src-dir | --bin-dir | --conf-dir | --containerd-config | --state-dir | --restart | --restart-cmd | --systemd-cgroup) ;;
	*) die "unknown option '$1' (see $prog --help)" ;;
	esac
	[ $# -ge 2 ] || die "option $1 needs a value"
	case $1 in
	--host-root) host_root=$2 ;;
	--src-dir) src_dir=$2 ;;
	--bin-dir) bin_dir=$2 ;;
	--conf-dir) conf_dir=$2 ;;
	--containerd-config) main_config=$2 ;;
	--state-dir) state_dir=$2 ;;
	--restart) restart=$2 ;;
	--restart-cmd) restart_cmd=$2 ;;
	--systemd-cgroup) systemd_cgroup=$2 ;;
	esac
	shift 2
done

# A restart command given, and the mode left at auto: the command.
if [ -n "$restart_cmd" ] && [ "$restart" = auto ]; then restart=command; fi
case $restart in
auto | systemd | none) ;;
command) [ -n "$restart_cmd" ] || die "--restart command needs --restart-cmd CMD" ;;
*) die "--restart must be auto, systemd, command or none, not '$restart'" ;;
esac
case $systemd_cgroup in
auto | true | false) ;;
*) die "--systemd-cgroup must be auto, true or false, not '$systemd_cgroup'" ;;
esac
for p in "$bin_dir" "$conf_dir" "$main_config" "$state_dir"; do
	case $p in
	/*) ;;
	*) die "host paths must be absolute: '$p'" ;;
	esac
done
[ -d "$host_root" ] || die "host root $host_root is not a directory (mount the host's / there, or pass --host-root)"
host_root=${host_root%/}

# h PATH: the host path PATH as seen from here.
h() { printf '%s%s' "$host_root" "$1"; }

shim=containerd-shim-graceful-v2
init=graceful-init
hold=graceful-hold
dropin=$conf_dir/graceful.toml
state=$state_dir/installed
marker='# Written by the graceful node installer'
imports_line="imports = [\"$conf_dir/*.toml\"] $marker"
changed=0

sha() { sha256sum "$1" | cut -d' ' -f1; }

# recorded KIND PATH: the hash install recorded for PATH ("" if none).
recorded() {
	[ -f "$(h "$state")" ] || return 0
	awk -v k="$1" -v p="$2" '$1 == k && $3 == p { print $2; exit }' "$(h "$state")"
}

# record KIND HASH PATH appends to the state file being written.
record() { echo "$1 $2 $3" >>"$new_state"; }

# put_file SRC HOSTPATH MODE: atomic copy (temp file in the same dir + rename), so that a running
# binary is never truncated and containerd never reads a half-written config.
put_file() {
	dst=$(h "$2")
	if [ -e "$dst" ] && [ "$(sha "$1")" = "$(sha "$dst")" ]; then
		chmod "$3" "$dst"
		log "unchanged: $2"
		return 0
	fi
	if [ -e "$dst" ] && [ "$force" != 1 ] && [ -z "$(recorded file "$2")" ]; then
		die "$2 exists and was not installed by this installer; remove it or pass --force"
	fi
	tmp=$(dirname "$dst")/.$(basename "$dst").graceful-tmp.$$
	cp "$1" "$tmp" || { rm -f "$tmp"; die "cannot write $tmp"; }
	chmod "$3" "$tmp"
	mv -f "$tmp" "$dst" || { rm -f "$tmp"; die "cannot rename $tmp to $dst"; }
	log "installed: $2"
	changed=1
}

# mkdir_recorded HOSTDIR: create HOSTDIR and its missing parents, recording each one created.
mkdir_recorded() {
	[ -d "$(h "$1")" ] && return 0
	parent=$(dirname "$1")
	[ "$parent" = "$1" ] || mkdir_recorded "$parent"
	mkdir "$(h "$1")" || die "cannot create directory $1"
	record dir - "$1"
}

# imports_of FILE: the entries of the top-level imports array of a containerd config, one a line.
imports_of() {
	awk '
		/^[ \t]*\[/ { exit }
		!in_imports && /^[ \t]*imports[ \t]*=/ { in_imports = 1; sub(/^[^=]*=/, "") }
		in_imports { sub(/#.*/, ""); text = text " " $0; if ($0 ~ /\]/) exit }
		END { print text }
	' "$1" | grep -o "\"[^\"]*\"\|'[^']*'" | tr -d "\"'" || true
}

# config_imports_dropin FILE: whether containerd, reading FILE, imports the drop-in.
config_imports_dropin() {
	imports_of "$1" | {
		while IFS= read -r entry; do
			case $entry in
			/*) ;;
			*) entry=$(dirname "$main_config")/$entry ;;
			esac
			# A glob entry matches as a pattern (shellcheck SC2254: on purpose).
			case $dropin in
			$entry) exit 0 ;;
			esac
		done
		exit 1
	}
}

restart_containerd() {
	case $restart in
	none)
		log "containerd not restarted (--restart none): restart it for the change to take effect"
		return 0
		;;
	command)
		log "restarting containerd: $restart_cmd"
		GRACEFUL_HOST_ROOT=${host_root:-/} sh -c "$restart_cmd" || die "the restart command failed: $restart_cmd"
		return 0
		;;
	esac
	if [ ! -d "$(h /run/systemd/system)" ]; then
		[ "$restart" = systemd ] && die "--restart systemd, but the host does not run systemd ($(h /run/systemd/system) missing)"
		warn "the host does not run systemd: restart containerd yourself (or pass --restart-cmd CMD) for the change to take effect"
		return 0
	fi
	if [ "$host_root" = "" ]; then
		log "restarting containerd: systemctl restart containerd"
		systemctl restart containerd || die "systemctl restart containerd failed (see journalctl -u containerd)"
	else
		# In the host's mount namespace (needs hostPID), as kata-deploy does.
		log "restarting containerd: nsenter --target 1 --mount -- systemctl restart containerd"
		nsenter --target 1 --mount -- systemctl restart containerd ||
			die "restarting containerd on the host failed (needs hostPID and privileged; see journalctl -u containerd on the node)"
	fi
}

dropin_content() {
	cat <<EOF
$marker (contrib/node-installer/install.sh);
# \`install.sh uninstall\` removes it. containerd 2.x: the CRI runtime handlers "graceful" and
# "graceful-init" (RuntimeClasses in contrib/runtimeclass.yaml), as in contrib/containerd-config.toml.
version = 3

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful]
  runtime_type = 'io.containerd.graceful.v2'
  runtime_path = '$bin_dir/$shim'
  pod_annotations = ['io.containerd.graceful.v2.*']
  container_annotations = ['io.containerd.graceful.v2.*', 'io.kubernetes.pod.terminationGracePeriod']
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful.options]
    SystemdCgroup = $cgroup_value

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-init]
  runtime_type = 'io.containerd.graceful.v2'
  runtime_path = '$bin_dir/$shim'
  pod_annotations = ['io.containerd.graceful.v2.*']
  container_annotations = ['io.containerd.graceful.v2.*', 'io.kubernetes.pod.terminationGracePeriod']
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.graceful-init.options]
    init = true
    SystemdCgroup = $cgroup_value
EOF
}

do_install() {
	for b in "$shim" "$init" "$hold"; do
		[ -f "$src_dir/$b" ] && [ -x "$src_dir/$b" ] || die "$src_dir/$b missing or not executable (--src-dir)"
	done
	[ -d "$(h "$bin_dir")" ] || die "bin dir $bin_dir does not exist on the host (--bin-dir)"
	cfg=$(h "$main_config")

	# First the checks, so that a refused install changes nothing.
	add_line=0
	if [ -f "$cfg" ] && config_imports_dropin "$cfg"; then
		:
	elif [ "$add_imports" = 1 ]; then
		if [ -f "$cfg" ] && [ -n "$(imports_of "$cfg")" ]; then
			die "$main_config has an imports list without $conf_dir/*.toml; add \"$conf_dir/*.toml\" to it yourself (--add-imports only adds a missing imports line)"
		fi
		add_line=1
	else
		if [ -f "$cfg" ]; then
			echo "$prog: error: $main_config does not import $conf_dir, so containerd would not read the drop-in." >&2
		else
			echo "$prog: error: $main_config does not exist, so containerd (defaults) would not read $conf_dir." >&2
		fi
		echo "  Add this line at the top of $main_config (before any [table]) and run install again:" >&2
		echo "    imports = [\"$conf_dir/*.toml\"]" >&2
		echo "  or run install with --add-imports to let the installer add it (uninstall removes it)." >&2
		exit 1
	fi
	if [ -f "$(h "$dropin")" ] && ! grep -q "^$marker" "$(h "$dropin")" && [ "$force" != 1 ]; then
		die "$dropin exists and was not written by this installer; remove it or pass --force"
	fi
	case $systemd_cgroup in
	auto)
		cgroup_value=false
		for f in "$cfg" "$(h "$conf_dir")"/*.toml; do
			[ -f "$f" ] && [ "$f" != "$(h "$dropin")" ] || continue
			if grep -Eq '^[[:space:]]*(SystemdCgroup|systemd_cgroup)[[:space:]]*=[[:space:]]*true' "$f"; then
				cgroup_value=true
			fi
		done
		;;
	*) cgroup_value=$systemd_cgroup ;;
	esac

	created_state_dir=0
	if [ ! -d "$(h "$state_dir")" ]; then
		[ -d "$(h "$(dirname "$state_dir")")" ] || die "$(dirname "$state_dir") does not exist on the host (--state-dir)"
		mkdir "$(h "$state_dir")" || die "cannot create state dir $state_dir"
		created_state_dir=1
	fi
	new_state=$(h "$state").new.$$
	: >"$new_state"
	[ "$created_state_dir" = 0 ] || record dir - "$state_dir"
	# Keep what an earlier install created (directories, the imports line).
	if [ -f "$(h "$state")" ]; then
		awk '$1 == "dir" || $1 == "config-created" || $1 == "imports-line"' "$(h "$state")" >>"$new_state"
	fi

	for b in "$shim" "$init" "$hold"; do
		put_file "$src_dir/$b" "$bin_dir/$b" 0755
		record file "$(sha "$src_dir/$b")" "$bin_dir/$b"
	done

	mkdir_recorded "$conf_dir"
	tmp_dropin=$(h "$state_dir")/.dropin.$$
	dropin_content >"$tmp_dropin"
	put_file "$tmp_dropin" "$dropin" 0644
	record file "$(sha "$tmp_dropin")" "$dropin"
	rm -f "$tmp_dropin"

	if [ "$add_line" = 1 ]; then
		if [ -f "$cfg" ]; then
			tmp=$(dirname "$cfg")/.$(basename "$cfg").graceful-tmp.$$
			awk -v line="$imports_line" '
				!done && /^[ \t]*\[/ { print line; done = 1 }
				{ print }
				!done && /^[ \t]*version[ \t]*=/ { print line; done = 1 }
				END { if (!done) print line }
			' "$cfg" >"$tmp"
			chmod "$(stat -c %a "$cfg")" "$tmp"
			mv -f "$tmp" "$cfg"
			record imports-line - "$main_config"
			log "added to $main_config: $imports_line"
		else
			mkdir_recorded "$(dirname "$main_config")"
			printf 'version = 3\n%s\n' "$imports_line" >"$cfg"
			record config-created "$(sha "$cfg")" "$main_config"
			log "created $main_config with: $imports_line"
		fi
		changed=1
	fi

	mv -f "$new_state" "$(h "$state")"
	if [ "$changed" = 1 ]; then
		restart_containerd
		log "installed: runtime handlers graceful and graceful-init (apply contrib/runtimeclass.yaml for the RuntimeClasses)"
	else
		log "nothing changed; containerd not restarted"
	fi
}

do_uninstall() {
	st=$(h "$state")
	if [ ! -f "$st" ]; then
		log "nothing to uninstall: no record at $state (install was not run on this host, or uninstall already was)"
		return 0
	fi
	# Files, newest records last: remove each only while it still is what install wrote.
	while read -r kind hash path; do
		case $kind in
		file)
			f=$(h "$path")
			if [ ! -e "$f" ]; then
				log "already gone: $path"
			elif [ "$(sha "$f")" = "$hash" ]; then
				rm -f "$f"
				log "removed: $path"
				changed=1
			else
				warn "$path changed since install; left in place"
			fi
			;;
		imports-line)
			f=$(h "$path")
			if [ -f "$f" ] && grep -qxF "$imports_line" "$f"; then
				tmp=$(dirname "$f")/.$(basename "$f").graceful-tmp.$$
				grep -vxF "$imports_line" "$f" >"$tmp" || true
				chmod "$(stat -c %a "$f")" "$tmp"
				mv -f "$tmp" "$f"
				log "removed the imports line from $path"
				changed=1
			fi
			;;
		config-created)
			f=$(h "$path")
			if [ -f "$f" ] && [ "$(sha "$f")" = "$hash" ]; then
				rm -f "$f"
				log "removed: $path"
				changed=1
			elif [ -f "$f" ]; then
				warn "$path changed since install created it; left in place"
			fi
			;;
		esac
	done <"$st"
	# Directories install created (the state dir among them), deepest first, while empty.
	dirs=$(awk '$1 == "dir" { print $3 }' "$st" | sort -r)
	rm -f "$st"
	for d in $dirs; do
		if rmdir "$(h "$d")" 2>/dev/null; then
			log "removed directory: $d"
		elif [ -d "$(h "$d")" ]; then
			log "kept directory (not empty): $d"
		fi
	done
	if [ "$changed" = 1 ]; then
		restart_containerd
		log "uninstalled: runtime handlers graceful and graceful-init removed"
	else
		log "nothing changed; containerd not restarted"
	fi
}

case $action in
install) do_install ;;
uninstall) do_uninstall ;;
esac
