# SPDX-License-Identifier: GPL-2.0
# The rmdev tool against the real kernel, as an operator runs it: list,
# version, check (compatible, incompatible with the errno and the part that
# differs), export and match, a pre-copy migration while the device keeps
# changing its memory, a migration refused by the check and one forced into
# a failure (both devices left usable), --max-rounds reached, two
# migrations at once, save and load with corrupted, truncated and
# interrupted files, SIGINT during a migrate and a load (and a second
# signal), a user other than root, and the VF vendor's mdevs migrating
# their hardware registers. With RMDEV_SHARE set it also plays the source
# host of the two-host test (tests/vm/rmdev-host2): it leaves a manifest
# and saved files there, with the VF vendor at format_minor=1.
. "$(dirname "$0")/lib.sh"

[ -x "$RMDEV" ] || fail "$RMDEV not built"
[ -x "$VM_TEST" ] || fail "$VM_TEST not built"
work=$(mktemp -d)

# expect_status WANT CMD...: CMD exits with WANT; its output is in $out.

pid=
cleanup() {
	set +e
	[ -z "$pid" ] || { kill -CONT "$pid"; kill -TERM "$pid"; wait "$pid"; } 2>/dev/null
	igbvf_release
	unload_sample
	rm -rf "$work"
}
trap cleanup EXIT
# What the second host reads comes from this run only.
[ -z "${RMDEV_SHARE:-}" ] || rm -f "$RMDEV_SHARE"/{manifest.json,sample-4m.bin,sample-4m.uuid,vf.bin,vf.uuid}

load_sample migration_flags=7 precopy_dirty_pages=8
T4M=rmdev_sample/rmdev_sample-4m
S=$(new_uuid) D=$(new_uuid) E=$(new_uuid)
sysfs_write $SAMPLE_TYPES/rmdev_sample-4m/create "$S"
mdevctl start -u "$D" -p rmdev_sample -t rmdev_sample-4m
sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$E"

note "list: reads sysfs only, opens no device"
expect_status 0 "$RMDEV" list
has "rmdev_sample-4m  vfio-pci  available 2  migration_version rmdev_sample:4m:1.0"
has "$S rmdev_sample/rmdev_sample-4m  flags not probed (use --probe)  migration_version rmdev_sample:4m:1.0"
note "list --probe: opens idle mdevs for their flag set"
expect_status 0 "$RMDEV" list --probe
has "$S rmdev_sample/rmdev_sample-4m  flags STOP_COPY|P2P|PRE_COPY  migration_version rmdev_sample:4m:1.0"
json_out 0 list-probe "$RMDEV" --json list --probe
expect_eq "JSON flags of $E" "$(json_eval "[m['migration_flags'] for m in d['mdevs'] if m['uuid']=='$E'][0]" <<<"$out")" 7

note "version: by UUID, PARENT/TYPE and path, against the attribute itself"
for spec in "$S" "/sys/bus/mdev/devices/$S"; do
	expect_status 0 "$RMDEV" version "$spec"
	expect_eq "version $spec" "$out" "$(cat /sys/bus/mdev/devices/$S/migration_version)"
done
expect_status 0 "$RMDEV" version $T4M
expect_eq "version $T4M" "$out" "$(cat $SAMPLE_TYPES/rmdev_sample-4m/migration_version)"
expect_status 0 "$RMDEV" migration-version -p rmdev_sample -t rmdev_sample-4m
expect_eq "migration-version -p -t" "$out" "$(cat $SAMPLE_TYPES/rmdev_sample-4m/migration_version)"
expect_status 0 "$RMDEV" migration-version -u "${S^^}"
expect_eq "migration-version -u (upper case)" "$out" "$(cat /sys/bus/mdev/devices/$S/migration_version)"
expect_status 2 "$RMDEV" version not-a-uuid
has "'not-a-uuid' is not an mdev UUID, a PARENT/TYPE or a sysfs path"
expect_status 2 "$RMDEV" version "$(new_uuid)"
has "no mdev"

