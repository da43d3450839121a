# SPDX-License-Identifier: GPL-2.0
# The sample through the real VFIO uAPI, for each of the four migration flag
# sets: features, every FSM SET against the oracle, data file semantics,
# every arc failing (recoverable and lost) with the data files it leaves,
# migrations, broken and unloadable streams, MIG_DATA_SIZE against the real
# stream, resets, close and removal while in use, unloading while in use,
# the iommufd cdev path, bad ioctls (tests/vm/uapi, rmdev-vm-test). Then the
# envelope's bounds on the vendor's record size, and the rate limit of the
# messages a user can trigger at will.
. "$(dirname "$0")/lib.sh"

trap unload_sample EXIT
[ -x "$VM_TEST" ] || fail "$VM_TEST not built"
for flags in 1 3 5 7; do
	load_sample migration_flags=$flags
	"$VM_TEST" --flags $flags features fsm data-files migrate bad-streams reset \
		close-mid-session remove-in-use bad-ioctls session-ends resume-finish \
		data-size oversize-record cdev rmmod-in-use config interrupts precopy-data-size ||
		fail "flag set $flags"
	unload_sample
done
load_sample migration_flags=7
"$VM_TEST" --flags 7 migrate-largest direct-and-buffered direct-fault || fail "256 MiB migration, direct and buffered saves"
# Lock classes carry the vendor module's name, so a lockdep report says
# which vendor it is about (the classes go with the module: check before
# unloading, after a migration used them all).
for lock in state waker irq config save resume save_wq; do
	grep -q " rmdev_sample:$lock\$" /proc/lockdep || fail "no lock class rmdev_sample:$lock in /proc/lockdep"
done
unload_sample
load_sample migration_flags=0
"$VM_TEST" --flags 0 no-migration || fail "device without migration"
unload_sample

# A largest record below the END record's payload cannot be received: the
# device is refused at creation, saying why.
load_sample max_record=4
expect_errno "Invalid argument" sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$(new_uuid)"
dmesg | grep -q "largest record is 4 bytes; it must be 8 to" || fail "no message for max_record=4"
unload_sample
load_sample max_record=4104
"$VM_TEST" --flags 7 small-records || fail "max_record=4104"
unload_sample

# 200 refused streams: the kernel's default rate limit (a burst of 10 per
# 5 s) holds the messages down.
load_sample
before=$(dmesg | grep -c 'migration stream refused' || true)
start=$SECONDS
"$VM_TEST" --flags 7 refuse-many 200 || fail "refuse-many"
after=$(dmesg | grep -c 'migration stream refused' || true)
n=$((after - before)) limit=$((10 * ((SECONDS - start) / 5 + 1)))
note "200 refused streams in $((SECONDS - start)) s: $n messages (limit $limit)"
[ "$n" -ge 1 ] && [ "$n" -le "$limit" ] || fail "$n messages for 200 refused streams (limit $limit)"
