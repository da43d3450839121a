# SPDX-License-Identifier: GPL-2.0
# rmdev_igbvf on the lab's igb VFs: binding only through driver_override,
# the mdev sysfs tree and mdevctl on two VFs, migration_version from the
# hardware, registers written through one mdev reaching the VF's hardware
# (read around the mdev through the VF's own resource0), the allow-list
# keeping DMA enables, doorbells and other registers away from the hardware,
# a migration VF0 -> VF1 through the uAPI and between two QEMUs over TCP,
# 10,000 hostile streams that never reach a denied bit or a doorbell, 100
# create-to-remove cycles, and every teardown (unbind, sriov_numvfs=0, rmmod igb, rmmod rmdev_igbvf)
# with and without a user holding an mdev in a migration session.
. "$(dirname "$0")/lib.sh"

QV=(python3 "$(dirname "$0")/qemu_vfio.py")
[ -x "$VM_TEST" ] || fail "$VM_TEST not built"

PF=$(basename "$(igb_pf)")
vf_of() { basename "$(readlink -f /sys/bus/pci/devices/$PF/virtfn$1)"; }
make_vfs() {
	echo 0 >/sys/bus/pci/devices/$PF/sriov_drivers_autoprobe
	echo 2 >/sys/bus/pci/devices/$PF/sriov_numvfs
	udevadm settle --timeout=60 2>/dev/null || true
	VF0=$(vf_of 0) VF1=$(vf_of 1)
}
VF0=$(vf_of 0) VF1=$(vf_of 1)
[ -n "$VF0" ] && [ -n "$VF1" ] || fail "the lab did not create 2 VFs"
TYPE=rmdev_igbvf-vf
types_of() { echo /sys/class/mdev_bus/$1/mdev_supported_types/$TYPE; }
driver_of() { basename "$(readlink /sys/bus/pci/devices/$1/driver 2>/dev/null)" 2>/dev/null || true; }
bind_vf() {
	echo rmdev_igbvf >/sys/bus/pci/devices/$1/driver_override
	echo $1 >/sys/bus/pci/drivers_probe
	expect_eq "driver of $1" "$(driver_of $1)" rmdev_igbvf
}
new_vf_mdev() {
	local u
	u=$(new_uuid)
	sysfs_write "$(types_of $1)/create" "$u"
	echo "$u"
}
gone() { [ ! -e /sys/bus/mdev/devices/$1 ] || fail "mdev $1 still exists"; }
# two_mdevs: binds VF0 and VF1 and creates an mdev on each (M0, M1).
two_mdevs() {
	bind_vf $VF0
	bind_vf $VF1
	M0=$(new_vf_mdev $VF0)
	M1=$(new_vf_mdev $VF1)
}
loaded() { grep -q "^$1 " /proc/modules; }
hw() { "$VM_TEST" vf-read "$@"; }
via() { "$VM_TEST" region-read "$1" 0 "$2"; }
cleanup() {
	pkill -f qemu-system-x86_64 2>/dev/null || true
	pkill -f "rmdev-vm-test hold" 2>/dev/null || true
	sleep 1
	remove_all_mdevs
	loaded rmdev_igbvf && rmmod rmdev_igbvf
	unload_sample
}
trap cleanup EXIT

modprobe mdev
insmod "$IGBVF_KO"

note "binding: only through driver_override"
expect_eq "driver of $VF0 after loading" "$(driver_of $VF0)" ""
expect_errno "No such device" sysfs_write /sys/bus/pci/drivers/rmdev_igbvf/bind "$VF0"
expect_eq "driver of $VF0 after a bind without driver_override" "$(driver_of $VF0)" ""
bind_vf $VF0
bind_vf $VF1
cmd=$(od -An -tx2 -j4 -N2 /sys/bus/pci/devices/$VF0/config | tr -d ' ')
expect_eq "VF0 memory decoding on, bus mastering off (command & 6)" "$((0x$cmd & 6))" 2