note "check: compatible, and refused by the kernel with the errno and what differs"
expect_status 0 "$RMDEV" check "$S" "$D"
has "compatible: $D accepts $S (rmdev_sample:4m:1.0)"
expect_status 0 "$RMDEV" check "$S" $T4M
expect_status 1 "$RMDEV" check "$S" "$E"
has "EINVAL (Invalid argument)"
has "detail: type differs: source '4m', target '16k'"
json_out 1 check-refused "$RMDEV" --json check "$E" $T4M
expect_eq "JSON errno" "$(json_eval "d['verdict']['errno_name']" <<<"$out")" EINVAL
# A device of a newer data format (major 2) refuses the others.
echo 2 >/sys/module/rmdev_sample/parameters/format_version
N=$(new_uuid)
sysfs_write $SAMPLE_TYPES/rmdev_sample-4m/create "$N"
echo 1 >/sys/module/rmdev_sample/parameters/format_version
expect_status 1 "$RMDEV" check "$S" "$N"
has "detail: data format major version differs: source 1.0, target 2.0"

note "export and match on this host"
expect_status 0 "$RMDEV" export -o "$work/m.json"
expect_eq "exported 4m type" "$(json_eval "[t['migration_version'] for t in d['types'] if t['type']=='rmdev_sample-4m'][0]" <"$work/m.json")" rmdev_sample:4m:1.0
expect_status 0 "$RMDEV" --json match --from "$work/m.json"
# The 16k mdev's entry: only the 16k type and the 16k mdev accept it.
expect_eq "targets of $E" "$(json_eval "sorted([e['accepted_by'] for e in d['entries'] if e['id']=='$E'][0])" <<<"$out")" "['$E', 'rmdev_sample/rmdev_sample-16k']"
# The major-2 mdev: only itself.
expect_eq "targets of $N" "$(json_eval "[e['accepted_by'] for e in d['entries'] if e['id']=='$N'][0]" <<<"$out")" "['$N']"
expect_status 0 "$RMDEV" --json match --offline --from "$work/m.json"
expect_eq "offline targets of $E" "$(json_eval "sorted([e['accepted_by'] for e in d['entries'] if e['id']=='$E'][0])" <<<"$out")" "['$E', 'rmdev_sample/rmdev_sample-16k']"
echo 1 >/sys/bus/mdev/devices/$N/remove

note "migrate with pre-copy while the device keeps writing its memory"
"$VM_TEST" fill "$S" 11
"$VM_TEST" fill "$D" 12
json_out 0 migrate "$RMDEV" --json migrate "$S" "$D"
echo "$out" | sed 's/^/    /'
{ read -r rounds; read -r stop; read -r pre; read -r end; } < <(json_eval "d['precopy_rounds']" \
	"d['stop_copy_bytes']" "d['precopy_bytes']" "d['precopy_end']" <<<"$out") || fail "migrate's JSON"
[ "$rounds" -eq 2 ] || fail "pre-copy rounds: $rounds, want 2 (the initial pass, then the 8 pages the device dirties each round, which stop shrinking)"
[ "$stop" -ge $((8 * 4096)) ] || fail "stop-copy bytes $stop: the 8 pages dirtied last must be in it"
[ "$pre" -ge $((4 << 20)) ] || fail "pre-copy bytes $pre < the 4 MiB memory"
expect_eq "why pre-copy ended" "$end" stalled
"$VM_TEST" compare "$S" "$D"
expect_status 0 "$RMDEV" migrate --no-progress "$S" "$D"
has "flags STOP_COPY|P2P|PRE_COPY"
has "dirty data stopped shrinking"
has "downtime"
note "migrate --max-rounds 1: the device dirties faster than pre-copy ends it, the limit does"
json_out 0 migrate-max-rounds "$RMDEV" --json migrate --max-rounds 1 "$S" "$D"
{ read -r rounds; read -r end; read -r stop; } < <(json_eval "d['precopy_rounds']" \
	"d['precopy_end']" "d['stop_copy_bytes']" <<<"$out") || fail "migrate's JSON"
expect_eq "pre-copy rounds with --max-rounds 1" "$rounds" 1
expect_eq "why pre-copy ended" "$end" max_rounds
[ "$stop" -ge $((8 * 4096)) ] || fail "stop-copy bytes $stop: the 8 pages dirtied after the round must be in it"
"$VM_TEST" compare "$S" "$D"

note "two migrations at once, on disjoint pairs"
F=$(new_uuid)
sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$F"
"$VM_TEST" fill "$S" 15
"$VM_TEST" fill "$E" 16
"$RMDEV" migrate --no-progress "$S" "$D" >"$work/m1.out" 2>&1 &
p1=$!
"$RMDEV" migrate --no-progress "$E" "$F" >"$work/m2.out" 2>&1 &
p2=$!
wait $p1 || fail "the first of two migrations at once failed: $(cat "$work/m1.out")"
wait $p2 || fail "the second of two migrations at once failed: $(cat "$work/m2.out")"
"$VM_TEST" compare "$S" "$D"
"$VM_TEST" compare "$E" "$F"
echo 1 >/sys/bus/mdev/devices/$F/remove

