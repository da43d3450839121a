# SPDX-License-Identifier: GPL-2.0
# Invalid module parameters refuse the load (EINVAL, which insmod prints as
# "Invalid parameters") with a clear kernel message; loading
# and unloading 4 times (each flag set once) with mdevs created and removed leaves nothing
# behind (the lab's kmemleak and lockdep checks run after the suite; each
# unload waits for the kobject releases the debug kernel delays).
. "$(dirname "$0")/lib.sh"

trap unload_sample EXIT
modprobe mdev
for bad in 2 4 6 8 9 255; do
	expect_errno "Invalid parameters" insmod "$SAMPLE_KO" migration_flags=$bad
	dmesg | grep -q "migration_flags=$(printf '%#x' $bad) refused" || fail "no message for migration_flags=$bad"
done
expect_errno "Invalid parameters" insmod "$SAMPLE_KO" format_version=0
expect_errno "Invalid parameters" insmod "$SAMPLE_KO" format_version=70000
dmesg | grep -q "format_version=0 refused" || fail "no message for format_version=0"
for i in $(seq 4); do
	insmod "$SAMPLE_KO" migration_flags=$(( (i % 4) * 2 + 1 ))
	a=$(new_uuid) b=$(new_uuid)
	sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$a"
	sysfs_write $SAMPLE_TYPES/rmdev_sample-4m/create "$b"
	sysfs_write /sys/bus/mdev/devices/$a/remove 1
	rmmod rmdev_sample
	[ ! -e /sys/bus/mdev/devices/$b ] || fail "round $i: $b survived rmmod"
done
note "bad parameters refused; 4 load/create/unload rounds"
