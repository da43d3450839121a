# SPDX-License-Identifier: GPL-2.0
# Helpers for the in-VM tests (sourced). Each test is a bash script that
# exits non-zero on the first failed check, saying what failed.

set -euo pipefail
[ -z "${RMDEV_TRACE:-}" ] || set -x

fail() { echo "FAIL: $*" >&2; exit 1; }
note() { echo "  $*"; }

# expect_eq WHAT GOT WANT
expect_eq() { [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"; }

# expect_eventually WHAT FILE WANT: FILE's content becomes WANT within 15 s
# (for what the kernel updates in a release that the lab's
# CONFIG_DEBUG_KOBJECT_RELEASE delays by up to 4 s per object).
expect_eventually() {
	local i got
	for i in $(seq 150); do
		got=$(cat "$2")
		[ "$got" != "$3" ] || return 0
		sleep 0.1
	done
	fail "$1: got '$got', want '$3' (waited 15 s)"
}

# expect_errno ERRNO-NAME CMD...: CMD must fail with that errno, as reported
# by the shell's strerror text (bash prints e.g. "Invalid argument").
expect_errno() {
	local want=$1 out
	shift
	if out=$("$@" 2>&1); then
		fail "'$*' succeeded, want $want"
	fi
	case "$out" in
	*"$want"*) ;;
	*) fail "'$*' failed with '$out', want '$want'" ;;
	esac
}

# sysfs_write FILE VALUE: write like `echo VALUE > FILE` does (one write(2)
# of VALUE and a newline); a failing write returns non-zero with the errno
# text on stderr. The shell's own echo, not a new bash: each process
# started costs about half a second of CPU in the lab's debug kernel
# under TCG.
sysfs_write() { echo "$2" >"$1"; }

# klog_mark: writes a marker line of its own into the kernel log (through
# /dev/kmsg). klog_has TEXT and klog_count TEXT look only at the lines
# logged after the marker, so a check cannot be satisfied by an earlier
# step's message; a log full enough to have dropped the marker shows no
# lines, and the check fails rather than passes.
klog_mark() {
	KLOG_MARK="rmdev-test-mark-$$-$RANDOM-$SECONDS"
	echo "$KLOG_MARK" >/dev/kmsg
}
klog_since() { dmesg | awk -v m="${KLOG_MARK:?klog_mark first}" 'seen; index($0, m) { seen = 1 }'; }
klog_has() { grep -qF -- "$1" <<<"$(klog_since)"; }
klog_count() { grep -cF -- "$1" <<<"$(klog_since)" || true; }

new_uuid() {
	local u
	read -r u </proc/sys/kernel/random/uuid
	printf '%s\n' "$u"
}

# nap SECONDS: sleeps without a process of its own (read's time limit on a
# FIFO no one writes). A fork and exec cost about half a second of CPU
# under TCG: a loop polling with sleep(1) would slow the other lab VM of
# a pair, which shares the host's two cores.
nap() {
	if [ -z "${NAP_FD:-}" ]; then
		local f
		f=$(mktemp -u /tmp/nap.XXXXXX)
		mkfifo "$f"
		exec {NAP_FD}<>"$f"
		rm -f "$f"
	fi
	read -r -t "$1" -u "$NAP_FD" _ || true
}

# create_again CMD...: CMD creates an mdev with a UUID whose device was just
# removed. The mdev core forgets a UUID only when the old device is
# released, which the lab's CONFIG_DEBUG_KOBJECT_RELEASE delays by up to
# 4 s: until then a create fails with EEXIST. Retries that, up to 15 s.
create_again() {
	local i out
	for i in $(seq 150); do
		out=$("$@" 2>&1) && return 0
		case "$out" in
		*"File exists"*) sleep 0.1 ;;
		*) break ;;
		esac
	done
	echo "$out" >&2
	return 1
}

# The sample vendor: load with module parameters, unload on exit.
SAMPLE_KO=$RMDEV_MODULES/rmdev_sample.ko
SAMPLE_TYPES=/sys/class/mdev_bus/rmdev_sample/mdev_supported_types
VM_TEST=$RMDEV_BIN/rmdev-vm-test
load_sample() {
	modprobe mdev
	insmod "$SAMPLE_KO" "$@"
}
unload_sample() { ! grep -q '^rmdev_sample ' /proc/modules || rmmod rmdev_sample; }