note "the sysfs tree of a VF parent"
t=$(types_of $VF0)
[ -d "$t" ] || fail "no $t"
[ -d "/sys/bus/pci/devices/$VF0/rmdev_igbvf/$VF0/mdev_supported_types/$TYPE" ] || fail "parent not under the VF"
expect_eq name "$(cat $t/name)" igbvf
expect_eq device_api "$(cat $t/device_api)" vfio-pci
expect_eq available_instances "$(cat $t/available_instances)" 1
hx() { local v; v=$(cat "$1"); echo "${v#0x}"; }
d=/sys/bus/pci/devices/$VF0
want="rmdev_igbvf:vf:4.0:id=$(hx $d/vendor)-$(hx $d/device):subsys=$(hx $d/subsystem_vendor)-$(hx $d/subsystem_device):rev=$(hx $d/revision):pf=$(hx $d/physfn/device)"
expect_eq "type migration_version" "$(cat $t/migration_version)" "$want"
note "$want"

note "mdevs through sysfs (VF0) and mdevctl (VF1)"
M0=$(new_vf_mdev $VF0)
expect_eq "available_instances after create" "$(cat $t/available_instances)" 0
expect_errno "Too many users" sysfs_write "$t/create" "$(new_uuid)"
M1=$(new_uuid)
mdevctl start -u "$M1" -p "$VF1" -t $TYPE || fail "mdevctl start on $VF1"
grep -qF -- "$M1 $VF1 $TYPE" <<<"$(mdevctl list)" || fail "mdevctl list: $(mdevctl list)"
grep -qF -- "$TYPE" <<<"$(mdevctl types -p "$VF1")" || fail "mdevctl types -p $VF1"

note "migration_version: VF0 and VF1 are compatible both ways, type and device"
v0=$(cat /sys/bus/mdev/devices/$M0/migration_version)
v1=$(cat /sys/bus/mdev/devices/$M1/migration_version)
expect_eq "device version" "$v0" "$want"
sysfs_write /sys/bus/mdev/devices/$M1/migration_version "$v0" || fail "VF1 refuses VF0's version"
sysfs_write /sys/bus/mdev/devices/$M0/migration_version "$v1" || fail "VF0 refuses VF1's version"
sysfs_write "$(types_of $VF1)/migration_version" "$v0" || fail "VF1's type refuses VF0's version"

note "migration_version: other hardware and a newer format are refused"
other=${want/pf=$(hx $d/physfn/device)/pf=10fb}
expect_errno "Invalid argument" sysfs_write /sys/bus/mdev/devices/$M1/migration_version "$other"
other=${want/rev=$(hx $d/revision)/rev=ff}
expect_errno "Invalid argument" sysfs_write /sys/bus/mdev/devices/$M1/migration_version "$other"
# VF1 rebound with format 1.1: it reads 1.0, VF0 (1.0) does not read 1.1.
echo 1 >/sys/module/rmdev_igbvf/parameters/format_minor
mdevctl stop -u "$M1"
echo "$VF1" >/sys/bus/pci/drivers/rmdev_igbvf/unbind
bind_vf $VF1
echo 0 >/sys/module/rmdev_igbvf/parameters/format_minor
v11=$(cat "$(types_of $VF1)/migration_version")
expect_eq "VF1 type version with format_minor=1" "$v11" "${want/:4.0:/:4.1:}"
sysfs_write "$(types_of $VF1)/migration_version" "$v0" || fail "1.1 refuses 1.0"
expect_errno "Invalid argument" sysfs_write /sys/bus/mdev/devices/$M0/migration_version "$v11"
echo "$VF1" >/sys/bus/pci/drivers/rmdev_igbvf/unbind
bind_vf $VF1
create_again mdevctl start -u "$M1" -p "$VF1" -t $TYPE || fail "mdevctl start on $VF1 again"

