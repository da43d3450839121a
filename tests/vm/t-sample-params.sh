# SPDX-License-Identifier: GPL-2.0
# Invalid module parameters refuse the load (EINVAL, which insmod prints as
# "Invalid parameters") with a clear kernel message. Once loaded,
# migration_flags takes another flag set for the mdevs created afterwards
# (those already there keep theirs) and refuses anything else, a switch
# between migrating and not included (EINVAL, the value unchanged). Loading
# and unloading with mdevs created and removed, with and without migration,
# leaves nothing behind (the lab's kmemleak and lockdep checks run after the
# suite; each unload waits for the kobject releases the debug kernel
# delays).
. "$(dirname "$0")/lib.sh"

trap unload_sample EXIT
modprobe mdev
# At load, a flag set without STOP_COPY and one with an unknown bit (each
# refused load waits seconds for the module's delayed kobject release; the
# same check refuses every other value at runtime below, and the host tests
# go through all of them).
for bad in 2 9; do
	klog_mark
	expect_errno "Invalid parameters" insmod "$SAMPLE_KO" migration_flags=$bad
	klog_has "migration_flags=$(printf '%#x' $bad) refused" || fail "no message for migration_flags=$bad"
done
klog_mark
expect_errno "Invalid parameters" insmod "$SAMPLE_KO" format_version=0
klog_has "format_version=0 refused" || fail "no message for format_version=0"
klog_mark
expect_errno "Invalid parameters" insmod "$SAMPLE_KO" format_version=70000
klog_has "format_version=70000 refused" || fail "no message for format_version=70000"
FLAGS=/sys/module/rmdev_sample/parameters/migration_flags
# flags_of UUID: the flag set the rmdev tool reads from the mdev.
flags_of() {
	"$RMDEV" list --probe --json | json_eval "[m['migration_flags'] for m in d['mdevs'] if m['uuid']=='$1'][0]"
}
# Two rounds, with and without migration: load, create two mdevs, remove
# one, unload with the other there.
for flags in 7 0; do
	insmod "$SAMPLE_KO" migration_flags=$flags
	a=$(new_uuid) b=$(new_uuid)
	sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$a"
	sysfs_write $SAMPLE_TYPES/rmdev_sample-4m/create "$b"
	if [ $flags = 7 ]; then
		for bad in 0 2 4 6 8 9 255 x; do
			expect_errno "Invalid argument" sysfs_write $FLAGS $bad
		done
		expect_eq "migration_flags after refused writes" "$(cat $FLAGS)" 7
		sysfs_write $FLAGS 3
		c=$(new_uuid)
		sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$c"
		expect_eq "flag set of the mdev created before the change" "$(flags_of "$a")" 7
		expect_eq "flag set of the mdev created after it" "$(flags_of "$c")" 3
	else
		for bad in 1 3 5 7; do
			expect_errno "Invalid argument" sysfs_write $FLAGS $bad
		done
		expect_eq "migration_flags after refused writes" "$(cat $FLAGS)" 0
	fi
	sysfs_write /sys/bus/mdev/devices/$a/remove 1
	rmmod rmdev_sample
	[ ! -e /sys/bus/mdev/devices/$b ] || fail "migration_flags=$flags: $b survived rmmod"
done
note "bad parameters refused at load and afterwards; a new flag set for new mdevs; load/create/unload with and without migration"