note "migrate refused by the check, and forced into a failure: both devices stay usable"
expect_status 1 "$RMDEV" migrate "$E" "$S"
has "nothing was changed"
"$VM_TEST" fill "$S" 13
expect_status 2 "$RMDEV" migrate --force "$E" "$S"
has "source RUNNING, target reset, RUNNING"
"$VM_TEST" compare-pattern "$S" 13
# In JSON: the failed step, its errno and each device's state, as types.
json_out 2 migrate-failed "$RMDEV" --json migrate --force "$E" "$S"
expect_eq "the failure in JSON" \
	"$(json_eval "(d['failure']['cause'], d['failure']['errno_name'], d['failure']['source']['state'], d['failure']['target']['state'], d['failure']['target']['reset'])" <<<"$out")" \
	"('step', 'EINVAL', 'RUNNING', 'RUNNING', True)"
"$VM_TEST" compare-pattern "$S" 13
# The source's next arc fails and loses its state (ERROR): the SET back to
# RUNNING cannot work, the reset must.
"$VM_TEST" region-write "$S" 0 0x14 2
expect_status 2 "$RMDEV" migrate "$S" "$D"
has "source to PRE_COPY"
has "source RUNNING, target reset, RUNNING"
# A record the source cannot deliver, mid-stream.
"$VM_TEST" region-write "$S" 0 0x14 4
expect_status 2 "$RMDEV" migrate "$S" "$D"
has "read from the source's data FD"
has "source RUNNING, target reset, RUNNING"
"$VM_TEST" fill "$S" 14
expect_status 0 "$RMDEV" migrate "$S" "$D"
"$VM_TEST" compare "$S" "$D"

note "save and load; corrupted, truncated and foreign files refused before the device is touched"
# From here on the device memory holds only what the test writes, so that
# a loaded state can be checked against the pattern itself.
echo 0 >/sys/module/rmdev_sample/parameters/precopy_dirty_pages
"$VM_TEST" fill "$S" 21
"$VM_TEST" fill "$D" 22
expect_status 0 "$RMDEV" save "$S" -o "$work/s.bin"
has "saved"
# A save never replaces a file unless --force; in JSON, the summary.
expect_status 2 "$RMDEV" save "$S" -o "$work/s.bin"
has "exists: the device was not touched (--force replaces it)"
json_out 0 save "$RMDEV" --json save --force "$S" -o "$work/s.bin"
[ "$(json_eval "d['downtime_s'] is not None and d['bytes'] > 4194304" <<<"$out")" = True ] ||
	fail "save's JSON summary: $out"
