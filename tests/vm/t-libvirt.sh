# SPDX-License-Identifier: GPL-2.0
# libvirt 11.3 as the operator's stack (Documentation/libvirt.rst), started
# in the lab VM the way Debian runs it (tools/lab-libvirt): node devices
# (the VFs bound to rmdev_igbvf list their mdev types; nodedev-define and
# nodedev-start create a VF-backed mdev through mdevctl, nodedev-destroy and
# nodedev-undefine remove it), assignment of an mdev of each vendor to a
# domain whose QEMU runs as libvirt-qemu (the guest reads the device's IDs
# and BAR; QEMU's log has no vfio message; a second domain naming the same
# mdev is refused while the first keeps running), virsh save / restore onto
# the same and another mdev of the same type, with the device state
# compared and the times printed, and rmdev's hook on restore (an
# incompatible mdev refused before QEMU starts, the same restore failing
# inside QEMU without it, a missing mdev replaced by a compatible one).
# Part of make check's in-VM suite (on host 1 of its lab pair, last but
# rmdev-host2, leaving libvirtd running for libvirt-pair).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/libvirt-lib.sh"

# On host 1 of make check's lab pair (tests/vm/two-hosts), libvirtd
# listens for host 2 and outlives the test: libvirt-pair goes on with it
# (one libvirtd start less: 12 to 17 s measured, more beside a busy VM).
if [ "${RMDEV_HOST:-}" = 1 ]; then
	libvirt_start=(start --pair) libvirt_keep=1
else
	libvirt_start=(start) libvirt_keep=0
fi
cleanup() {
	vsh_stop
	[ "$libvirt_keep" = 1 ] || "$LAB_LIBVIRT" stop || true
	igbvf_release
	unload_sample
}
trap cleanup EXIT
[ -x "$VM_TEST" ] || fail "$VM_TEST not built"

"$LAB_LIBVIRT" "${libvirt_start[@]}"
# The test's virsh commands in one virsh (vsh, libvirt-lib.sh): a virsh
# start costs 7 to 13 s here.
vsh_start
load_sample
igbvf_bind_two
udevadm settle --timeout=60 || true

# ---- node devices
vf_node() { echo "pci_$(echo "$1" | tr ':.' '__')"; }
node0=$(vf_node "${VFS[0]}") node1=$(vf_node "${VFS[1]}")
note "node devices: the VFs bound to rmdev_igbvf offer mdev types"
types=$(vsh nodedev-list --cap mdev_types)
case "$types" in *"$node0"*) ;; *) fail "nodedev-list --cap mdev_types lacks $node0: $types" ;; esac
case "$types" in *"$node1"*) ;; *) fail "nodedev-list --cap mdev_types lacks $node1: $types" ;; esac
xml=$(vsh nodedev-dumpxml "$node0")
got=$(printf '%s' "$xml" | python3 -c '
import sys, xml.etree.ElementTree as ET
d = ET.fromstring(sys.stdin.read())
t = d.find(".//capability[@type=\"mdev_types\"]/type")
print(d.find("driver/name").text, t.get("id"), t.find("name").text,
      t.find("deviceAPI").text, t.find("availableInstances").text)')
expect_eq "$node0's driver and mdev type" "$got" "rmdev_igbvf rmdev_igbvf-vf igbvf vfio-pci 1"

note "node devices: nodedev-define and nodedev-start create a VF-backed mdev (libvirt runs mdevctl)"
vfu=$(new_uuid)
cat >/tmp/lv-mdev.xml <<XML
<device>
  <parent>$node0</parent>
  <capability type='mdev'>
    <type id='rmdev_igbvf-vf'/>
    <uuid>$vfu</uuid>
  </capability>
</device>
XML
vsh nodedev-define /tmp/lv-mdev.xml >/dev/null
mnode=mdev_$(echo "$vfu" | tr '-' '_')_$(echo "${VFS[0]}" | tr ':.' '__')
vsh nodedev-start "$mnode" >/dev/null
[ -e "/sys/bus/mdev/devices/$vfu" ] || fail "nodedev-start: no mdev $vfu in sysfs"
expect_eq "the mdev's parent" "$(basename "$(readlink -f "/sys/bus/mdev/devices/$vfu/mdev_type/../..")")" "${VFS[0]}"
parent=$(vsh nodedev-dumpxml "$mnode" | python3 -c '
import sys, xml.etree.ElementTree as ET
print(ET.fromstring(sys.stdin.read()).find("parent").text)')
expect_eq "libvirt's parent of $mnode" "$parent" "$node0"
expect_eq "available instances once it exists" \
	"$(cat "/sys/bus/pci/devices/${VFS[0]}/mdev_supported_types/rmdev_igbvf-vf/available_instances")" 0

note "node devices: the sample's virtual parent is not one (libvirt models PCI, css, ap and mtty parents); its mdevs are"
su=$(new_uuid)
mdevctl start -u "$su" -p rmdev_sample -t rmdev_sample-4m
snode=mdev_$(echo "$su" | tr '-' '_')
for _ in $(seq 50); do
	list=$(vsh nodedev-list --cap mdev)
	case "$list" in *"$snode"*) break ;; esac
	sleep 0.2
done
case "$list" in *"$snode"*) ;; *) fail "libvirt does not list the sample mdev $su: $list" ;; esac
case "$types" in *rmdev_sample*) fail "libvirt now models the sample's parent: update Documentation/libvirt.rst" ;; esac

