# SPDX-License-Identifier: GPL-2.0
# The sample through the real VFIO uAPI, for each of the four migration flag
# sets: features, every FSM SET against the oracle, data file semantics,
# migrations, broken streams, resets, close and removal while in use, bad
# ioctls (tests/vm/uapi, rmdev-vm-test).
. "$(dirname "$0")/lib.sh"

trap unload_sample EXIT
[ -x "$VM_TEST" ] || fail "$VM_TEST not built"
for flags in 1 3 5 7; do
	load_sample migration_flags=$flags
	"$VM_TEST" --flags $flags features fsm data-files migrate bad-streams reset \
		close-mid-session remove-in-use bad-ioctls || fail "flag set $flags"
	unload_sample
done
load_sample migration_flags=7
"$VM_TEST" --flags 7 migrate-largest || fail "256 MiB migration"
unload_sample
load_sample migration_flags=0
"$VM_TEST" --flags 0 no-migration || fail "device without migration"