note "both vendors side by side; the sample's strings and streams are refused"
# The sample, and the C mtty with an mdev of its own, stay loaded through
# the campaigns below, as on a host with several mdev drivers.
load_sample
modprobe mtty
MT=$(new_uuid)
sysfs_write /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create "$MT"
s16=/sys/class/mdev_bus/rmdev_sample/mdev_supported_types/rmdev_sample-16k
sv=$(cat $s16/migration_version)
expect_errno "Invalid argument" sysfs_write /sys/bus/mdev/devices/$M0/migration_version "$sv"
expect_errno "Invalid argument" sysfs_write $s16/migration_version "$v0"
stream=$(mktemp /tmp/rmdev-stream.XXXXXX)
"$VM_TEST" --flags 7 save-stream rmdev_sample-16k "$stream" || fail "sample save"
"$VM_TEST" --flags 7 load-stream rmdev_sample-16k "$stream" || fail "sample load with rmdev_igbvf loaded"
out=$("$VM_TEST" load-mdev "$M0" "$stream" 2>&1) && fail "a sample stream loaded into an igbvf mdev"
case "$out" in *"refused at write 1:"*) note "sample stream: $out" ;; *) fail "sample stream: $out" ;; esac
rm -f "$stream"

# The checks below read the VFs' hardware around the mdevs: their BAR0 must
# decode (STATUS is never 0 on a live igb VF). tools/lab keeps the VF BARs
# below 4 GiB, where QEMU 10.0 decodes them (see QEMU_SRIOV_OPTS there).
for vf in $VF0 $VF1; do
	[ "$(hw $vf 0x0008)" != 0x00000000 ] || fail "$vf: BAR0 does not decode (STATUS reads 0)"
done
note "registers through the VF0 mdev"
# RDBAL1, RDBAH1, RDLEN1, RDH1, TDBAL1, TDBAH1, TDLEN1, TDWBAH1, EITR1
# (queue 1's: queue 0's are the vendor's, below).
PATTERN="0x2900=0x12345680 0x2904=0x0000abcd 0x2908=0x00002000 0x2910=0x00000010
0x3900=0x87654300 0x3904=0x00001234 0x3908=0x00004000 0x393c=0x0badf00d 0x1684=0x00000fa0"
for p in $PATTERN; do
	"$VM_TEST" region-write "$M0" 0 "${p%=*}" "${p#*=}" || fail "write ${p%=*} through the mdev"
done
for p in $PATTERN; do
	# What the mdev reads is what the hardware holds.
	expect_eq "VF0 mdev ${p%=*}" "$(via $M0 ${p%=*})" "$(hw $VF0 ${p%=*})"
	expect_eq "VF0 hardware ${p%=*}" "$(hw $VF0 ${p%=*})" "${p#*=}"
done

note "the allow-list: doorbells and other registers are not forwarded"
"$VM_TEST" region-write "$M0" 0 0x2928 0x02010101
[ $(( $(hw $VF0 0x2928) & 0x02000000 )) = 0 ] || fail "RXDCTL1 queue enable reached the hardware"
"$VM_TEST" region-write "$M0" 0 0x3828 0x02010101
[ $(( $(hw $VF0 0x3828) & 0x02000000 )) = 0 ] || fail "TXDCTL0 queue enable reached the hardware"
"$VM_TEST" region-write "$M0" 0 0x3838 0x00001001
[ $(( $(hw $VF0 0x3838) & 1 )) = 0 ] || fail "TDWBAL0 head write-back enable reached the hardware"
# Receive queue 0 is the vendor's emulation: none of a user's writes
# reaches the VF. (The vendor enables the VF's queue 0 itself, for its own
# ring, only while a user's ring of descriptors is enabled on a running
# device; here the ring is empty, so this shows only that the user's
# enable is not forwarded. vf-rx runs the vendor's own queue.)
for r in 0x2800 0x2804 0x2808 0x280c 0x2810; do
	before=$(hw $VF0 $r)
	"$VM_TEST" region-write "$M0" 0 $r 0x00001080
	expect_eq "VF0 hardware $r after a write through the mdev" "$(hw $VF0 $r)" "$before"