# ---- assignment
# The guests write their device COUNT times and stop, so that the state a
# save captures is known: the sample's counter 3000 (0xbb8) at offset 0 of
# its memory, the VF's RDBAL1 2000 x 0x80 (0x3e800).
mkdir -p "$LV_IMAGES"
guest_image sample-count "${GUEST_SAMPLE[@]}" -DCOUNT=3000
guest_image vf-count "${GUEST_VF[@]}" -DCOUNT=2000
# has_line NAME LINE: the domain's guest wrote LINE on its serial port.
has_line() {
	grep -qxF "$2" "$(serial_log "$1")" ||
		fail "domain $1: no line '$2' on its serial port: $(serial "$1" | tr '\n' '|')"
}

note "assignment: a domain holding the sample mdev; its guest reads the IDs and the memory"
"$VM_TEST" fill "$su" 7
word=$("$VM_TEST" region-read "$su" 2 0)
domain_xml --words-cpu-check lv-sample "$LV_IMAGES/sample-count.elf" "$su" >/tmp/lv-sample.xml
vsh create /tmp/lv-sample.xml >/dev/null
wait_serial lv-sample "rmdev-guest: writing"
has_line lv-sample "rmdev-guest: id 1b3610f0"
has_line lv-sample "rmdev-guest: bar ${word#0x}"
expect_eq "the sample domain's QEMU user" "$(domain_user lv-sample)" libvirt-qemu
group=$(basename "$(readlink -f "/sys/bus/mdev/devices/$su/iommu_group")")
# libvirt gives QEMU a /dev of its own (a mount namespace, Debian's
# default), where it creates the group's node for QEMU's user.
qpid=$(cat /run/libvirt/qemu/lv-sample.pid)
expect_eq "owner of /dev/vfio/$group in QEMU's /dev" "$(stat -c %U "/proc/$qpid/root/dev/vfio/$group")" libvirt-qemu
qemu_log_clean lv-sample

note "assignment: a second domain naming the same mdev is refused; the first keeps running"
domain_xml --words-cpu-check lv-sample-2 "$LV_IMAGES/sample-count.elf" "$su" >/tmp/lv-sample-2.xml
if out=$(vsh create /tmp/lv-sample-2.xml 2>&1); then
	fail "a second domain started with mdev $su"
fi
note "  virsh: $out"
case "$out" in *"$su"*"in use"* | *"in use"*"$su"*) ;; *) fail "the refusal does not say the mdev is in use: $out" ;; esac
expect_eq "lv-sample's state" "$(vsh domstate lv-sample)" running