# The rmdev tool, and checks of a command's exit status and output.
RMDEV=$RMDEV_BIN/rmdev
# expect_status WANT CMD...: CMD exits with WANT; its output is left in $out.
expect_status() {
	local want=$1 rc=0
	shift
	out=$("$@" 2>&1) || rc=$?
	[ "$rc" = "$want" ] || fail "'$*' exited $rc, want $want: $out"
}
# json_out STATUS NAME CMD...: like expect_status, with CMD's standard
# output alone (its JSON) in $out, kept as $RMDEV_SHARE/json/NAME.json when
# RMDEV_SHARE is set: make check validates each file against
# Documentation/rmdev.schema.json on the host (tools/rmdev/tests/json_schema.rs).
json_out() {
	local want=$1 name=$2 rc=0
	shift 2
	out=$("$@" 2>/dev/null) || rc=$?
	[ "$rc" = "$want" ] || fail "'$*' exited $rc, want $want: $out"
	if [ -n "${RMDEV_SHARE:-}" ]; then
		mkdir -p "$RMDEV_SHARE/json"
		printf '%s\n' "$out" >"$RMDEV_SHARE/json/$name.json"
	fi
}
# has TEXT: the last expect_status's output contains TEXT.
has() { case "$out" in *"$1"*) ;; *) fail "output lacks '$1': $out" ;; esac; }
# json_eval EXPR...: each EXPR (Python, the JSON on stdin as d) printed,
# one line each (one python3 start for all: 4 to 7 s each in the lab).
json_eval() { python3 -c 'import json,sys; d=json.load(sys.stdin); [print(eval(e)) for e in sys.argv[1:]]' "$@"; }

# The VF vendor on the lab's first two VFs: igbvf_bind_two [PARAM=VALUE...]
# loads rmdev_igbvf and binds both VFs (listed in VFS) through
# driver_override; igbvf_release undoes it (for cleanups: never fails).
IGBVF_KO=$RMDEV_MODULES/rmdev_igbvf.ko
VFS=()

# igb_pf: the sysfs directory of the lab's igb PF (8086:10c9).
igb_pf() {
	local d vendor device
	for d in /sys/bus/pci/devices/*; do
		read -r vendor <"$d/vendor" && read -r device <"$d/device" || continue
		[ "$vendor:$device" = 0x8086:0x10c9 ] && { echo "$d"; return 0; }
	done
	fail "no igb PF (8086:10c9)"
}

# remove_all_mdevs: removes every mdev, of any vendor (for cleanups: never
# fails; a removal the kernel refuses is left for the module unload).
remove_all_mdevs() {
	local d
	for d in /sys/bus/mdev/devices/*; do
		[ -e "$d/remove" ] && echo 1 >"$d/remove" 2>/dev/null
	done
	return 0
}

igbvf_bind_two() {
	local pf vf
	pf=$(igb_pf)
	[ -e "$pf/virtfn1" ] || fail "no igb PF with two VFs"
	VFS=("$(basename "$(readlink -f "$pf/virtfn0")")" "$(basename "$(readlink -f "$pf/virtfn1")")")
	modprobe mdev
	insmod "$IGBVF_KO" "$@"
	for vf in "${VFS[@]}"; do
		echo rmdev_igbvf >"/sys/bus/pci/devices/$vf/driver_override"
		echo "$vf" >/sys/bus/pci/drivers_probe
	done
}
igbvf_release() {
	local vf
	remove_all_mdevs
	for vf in "${VFS[@]}"; do
		[ -e "/sys/bus/pci/drivers/rmdev_igbvf/$vf" ] && echo "$vf" >/sys/bus/pci/drivers/rmdev_igbvf/unbind
		echo >"/sys/bus/pci/devices/$vf/driver_override"
	done
	! grep -q '^rmdev_igbvf ' /proc/modules || rmmod rmdev_igbvf
	return 0
}

# build_guest OUT [-DKEY=VALUE...]: the lab's multiboot guest for nested
# QEMUs (tests/vm/guest/mmio-writer.c, whose comment lists the settings),
# built into OUT.
build_guest() {
	local out=$1
	shift
	gcc -m32 -ffreestanding -nostdlib -static -O2 -fno-pic -no-pie -Wl,-N \
		-Wl,--section-start=.multiboot=0x100000 -Wl,-Ttext=0x100100 -Wl,-e,start \
		-Wl,--build-id=none -Wl,--no-warn-rwx-segments "$@" \
		-o "$out" "$RMDEV_REPO/tests/vm/guest/mmio-writer.c"
}
