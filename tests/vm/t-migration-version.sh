# SPDX-License-Identifier: GPL-2.0
# migration_version on types and mdevs, exactly as an operator uses it: cat
# on the source, echo into the target. Compatible and incompatible pairs
# across types and data format versions, every bad input, non-root
# writers, concurrent readers and writers during create/remove and parent
# unregistration, streams between incompatible devices, and mdevctl.
. "$(dirname "$0")/lib.sh"

trap 'unload_sample' EXIT
mv_type() { echo "$SAMPLE_TYPES/rmdev_sample-$1/migration_version"; }
mv_dev() { echo "/sys/bus/mdev/devices/$1/migration_version"; }
# check FILE STRING: the write must succeed and report the full count.
check_ok() { sysfs_write "$1" "$2" || fail "'$2' into $1 refused"; }

load_sample migration_flags=7 format_version=3
for t in 16k 4m 64m 256m; do
	f=$(mv_type $t)
	[ -f "$f" ] || fail "no $f"
	expect_eq "$t type string" "$(cat "$f")" "rmdev_sample:$t:3.0"
	expect_eq "$t mode" "$(stat -c %a "$f")" 644
done
a=$(new_uuid) b=$(new_uuid) c=$(new_uuid)
sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$a"
sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$b"
sysfs_write $SAMPLE_TYPES/rmdev_sample-4m/create "$c"
expect_eq "device string" "$(<"$(mv_dev $a)")" "rmdev_sample:16k:3.0"
expect_eq "device mode" "$(stat -c %a "$(mv_dev $a)")" 644

# Compatible: same type, device to device, type to device, device to type.
check_ok "$(mv_dev $b)" "$(<"$(mv_dev $a)")"
check_ok "$(mv_dev $b)" "$(<"$(mv_type 16k)")"
check_ok "$(mv_type 16k)" "$(<"$(mv_dev $a)")"
check_ok "$(mv_type 16k)" "rmdev_sample:16k:3.0"            # without the newline
# Incompatible: another type, another major, a newer minor, another vendor.
expect_errno "Invalid argument" sysfs_write "$(mv_dev $c)" "$(<"$(mv_dev $a)")"
expect_errno "Invalid argument" sysfs_write "$(mv_type 4m)" "$(<"$(mv_type 16k)")"
expect_errno "Invalid argument" sysfs_write "$(mv_dev $a)" "rmdev_sample:16k:2.1"
expect_errno "Invalid argument" sysfs_write "$(mv_dev $a)" "rmdev_sample:16k:3.1"
expect_errno "Invalid argument" sysfs_write "$(mv_dev $a)" "rmdev_sample:16k:4.0"
expect_errno "Invalid argument" sysfs_write "$(mv_dev $a)" "mtty:16k:3.0"
expect_errno "Invalid argument" sysfs_write "$(mv_dev $a)" "rmdev_sample:16k:3.0:ports=2"

# Bad input, on the device and the type attribute.
for f in "$(mv_dev $a)" "$(mv_type 16k)"; do
	expect_errno "Invalid argument" sysfs_write "$f" ""                        # only a newline
	expect_errno "Invalid argument" bash -c "printf '\n\n' > $f"
	expect_errno "Invalid argument" bash -c "head -c 4096 /dev/zero | tr '\\0' a > $f"
	expect_errno "Invalid argument" bash -c "head -c 10000 /dev/zero | tr '\\0' a > $f"
	expect_errno "Invalid argument" bash -c "printf 'rmdev_sample:16k:3.0\\0' > $f"
	expect_errno "Invalid argument" bash -c "printf 'rmdev_sample:16k:3.0\\001' > $f"
	expect_errno "Invalid argument" bash -c "head -c 64 /dev/urandom > $f"
	expect_errno "Invalid argument" sysfs_write "$f" "rmdev_sample:16k:3.0garbage"
	expect_errno "Invalid argument" sysfs_write "$f" "rmdev_sample:16k:3.0 "
	expect_errno "Invalid argument" sysfs_write "$f" "$(printf 'x%.0s' $(seq 300))"
	# A zero-length write never reaches the attribute (sysfs returns 0):
	# nothing is checked and the shell reports success.
	printf '' >"$f"
	# Writable by root only.
	expect_errno "Permission denied" setpriv --reuid=65534 --regid=65534 --clear-groups \
		bash -c "echo rmdev_sample:16k:3.0 > $f"
	setpriv --reuid=65534 --regid=65534 --clear-groups cat "$f" >/dev/null || fail "non-root cannot read $f"
	# A write is a pure check: nothing changed.
	expect_eq "$f after the writes" "$(cat "$f")" "rmdev_sample:16k:3.0"
done

# A stream between devices the attribute calls incompatible fails at the
# first write, and the target is usable after a reset.
"$VM_TEST" --flags 7 incompatible-stream || fail "incompatible stream"
sysfs_write "/sys/bus/mdev/devices/$a/remove" 1
sysfs_write "/sys/bus/mdev/devices/$b/remove" 1
sysfs_write "/sys/bus/mdev/devices/$c/remove" 1