python3 - "$work/s.bin" "$work/flip.bin" "$work/cut.bin" <<'EOF'
import sys
b = bytearray(open(sys.argv[1], 'rb').read())
c = bytearray(b); c[len(c) // 2] ^= 1
open(sys.argv[2], 'wb').write(c)
open(sys.argv[3], 'wb').write(b[:len(b) - 100])
EOF
head -c 4096 /dev/urandom >"$work/foreign.bin"
for bad in flip cut foreign; do
	expect_status 2 "$RMDEV" load "$D" -i "$work/$bad.bin"
	has "not a whole rmdev migration stream"
	has "the device was not touched"
	"$VM_TEST" compare-pattern "$D" 22
done
"$VM_TEST" fill "$E" 23
json_out 1 load-refused "$RMDEV" --json load "$E" -i "$work/s.bin"
has "refuses the file's source version rmdev_sample:4m:1.0"
expect_eq "the refused load's verdict" "$(json_eval "d['verdict']['errno_name']" <<<"$out")" EINVAL
"$VM_TEST" compare-pattern "$E" 23
json_out 0 load "$RMDEV" --json load -u "$D" -i "$work/s.bin"
expect_eq "a load's downtime" "$(json_eval "d['downtime_s']" <<<"$out")" None
"$VM_TEST" compare-pattern "$D" 21

note "an interrupted save leaves no file"
B=$(new_uuid)
sysfs_write $SAMPLE_TYPES/rmdev_sample-256m/create "$B"
"$VM_TEST" fill "$B" 41
"$RMDEV" save --no-progress "$B" -o "$work/big.bin" >"$work/big.out" 2>&1 &
pid=$!
# Freeze it once its file has some data, so the signal surely lands
# mid-stream, whatever the machine's speed.
for _ in $(seq 300); do
	[ "$(stat -c %s "$work"/.big.bin.rmdev-partial-* 2>/dev/null || echo 0)" -gt 0 ] && break
	kill -0 $pid 2>/dev/null || fail "the save ended before it was interrupted: $(cat "$work/big.out")"
	sleep 0.1
done
kill -STOP $pid
ls "$work"/.big.bin.rmdev-partial-* >/dev/null 2>&1 || fail "no partial file while saving 256 MiB"
cp "$work"/.big.bin.rmdev-partial-* "$work/half.bin"
kill -TERM $pid
kill -CONT $pid
rc=0; wait $pid || rc=$?
pid=
expect_eq "exit status of an interrupted save" "$rc" 130
grep -q "interrupted by a signal; source RUNNING, no file written" "$work/big.out" ||
	fail "interrupted save said: $(cat "$work/big.out")"
[ ! -e "$work/big.bin" ] || fail "an interrupted save left $work/big.bin"
! ls "$work"/.big.bin.rmdev-partial-* >/dev/null 2>&1 || fail "an interrupted save left its partial file"
# What was written so far would not load anyway.
expect_status 2 "$RMDEV" load "$B" -i "$work/half.bin"
has "not a whole rmdev migration stream"
# The device is free again and its memory intact.
"$VM_TEST" compare-pattern "$B" 41

note "SIGINT during a migrate and a load: the devices put back, exit status 130"
# signal_mid_stream PID KIND SIGNAL...: once PID holds a migration data
# file of KIND ([rmdev_save] or [rmdev_resume]: the operation is under
# way), freezes it, sends the SIGNALs, thaws it. Its exit status is in rc.
# (A script's background commands start with SIGINT ignored, and rmdev
# keeps an ignored signal ignored: WITH_SIGINT runs a command, in the same
# process, with SIGINT's default action, as a terminal's foreground
# command has it.)
WITH_SIGINT=(env --default-signal=INT)
signal_mid_stream() {
	local p=$1 kind=$2 seen=0
	shift 2
	for _ in $(seq 600); do
		case "$(ls -l /proc/$p/fd 2>/dev/null)" in *"anon_inode:$kind"*) seen=1; break ;; esac
		kill -0 "$p" 2>/dev/null || break
		nap 0.1
	done
	[ $seen = 1 ] || fail "PID $p never held a $kind data file"
	kill -STOP "$p"
	for sig; do kill -"$sig" "$p"; done
	kill -CONT "$p"
	rc=0; wait "$p" || rc=$?
}
echo 1 >/sys/bus/mdev/devices/$B/remove
# 64 MiB devices: a migrate or load lasts seconds, long enough to be caught.
C1=$(new_uuid) C2=$(new_uuid)
sysfs_write $SAMPLE_TYPES/rmdev_sample-64m/create "$C1"
sysfs_write $SAMPLE_TYPES/rmdev_sample-64m/create "$C2"
"$VM_TEST" fill "$C1" 43
"$VM_TEST" fill "$C2" 44
"${WITH_SIGINT[@]}" "$RMDEV" migrate --no-progress "$C1" "$C2" >"$work/mig.out" 2>&1 &
pid=$!
signal_mid_stream $pid "[rmdev_save]" INT
pid=
expect_eq "exit status of an interrupted migrate" "$rc" 130
grep -q "migration failed: interrupted by a signal; source RUNNING, target reset, RUNNING" "$work/mig.out" ||
	fail "interrupted migrate said: $(cat "$work/mig.out")"
"$VM_TEST" compare-pattern "$C1" 43
expect_status 0 "$RMDEV" save --no-progress "$C1" -o "$work/c1.bin"
# interrupted_load SIGNAL...: a load of c1.bin into C2, sent SIGNAL... mid-stream.
interrupted_load() {
	"${WITH_SIGINT[@]}" "$RMDEV" load --no-progress "$C2" -i "$work/c1.bin" >"$work/load.out" 2>&1 &
	pid=$!
	signal_mid_stream $pid "[rmdev_resume]" "$@"
	pid=
	expect_eq "exit status of a load sent $*" "$rc" 130
}
interrupted_load INT
grep -q "load failed: interrupted by a signal; target reset, RUNNING" "$work/load.out" ||
	fail "interrupted load said: $(cat "$work/load.out")"