done
"$VM_TEST" region-write "$M0" 0 0x2828 0x02010101
[ $(( $(hw $VF0 0x2828) & 0x02000000 )) = 0 ] || fail "RXDCTL0 queue enable reached the hardware"
# The interrupt registers are the vendor's emulation (t-igbvf-tx.sh):
# none reaches the VF.
for r in 0x1700 0x1740 0x1524 0x1520 0x152c; do
	before=$(hw $VF0 $r)
	"$VM_TEST" region-write "$M0" 0 $r 0x83838383
	expect_eq "VF0 hardware $r after a write through the mdev" "$(hw $VF0 $r)" "$before"
done
for doorbell in 0x2818 0x3818 0x2918 0x3918; do
	before=$(hw $VF0 $doorbell)
	"$VM_TEST" region-write "$M0" 0 $doorbell 0x00000007
	expect_eq "doorbell $doorbell in the hardware" "$(hw $VF0 $doorbell)" "$before"
done
# RDT0 is the emulation's, and reads 0 for the next user, as TDT0 below.
for doorbell in 0x2818 0x2918 0x3918; do
	expect_eq "doorbell $doorbell through the mdev" "$(via $M0 $doorbell)" 0x00000000
done
# Transmit queue 0 is shadowed (t-igbvf-tx.sh) and every user starts from
# a reset queue: the next user (each command here opens the mdev anew)
# reads none of it.
expect_eq "TDT0 for the next user" "$(via $M0 0x3818)" 0x00000000
expect_eq "TXDCTL0 for the next user" "$(via $M0 0x3828)" 0x00000000
"$VM_TEST" region-write "$M0" 0 0x0000 0x04000000
expect_eq "RDBAL1 after a CTRL.RST write" "$(hw $VF0 0x2900)" 0x12345680
expect_eq "STATUS through the mdev" "$(via $M0 0x0008)" 0x00000000
expect_eq "the last dword of BAR0 through the mdev" "$(via $M0 0x3ffc)" 0x00000000
# Bus mastering in the emulated config space stays emulated.
"$VM_TEST" region-write "$M0" 7 0x4 0x00000006
cmd=$(od -An -tx2 -j4 -N2 /sys/bus/pci/devices/$VF0/config | tr -d ' ')
expect_eq "VF0 bus mastering after the mdev's command write" "$((0x$cmd & 4))" 0
expect_eq "the mdev's emulated vendor:device" "$("$VM_TEST" region-read "$M0" 7 0)" "0x$(hx $d/device)$(hx $d/vendor)"
expect_eq "the mdev's emulated class:revision" "$("$VM_TEST" region-read "$M0" 7 8)" "0x$(hx $d/class)$(hx $d/revision)"
expect_eq "the mdev's emulated subsystem" "$("$VM_TEST" region-read "$M0" 7 0x2c)" "0x$(hx $d/subsystem_device)$(hx $d/subsystem_vendor)"
"$VM_TEST" region-write "$M0" 7 0x4 0x00000000

note "migration VF0 mdev -> VF1 mdev through the uAPI"
for p in $PATTERN; do
	"$VM_TEST" vf-write $VF1 "${p%=*}" 0 # the target starts from zeros
done
"$VM_TEST" migrate-mdev "$M0" "$M1" || fail "migration"
for p in $PATTERN; do
	expect_eq "VF1 mdev ${p%=*} after migration" "$(via $M1 ${p%=*})" "$(hw $VF1 ${p%=*})"
	expect_eq "VF1 hardware ${p%=*} after migration" "$(hw $VF1 ${p%=*})" "${p#*=}"
