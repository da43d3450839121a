# SPDX-License-Identifier: GPL-2.0
# The C mtty sample (the reference implementation) through the mdev sysfs ABI
# and mdevctl: types appear, mdevs are created, listed and removed.
. "$(dirname "$0")/lib.sh"

modprobe mtty
# mtty stays loaded: its mdev types and parent live in module memory, which
# the mdev core's delayed releases (CONFIG_DEBUG_KOBJECT_RELEASE in the lab)
# touch after an unload. rmdev_sample frees that memory in the release
# itself and waits for it on unload; the C sample cannot be unloaded safely.
types=/sys/class/mdev_bus/mtty/mdev_supported_types
[ -d $types ] || fail "no $types after modprobe mtty"
for t in mtty-1 mtty-2; do
	[ -d $types/$t ] || fail "type $t missing"
	for f in name device_api available_instances create description; do
		[ -e $types/$t/$f ] || [ $f = description ] || fail "$t/$f missing"
	done
	expect_eq "$t device_api" "$(cat $types/$t/device_api)" vfio-pci
done
grep -qF -- 'mtty-1' <<<"$(mdevctl types)" || fail "mdevctl types does not list mtty-1"
grep -qF -- 'mtty-2' <<<"$(mdevctl types)" || fail "mdevctl types does not list mtty-2"

# Create through sysfs.
before=$(cat $types/mtty-2/available_instances)
u=$(new_uuid)
sysfs_write $types/mtty-2/create "$u"
[ -d /sys/bus/mdev/devices/$u ] || fail "mdev $u not created"
expect_eq "mdev_type link" "$(basename "$(readlink /sys/bus/mdev/devices/$u/mdev_type)")" mtty-2
[ -e /sys/bus/mdev/devices/$u/iommu_group ] || fail "no iommu_group link"
expect_eq "available_instances after create" "$(cat $types/mtty-2/available_instances)" $((before - 1))
grep -qF -- "$u mtty mtty-2" <<<"$(mdevctl list)" || fail "mdevctl list does not show $u: $(mdevctl list)"
# The same UUID twice is refused, and so is a malformed one.
expect_errno "File exists" sysfs_write $types/mtty-2/create "$u"
expect_errno "Invalid argument" sysfs_write $types/mtty-2/create "not-a-uuid"
# Remove through sysfs.
sysfs_write /sys/bus/mdev/devices/$u/remove 1
[ ! -e /sys/bus/mdev/devices/$u ] || fail "mdev $u still there after remove"
# mtty returns its ports in the VFIO device's release, which the lab delays.
expect_eventually "available_instances after remove" $types/mtty-2/available_instances "$before"
listed=$(mdevctl list) # its own step: a failing mdevctl fails the test
grep -qF -- "$u" <<<"$listed" && fail "mdevctl list still shows $u"

# Create and remove through mdevctl.
u=$(new_uuid)
mdevctl start -u "$u" -p mtty -t mtty-1
[ -d /sys/bus/mdev/devices/$u ] || fail "mdevctl start did not create $u"
grep -qF -- "$u mtty mtty-1" <<<"$(mdevctl list)" || fail "mdevctl list does not show $u"
mdevctl stop -u "$u"
[ ! -e /sys/bus/mdev/devices/$u ] || fail "mdevctl stop did not remove $u"
note "mtty types listed, mdevs created/listed/removed via sysfs and mdevctl"