# A second signal ends the run at once (the device is put back when the
# kernel closes its files); the device is usable afterwards.
interrupted_load INT TERM
expect_status 0 "$RMDEV" load --no-progress "$C2" -i "$work/c1.bin"
"$VM_TEST" compare-pattern "$C2" 43
rm -f "$work/c1.bin"
echo 1 >/sys/bus/mdev/devices/$C1/remove
echo 1 >/sys/bus/mdev/devices/$C2/remove

note "a user other than root: list, export, match --offline and check --offline work; the rest explain"
# What a user may read: the tool (its build directory may be in root's
# home) and a manifest.
cp "$RMDEV" "$work/rmdev-user"
chmod 755 "$work" "$work/rmdev-user"
"$RMDEV" export -o "$work/m-user.json"
chmod 644 "$work/m-user.json" "$work/s.bin"
as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$work/rmdev-user" "$@"; }
expect_status 0 as_user list
has "$S rmdev_sample/rmdev_sample-4m"
expect_status 0 as_user export
expect_status 0 as_user match --offline --from "$work/m-user.json"
expect_status 0 as_user check --offline "$S" "$D"
has "compatible"
expect_status 2 as_user check "$S" "$D"
has "the write check needs root (--offline compares"
expect_status 2 as_user save --no-progress "$S" -o /tmp/rmdev-user.bin
has "opening an mdev's VFIO group needs root"
has "list, export, match --offline and check --offline work without"
expect_status 2 as_user migrate --no-progress "$S" "$D"
has "needs root"
expect_status 2 as_user load --no-progress "$D" -i "$work/s.bin"
has "needs root"

if [ -n "${RMDEV_SHARE:-}" ]; then
	note "the source host of the two-host test: manifest and saved files in $RMDEV_SHARE"
	"$VM_TEST" fill "$S" 31
	expect_status 0 "$RMDEV" save "$S" -o "$RMDEV_SHARE/sample-4m.bin"
	echo "$S" >"$RMDEV_SHARE/sample-4m.uuid"
fi

note "the VF vendor: rmdev on mdevs of two igb VFs (format_minor=1)"
igbvf_bind_two format_minor=1
M0=$(new_uuid) M1=$(new_uuid)
mdevctl start -u "$M0" -p "${VFS[0]}" -t rmdev_igbvf-vf
mdevctl start -u "$M1" -p "${VFS[1]}" -t rmdev_igbvf-vf
expect_status 0 "$RMDEV" list --probe
has "$M0 ${VFS[0]}/rmdev_igbvf-vf  flags STOP_COPY|P2P  migration_version rmdev_igbvf:vf:4.1:"
expect_status 0 "$RMDEV" version "$M0"
expect_eq "version of the VF mdev" "$out" "$(cat /sys/bus/mdev/devices/$M0/migration_version)"
expect_status 0 "$RMDEV" check "$M0" "${VFS[1]}/rmdev_igbvf-vf"
expect_status 1 "$RMDEV" check "$M0" "$S"
has "detail: vendor differs: source 'rmdev_igbvf', target 'rmdev_sample'"
"$VM_TEST" region-write "$M0" 0 0x2900 0x1a2b3c80
"$VM_TEST" region-write "$M0" 0 0x1680 0x00000200
expect_status 0 "$RMDEV" migrate "$M0" "$M1"
has "flags STOP_COPY|P2P"
expect_eq "VF1 RDBAL1 after rmdev migrate" "$("$VM_TEST" vf-read "${VFS[1]}" 0x2900)" 0x1a2b3c80
expect_eq "VF1 EITR0 after rmdev migrate" "$("$VM_TEST" vf-read "${VFS[1]}" 0x1680)" 0x00000200

if [ -n "${RMDEV_SHARE:-}" ]; then
	"$VM_TEST" region-write "$M0" 0 0x3900 0x0c0ffe00
	expect_status 0 "$RMDEV" save "$M0" -o "$RMDEV_SHARE/vf.bin"
	echo "$M0" >"$RMDEV_SHARE/vf.uuid"
	expect_status 0 "$RMDEV" export -o "$RMDEV_SHARE/manifest.json"
	note "left for the second host: $(ls "$RMDEV_SHARE" | tr '\n' ' ')"
fi
note "rmdev: every command against the sample and VF vendors"