done
for r in 0x2928 0x3828 0x3838; do
	expect_eq "VF1 hardware $r equals VF0's" "$(hw $VF1 $r)" "$(hw $VF0 $r)"
done

# The stream campaign (tests/vm/uapi/src/campaign.rs) against this vendor:
# 10,000 damaged and forged streams from VF0's into the VF1 mdev; after
# each, VF1's own BAR0 has no denied bit set and its doorbells untouched.
seed=${RMDEV_SEED:-$(date +%s%N)}
note "VF stream campaign seed $seed (replay: RMDEV_SEED=$seed tools/lab test t-igbvf)"
"$VM_TEST" vf-stream-campaign "$M0" "$M1" "$VF1" "$seed" 10000 || fail "VF stream campaign, seed $seed"
# Random ioctls, reads and writes from 4 threads on the VF1 mdev (5,000
# each): afterwards it resets, VF1's own BAR0 is as clean, and the VF0
# mdev migrates into it.
"$VM_TEST" ioctl-campaign "$seed" 5000 vf "$M1" "$VF1" "$M0" || fail "VF ioctl campaign, seed $seed"
# Races of data FD calls from 3 threads against SET, RESET, MIG_DATA_SIZE
# and the close of the VF1 mdev, 30 rounds; then VF0's migrates into it.
"$VM_TEST" race-campaign "$seed" 30 vf "$M1" || fail "VF race campaign, seed $seed"
"$VM_TEST" migrate-mdev "$M0" "$M1" || fail "VF0 mdev -> VF1 mdev after the races"

note "QEMU: VF0 mdev live-migrated over TCP to a QEMU holding the VF1 mdev"
before=""
for p in $PATTERN; do
	before="$before $VM_TEST vf-write $VF0 ${p%=*} $(( ${p#*=} ^ 0x00005500 ));"
done
"${QV[@]}" migrate "$M0" "$M1" --before "$before" || fail "QEMU migration"
for p in $PATTERN; do
	expect_eq "VF1 hardware ${p%=*} after the QEMU migration" "$(hw $VF1 ${p%=*})" "$(printf '0x%08x' $(( ${p#*=} ^ 0x00005500 )))"
done

# hold_then CMD...: a user holds M0 open in STOP_COPY (data FD open); CMD
# must complete once the user released it on the kernel's request.
hold_then() {
	local log=/tmp/rmdev-hold.log
	"$VM_TEST" hold "$M0" "${HOLD:-STOP_COPY}" >$log 2>&1 &
	local holder=$!
	for i in $(seq 100); do grep -q holding $log && break; sleep 0.1; done
	grep -q "holding.*data FD: true" $log || fail "holder did not start: $(cat $log)"
	"$@" || fail "'$*' failed"
	wait $holder || fail "holder: $(cat $log)"
	grep -q "released on request" $log || fail "holder not asked: $(cat $log)"
}

note "resources: 40 create/open/migrate/close/remove cycles VF0 -> VF1"
sysfs_write /sys/bus/mdev/devices/$M0/remove 1
sysfs_write /sys/bus/mdev/devices/$M1/remove 1
# Teardown races first: 15 rounds each of a VF1 mdev removed, and of VF1
# unbound (its mdev parent unregistered, then bound again), while its user
# hammers its data FDs and migration_version, closing when asked.
"$VM_TEST" teardown-campaign "$(types_of $VF1)" "$seed" 15 || fail "teardown campaign (remove), seed $seed"
"$VM_TEST" teardown-campaign "$(types_of $VF1)" "$seed" 15 unbind "$VF1" ||
	fail "teardown campaign (unbind), seed $seed"
"$VM_TEST" cycles "$(types_of $VF0)" "$(types_of $VF1)" 40 || fail "resource cycles"
sysfs_write /sys/bus/mdev/devices/$MT/remove 1
unload_sample
M0=$(new_vf_mdev $VF0)
M1=$(new_vf_mdev $VF1)

