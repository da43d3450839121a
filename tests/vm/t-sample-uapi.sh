# SPDX-License-Identifier: GPL-2.0
# The sample through the real VFIO uAPI (tests/vm/uapi, rmdev-vm-test), for
# each of the four migration flag sets: features, every FSM SET against the
# oracle, data file semantics, every arc failing (recoverable and lost) with
# the data files it leaves, migrations, broken and unloadable streams,
# MIG_DATA_SIZE against the real stream, resets, close while in use, the
# iommufd cdev path, the emulated config space. Once (they do not depend on
# the flag set): the wake-up a session's end gives epoll, a config space
# access and a data file copy whose user page faults not holding up reset,
# processes contending for an mdev, removal and unloading while in use, bad
# ioctls, a record longer than announced, interrupts, guest memory (copies,
# pins, the dirty log and unmaps under a pin, on type1 and iommufd); the 256 MiB
# migration; with mtty and rmdev_igbvf loaded alongside, 10,000 hostile
# streams, 20,000 random ioctls, 50 rounds of races, 30 of teardown races
# and 40 create-to-remove cycles. Then the envelope's bounds on the
# vendor's record size, the rate limit of the messages a user can trigger
# at will, and a device without migration.
. "$(dirname "$0")/lib.sh"

trap 'unload_sample; rmmod rmdev_igbvf 2>/dev/null || true' EXIT
[ -x "$VM_TEST" ] || fail "$VM_TEST not built"
# One load for the four flag sets: a new value of the parameter applies to
# the mdevs the tests create afterwards (each unload waits seconds for the
# kobject releases the debug kernel delays). The tests that do not depend
# on the flag set run once, after the loop.
load_sample migration_flags=7
# The test program itself: a misspelt test or option is an error (status
# 2), not a run of nothing; a test that does not apply says skip.
for args in "no-such-test" "--flags" "--flags x fsm" "--flags 2 fsm" "--flags 0 fsm" "--flag 7 fsm"; do
	rc=0
	"$VM_TEST" $args 2>/dev/null || rc=$?
	expect_eq "exit status of rmdev-vm-test $args" $rc 2
done
sysfs_write /sys/module/rmdev_sample/parameters/migration_flags 3
expect_eq "precopy-data-size under flag set 3" "$("$VM_TEST" --flags 3 precopy-data-size)" \
	"skip precopy-data-size [STOP_COPY|P2P]: needs PRE_COPY"
for flags in 1 3 5 7; do
	sysfs_write /sys/module/rmdev_sample/parameters/migration_flags $flags
	"$VM_TEST" --flags $flags features fsm data-files migrate bad-streams reset \
		close-mid-session session-ends resume-finish data-size cdev config \
		precopy-data-size ||
		fail "flag set $flags"
done
"$VM_TEST" --flags 7 hup-wakeup precopy-wakeup config-fault stream-fault contend remove-in-use bad-ioctls oversize-record rmmod-in-use interrupts \
	guest-memory ||
	fail "the tests independent of the flag set"
"$VM_TEST" --flags 7 migrate-largest direct-and-buffered direct-fault || fail "256 MiB migration, direct and buffered saves"

# The campaigns run with the C mtty (an mdev of its own) and the VF vendor
# (no VF bound here) loaded alongside, as on a host with several mdev
# drivers. mtty stays loaded (t-mtty-sysfs-mdevctl.sh says why).
modprobe mtty
mt=$(new_uuid)
sysfs_write /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create "$mt"
insmod "$IGBVF_KO"
# The campaigns (tests/vm/uapi/src/campaign.rs): 10,000 damaged and forged
# streams into resume data files. Replay a failure with
# RMDEV_SEED=<seed> tools/lab test t-sample-uapi.
seed=${RMDEV_SEED:-$(date +%s%N)}
note "stream campaign seed $seed (replay: RMDEV_SEED=$seed tools/lab test t-sample-uapi)"
"$VM_TEST" --flags 7 stream-campaign "$seed" 10000 || fail "stream campaign, seed $seed"
# And random ioctls, reads and writes on device and data FDs, from 4
# threads at once (5,000 each).
"$VM_TEST" --flags 7 ioctl-campaign "$seed" 5000 || fail "ioctl campaign, seed $seed"
# Races: data FD calls from 3 threads against SET, RESET, MIG_DATA_SIZE
# and the device's close, 50 rounds.
"$VM_TEST" --flags 7 race-campaign "$seed" 50 || fail "race campaign, seed $seed"
# Teardown races: 30 rounds of an mdev removed through sysfs while its user
# hammers its data FDs and migration_version, closing when asked.
"$VM_TEST" teardown-campaign $SAMPLE_TYPES/rmdev_sample-16k "$seed" 30 ||
	fail "teardown campaign, seed $seed"