# Across data format versions: a format-3 string and stream into format 4.
old=$(<"$(mv_type 16k)")
"$VM_TEST" --flags 7 save-stream rmdev_sample-16k /tmp/stream-v3 || fail "save-stream"
unload_sample
load_sample migration_flags=5 format_version=4
expect_eq "format 4 string" "$(<"$(mv_type 16k)")" "rmdev_sample:16k:4.0"
expect_errno "Invalid argument" sysfs_write "$(mv_type 16k)" "$old"
out=$("$VM_TEST" --flags 5 load-stream rmdev_sample-16k /tmp/stream-v3 2>&1) && fail "format-3 stream loaded into format 4: $out"
case "$out" in *"refused at write 1"*"Invalid argument"*) ;; *) fail "format-3 stream: $out" ;; esac
"$VM_TEST" --flags 5 save-stream rmdev_sample-16k /tmp/stream-v4 || fail "save-stream v4"
"$VM_TEST" --flags 5 load-stream rmdev_sample-16k /tmp/stream-v4 || fail "a format-4 stream into format 4"
unload_sample

# No migration, no attribute.
load_sample migration_flags=0
[ ! -e "$(mv_type 16k)" ] || fail "type migration_version without migration"
a=$(new_uuid)
sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$a"
[ ! -e "$(mv_dev $a)" ] || fail "device migration_version without migration"
unload_sample

load_sample migration_flags=7
# mdevctl is unaffected by the extra attribute.
# (Each output whole before grep looks: a grep -q that stops reading
# early would fail mdevctl with SIGPIPE under pipefail.)
case "$(mdevctl types)" in *rmdev_sample-16k*) ;; *) fail "mdevctl types" ;; esac
u=$(new_uuid)
mdevctl start -u "$u" -p rmdev_sample -t rmdev_sample-16k
case "$(mdevctl list)" in *"$u rmdev_sample rmdev_sample-16k"*) ;; *) fail "mdevctl list" ;; esac
mdevctl stop -u "$u"
[ ! -e /sys/bus/mdev/devices/$u ] || fail "mdevctl stop"

# Concurrent readers and writers while mdevs come and go, then while the
# parent unregisters (rmmod with an mdev), registers again and unregisters.
# Each hammer checks what it sees: a read gives a version string (or fails
# because the file went away), "garbage" is never accepted, and the 16k
# string is accepted somewhere; the lab's lockdep and KASAN checks watch
# the kernel side.
stop=/tmp/mv-stop; rm -f $stop /tmp/mv-hammer.*
hammer() {
	set +e   # its reads and writes fail on purpose, and when files vanish
	local log=/tmp/mv-hammer.$1 reads=0 accepted=0 v
	: >$log
	# Builtins only (no subshell per call): the hammers must not starve
	# the creates, removes and unloads they race with.
	while [ ! -e $stop ]; do
		for f in $SAMPLE_TYPES/*/migration_version /sys/bus/mdev/devices/*/migration_version; do
			if read -r v 2>/dev/null <"$f"; then
				case "$v" in
				rmdev_sample:*:1.0) reads=$((reads + 1)) ;;
				*) echo "read '$v' from $f" >>$log ;;
				esac
			fi
			echo "rmdev_sample:16k:1.0" 2>/dev/null >"$f" && accepted=$((accepted + 1))
			echo garbage 2>/dev/null >"$f" && echo "garbage accepted by $f" >>$log
		done
	done
	echo "counts $reads $accepted" >>$log
	return 0
}
pids=()
# Two hammers, one per vCPU of the lab VM.
for i in 1 2; do hammer $i & pids+=($!); done
for i in $(seq 8); do
	u=$(new_uuid)
	sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$u"
	sysfs_write "/sys/bus/mdev/devices/$u/remove" 1
done
for round in 1 2; do
	u=$(new_uuid)
	sysfs_write $SAMPLE_TYPES/rmdev_sample-4m/create "$u"
	rmmod rmdev_sample
	[ $round = 2 ] || load_sample migration_flags=7
done
touch $stop
wait "${pids[@]}"
rm -f $stop
for i in 1 2; do
	log=/tmp/mv-hammer.$i
	read -r _ reads accepted < <(grep '^counts ' $log) || fail "hammer $i left no counts"
	bad=$(grep -v '^counts ' $log || true)
	[ -z "$bad" ] || fail "hammer $i: $bad"
	[ "$reads" -gt 0 ] && [ "$accepted" -gt 0 ] || fail "hammer $i: $reads reads, $accepted accepted writes"
	note "hammer $i: $reads version strings read, $accepted accepted writes, garbage always refused"
done

note "type and device migration_version: reads, checks, bad input, non-root, concurrency, streams, mdevctl"