note "teardown: unbinding a VF with an idle mdev, then with a user in a session"
echo "$VF1" >/sys/bus/pci/drivers/rmdev_igbvf/unbind
gone "$M1"
[ ! -e /sys/class/mdev_bus/$VF1 ] || fail "VF1 still a parent after unbind"
hold_then sysfs_write /sys/bus/pci/drivers/rmdev_igbvf/unbind "$VF0"
gone "$M0"

# The teardowns below run with the user in a save session (HOLD=STOP_COPY)
# and in a resume session (HOLD=RESUMING) in turn.
note "teardown: rmmod rmdev_igbvf refused while an mdev is open, then done (save, then resume session)"
for HOLD in STOP_COPY RESUMING; do
	loaded rmdev_igbvf || insmod "$IGBVF_KO"
	two_mdevs
	"$VM_TEST" hold "$M0" $HOLD >/tmp/rmdev-hold.log 2>&1 &
	holder=$!
	for i in $(seq 100); do grep -q holding /tmp/rmdev-hold.log && break; sleep 0.1; done
	grep -q "holding.*data FD: true" /tmp/rmdev-hold.log || fail "holder did not start: $(cat /tmp/rmdev-hold.log)"
	expect_errno "in use" rmmod rmdev_igbvf
	kill $holder; wait $holder 2>/dev/null || true
	for i in $(seq 50); do rmmod rmdev_igbvf 2>/dev/null && break; sleep 0.2; done
	loaded rmdev_igbvf && fail "rmmod rmdev_igbvf after the user closed ($HOLD)"
	gone "$M0"; gone "$M1"
	expect_eq "VF0 driver after rmmod" "$(driver_of $VF0)" ""
done

note "teardown: sriov_numvfs=0 with mdevs, one held in a session (2 rounds)"
insmod "$IGBVF_KO"
for HOLD in STOP_COPY RESUMING; do
	[ -e /sys/bus/pci/devices/$VF0 ] || make_vfs
	two_mdevs
	hold_then sysfs_write /sys/bus/pci/devices/$PF/sriov_numvfs 0
	gone "$M0"; gone "$M1"
	[ ! -e /sys/bus/pci/devices/$VF0 ] || fail "VF0 still there"
done

note "teardown: rmmod igb (the PF driver) with mdevs, one held in a session (2 rounds), modprobe igb between"
for HOLD in STOP_COPY RESUMING; do
	[ -e /sys/bus/pci/devices/$VF0 ] || make_vfs
	two_mdevs
	hold_then rmmod igb
	gone "$M0"; gone "$M1"
	[ ! -e /sys/bus/pci/devices/$VF0 ] || fail "VF0 still there after rmmod igb"
	modprobe igb
	udevadm settle --timeout=60 || true
	[ -e /sys/bus/pci/devices/$PF/sriov_numvfs ] ||
		fail "the PF after modprobe igb: driver '$(driver_of $PF)', files: $(ls /sys/bus/pci/devices/$PF | tr '\n' ' ')"
done
make_vfs
bind_vf $VF0
M0=$(new_vf_mdev $VF0)
expect_eq "an mdev on a VF of the reloaded igb" "$(cat /sys/bus/mdev/devices/$M0/migration_version)" "$want"
echo 1 >/sys/bus/mdev/devices/$M0/remove
note "teardown: rmmod rmdev_igbvf against a user opening a VF mdev again and again"
"$VM_TEST" rmmod-race "$(types_of $VF0)" rmdev_igbvf "$seed" 3000 || fail "rmmod race (rmdev_igbvf), seed $seed"
expect_eq "VF0 driver after the unload" "$(driver_of $VF0)" ""
# Leave the VFs as the lab made them: unbound.
echo >/sys/bus/pci/devices/$VF0/driver_override
echo >/sys/bus/pci/devices/$VF1/driver_override
trap - EXIT