# 40 create/open/migrate/close/remove cycles: kernel memory measured.
"$VM_TEST" cycles $SAMPLE_TYPES/rmdev_sample-16k $SAMPLE_TYPES/rmdev_sample-16k 40 ||
	fail "resource cycles"
sysfs_write /sys/bus/mdev/devices/$mt/remove 1
rmmod rmdev_igbvf
# Lock classes carry the vendor module's name, so a lockdep report says
# which vendor it is about (the classes go with the module: check before
# unloading, after a migration used them all).
for lock in state save_waker irq irq_gate config save resume save_io resume_io save_wq; do
	grep -q " rmdev_sample:$lock\$" /proc/lockdep || fail "no lock class rmdev_sample:$lock in /proc/lockdep"
done

# A largest record below the END record's payload cannot be received: the
# device is refused at creation, saying why.
MAX_RECORD=/sys/module/rmdev_sample/parameters/max_record
sysfs_write $MAX_RECORD 4
klog_mark
expect_errno "Invalid argument" sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$(new_uuid)"
klog_has "largest record is 4 bytes; it must be 8 to" || fail "no message for max_record=4"
sysfs_write $MAX_RECORD 4104
"$VM_TEST" --flags 7 small-records || fail "max_record=4104"

# The data sessions' buffers are charged to the memory cgroup of the user
# who opens them (a cgroup of its own, with records of 1 MiB: see
# rmdev-vm-test's session-memcg). The lab leaves the root cgroup as it was.
CG=/sys/fs/cgroup cg_mounted=
mountpoint -q $CG || { mount -t cgroup2 none $CG && cg_mounted=1; }
grep -qw memory $CG/cgroup.controllers || fail "no memory controller in $CG: $(cat $CG/cgroup.controllers)"
sysfs_write $CG/cgroup.subtree_control +memory
mkdir $CG/rmdev-sessions
sysfs_write $MAX_RECORD 1048576
(
	sysfs_write $CG/rmdev-sessions/cgroup.procs $BASHPID
	exec "$VM_TEST" --flags 7 session-memcg $CG/rmdev-sessions
) || fail "session memory charged to the user's cgroup"
rmdir $CG/rmdev-sessions
sysfs_write $CG/cgroup.subtree_control -memory
[ -z "$cg_mounted" ] || umount $CG
sysfs_write $MAX_RECORD 0

# 200 refused streams: the kernel's default rate limit (a burst of 10 per
# 5 s) holds the messages down.
klog_mark
start=$SECONDS
"$VM_TEST" --flags 7 refuse-many 200 || fail "refuse-many"
n=$(klog_count 'migration stream refused') limit=$((10 * ((SECONDS - start) / 5 + 1)))
note "200 refused streams in $((SECONDS - start)) s: $n messages (limit $limit)"
[ "$n" -ge 1 ] && [ "$n" -le "$limit" ] || fail "$n messages for 200 refused streams (limit $limit)"
"$VM_TEST" rmmod-race "$SAMPLE_TYPES/rmdev_sample-16k" rmdev_sample "$seed" 3000 || fail "rmmod race (rmdev_sample), seed $seed"

# Whether mdevs migrate at all is fixed at load.
load_sample migration_flags=0
"$VM_TEST" --flags 0 no-migration || fail "device without migration"
