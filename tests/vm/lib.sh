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

# sysfs_write FILE VALUE: write like `echo VALUE > FILE` does, in a subshell,
# so a failing write returns non-zero with the errno text on stderr.
sysfs_write() { bash -c 'echo "$2" > "$1"' _ "$1" "$2"; }

new_uuid() { cat /proc/sys/kernel/random/uuid; }

# The sample vendor: load with module parameters, unload on exit.
SAMPLE_KO=$RMDEV_MODULES/rmdev_sample.ko
SAMPLE_TYPES=/sys/class/mdev_bus/rmdev_sample/mdev_supported_types
VM_TEST=$RMDEV_REPO/target/release/rmdev-vm-test
load_sample() {
	modprobe mdev
	insmod "$SAMPLE_KO" "$@"
}
unload_sample() { ! grep -q '^rmdev_sample ' /proc/modules || rmmod rmdev_sample; }