note "assignment: a domain holding the VF-backed mdev; its guest writes a register the VF holds"
domain_xml lv-vf "$LV_IMAGES/vf-count.elf" "$vfu" >/tmp/lv-vf.xml
vsh create /tmp/lv-vf.xml >/dev/null
wait_serial lv-vf "rmdev-guest: writing"
has_line lv-vf "rmdev-guest: id 808610ca"
expect_eq "the VF domain's QEMU user" "$(domain_user lv-vf)" libvirt-qemu
qemu_log_clean lv-vf

# ---- save and restore
# libvirt pauses a domain before it saves it, so the device state moves in
# stop-copy, which QEMU starts only when what is left fits its downtime
# limit at the bandwidth it measured; a paused guest's trickle of RAM
# measures almost none, and a 4 MiB device state never fits 300 ms. The
# operator's setting (Documentation/libvirt.rst): the largest downtime
# limit, before the save (the guest is paused anyway).
# save_restore NAME: once NAME's guest is done, saves it (timed) and
# restores it (timed) onto the same mdev, then destroys it; the image
# stays in $LV_IMAGES/NAME.sav.
save_restore() {
	local name=$1 ms
	wait_serial "$name" "rmdev-guest: done" 120
	vsh migrate-setmaxdowntime "$name" 2000000
	timed ms vsh save "$name" "$LV_IMAGES/$name.sav" >/dev/null
	note "  virsh save $name: $ms ms ($(stat -c %s "$LV_IMAGES/$name.sav") bytes)"
	timed ms vsh restore "$LV_IMAGES/$name.sav" >/dev/null
	note "  virsh restore $name: $ms ms"
	expect_eq "$name's state after the restore" "$(vsh domstate "$name")" running
	qemu_log_clean "$name"
	vsh destroy "$name" >/dev/null
}

# restore_onto NAME UUID NEW: restores NAME's image with its mdev UUID
# replaced by NEW (virsh restore --xml), lets it run, destroys it.
restore_onto() {
	local name=$1 u=$2 new=$3 ms
	vsh save-image-dumpxml "$LV_IMAGES/$name.sav" | sed "s/$u/$new/" >"/tmp/$name-onto.xml"
	timed ms vsh restore "$LV_IMAGES/$name.sav" --xml "/tmp/$name-onto.xml" >/dev/null
	note "  virsh restore $name --xml (onto $new): $ms ms"
	expect_eq "$name's state after the restore onto $new" "$(vsh domstate "$name")" running
	qemu_log_clean "$name"
	vsh destroy "$name" >/dev/null
}

note "save and restore: the sample mdev (its guest's last write: 3000), annotated by rmdev for the hook below"
wait_serial lv-sample "rmdev-guest: done" 120
"$RMDEV" libvirt annotate lv-sample
save_restore lv-sample
su2=$(new_uuid)
sysfs_write "$SAMPLE_TYPES/rmdev_sample-4m/create" "$su2"
"$VM_TEST" fill "$su2" 9
restore_onto lv-sample "$su" "$su2"
"$VM_TEST" compare "$su" "$su2" || fail "the sample's memory restored onto $su2 differs from $su's"
expect_eq "the counter in the restored memory" "$("$VM_TEST" region-read "$su2" 2 0)" 0x00000bb8

note "save and restore: the VF-backed mdev (its guest's last write to RDBAL1: 2000 x 0x80)"
save_restore lv-vf
vfu2=$(new_uuid)
sysfs_write "/sys/bus/pci/devices/${VFS[1]}/mdev_supported_types/rmdev_igbvf-vf/create" "$vfu2"
"$VM_TEST" vf-write "${VFS[1]}" 0x2900 0x12345600
restore_onto lv-vf "$vfu" "$vfu2"
expect_eq "RDBAL1 in VF ${VFS[1]}'s own BAR0 after the restore" \
	"$("$VM_TEST" vf-read "${VFS[1]}" 0x2900)" 0x0003e800

note "node devices: nodedev-destroy and nodedev-undefine remove the VF-backed mdev"
sysfs_write "/sys/bus/mdev/devices/$vfu2/remove" 1
vsh nodedev-destroy "$mnode" >/dev/null
[ ! -e "/sys/bus/mdev/devices/$vfu" ] || fail "nodedev-destroy left mdev $vfu"
vsh nodedev-undefine "$mnode" >/dev/null
for _ in $(seq 50); do
	list=$(vsh nodedev-list --all --cap mdev)
	case "$list" in *"$mnode"*) ;; *) break ;; esac
	sleep 0.2
