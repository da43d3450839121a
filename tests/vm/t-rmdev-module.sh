# SPDX-License-Identifier: GPL-2.0
# The project's own Rust module, built out of tree against the lab kernel,
# loads and unloads cleanly (the lab's log check covers WARN/lockdep/leaks).
. "$(dirname "$0")/lib.sh"

ko=$RMDEV_MODULES/rmdev.ko
[ -f "$ko" ] || fail "$ko not built"
modinfo "$ko" | grep -q '^license: *GPL' || fail "rmdev.ko has no GPL license tag"
for i in 1 2 3; do
	insmod "$ko"
	grep -q '^rmdev ' /proc/modules || fail "rmdev not in /proc/modules after insmod"
	rmmod rmdev
	grep -q '^rmdev ' /proc/modules && fail "rmdev still loaded after rmmod"
done
dmesg | grep -q 'rmdev: migration framework loaded (stream envelope v1)' || fail "no load message in dmesg"
note "rmdev.ko loaded and unloaded 3 times"