done
case "$list" in *"$mnode"*) fail "nodedev-undefine left $mnode" ;; esac

# ---- rmdev's hook on restore
HOOK_DIR=/etc/libvirt/hooks/qemu.d
hook_on() { "$RMDEV" libvirt install-hook --dir "$HOOK_DIR" >/dev/null; pkill -HUP -x libvirtd; sleep 2; }
hook_off() { "$RMDEV" libvirt install-hook --dir "$HOOK_DIR" --remove >/dev/null; pkill -HUP -x libvirtd; sleep 2; }
note "rmdev's hook: the save of lv-sample carries the sample mdev's version (rmdev_sample:4m:1.0)"
case "$(vsh save-image-dumpxml "$LV_IMAGES/lv-sample.sav")" in
*"migration_version=\"rmdev_sample:4m:1.0\""* | *"migration_version='rmdev_sample:4m:1.0'"*) ;;
*) fail "the save image's XML lacks rmdev's annotation" ;;
esac
mdevctl stop -u "$su"
sysfs_write "/sys/bus/mdev/devices/$su2/remove" 1
unload_sample

note "rmdev's hook: the restore onto the same UUID, now an mdev of format 2.0, is refused before QEMU starts"
load_sample format_version=2
create_again sysfs_write "$SAMPLE_TYPES/rmdev_sample-4m/create" "$su"
hook_on
: >/var/log/libvirt/qemu/lv-sample.log
if out=$(vsh restore "$LV_IMAGES/lv-sample.sav" 2>&1); then
	fail "the restore onto an incompatible mdev succeeded"
fi
note "  with the hook: $out"
case "$out" in *"Hook script execution failed"*"rmdev_sample:4m:1.0"*"$su"* | *"Hook script execution failed"*"$su"*"rmdev_sample:4m:1.0"*) ;;
*) fail "not the hook's refusal: $out" ;;
esac
[ ! -s /var/log/libvirt/qemu/lv-sample.log ] || fail "QEMU started despite the hook: $(cat /var/log/libvirt/qemu/lv-sample.log)"
vsh domstate lv-sample >/dev/null 2>&1 && fail "lv-sample exists after the refusal"

note "rmdev's hook: without it, the same restore fails inside QEMU"
hook_off
if out=$(vsh restore "$LV_IMAGES/lv-sample.sav" 2>&1); then
	fail "the restore onto an incompatible mdev succeeded without the hook"
fi
note "  without the hook: $out"
[ -s /var/log/libvirt/qemu/lv-sample.log ] || fail "QEMU never started (no log)"
vsh domstate lv-sample >/dev/null 2>&1 && fail "lv-sample exists after the failure"

note "rmdev's hook: the named mdev absent, the restore lands on a compatible one the hook chooses"
sysfs_write "/sys/bus/mdev/devices/$su/remove" 1
# An mdev of format 1.0 beside the types of format 2.0: the parameter
# applies to the mdevs created after it changes (no reload, which waits
# seconds for the debug kernel's delayed kobject releases).
sysfs_write /sys/module/rmdev_sample/parameters/format_version 1
su3=$(new_uuid)
sysfs_write "$SAMPLE_TYPES/rmdev_sample-4m/create" "$su3"
hook_on
vsh restore "$LV_IMAGES/lv-sample.sav" >/dev/null
expect_eq "lv-sample's state after the restore" "$(vsh domstate lv-sample)" running
case "$(vsh dumpxml lv-sample)" in *"uuid='$su3'"*) ;; *) fail "lv-sample does not hold the mdev $su3 the hook chose" ;; esac
vsh destroy lv-sample >/dev/null
expect_eq "the counter in $su3's memory" "$("$VM_TEST" region-read "$su3" 2 0)" 0x00000bb8
hook_off
sysfs_write "/sys/bus/mdev/devices/$su3/remove" 1

trap - EXIT
cleanup
