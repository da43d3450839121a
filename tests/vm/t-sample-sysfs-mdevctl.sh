# SPDX-License-Identifier: GPL-2.0
# The sample vendor's mdev sysfs tree, exactly as mdevctl and libvirt use it:
# types and their attributes, create/remove through sysfs and mdevctl, the
# links libvirt reads, the instance budget, the creation uevent.
. "$(dirname "$0")/lib.sh"

load_sample
trap 'pkill -f "udevadm monitor" || true; unload_sample' EXIT
[ -L /sys/class/mdev_bus/rmdev_sample ] || fail "no /sys/class/mdev_bus/rmdev_sample"
expect_eq "types" "$(ls $SAMPLE_TYPES | tr '\n' ' ')" "rmdev_sample-16k rmdev_sample-256m rmdev_sample-4m rmdev_sample-64m "
for t in 16k:8 4m:4 64m:2 256m:2; do
	d=$SAMPLE_TYPES/rmdev_sample-${t%:*}
	expect_eq "$d/device_api" "$(cat $d/device_api)" vfio-pci
	expect_eq "$d/name" "$(cat $d/name)" "sample-${t%:*}"
	expect_eq "$d/available_instances" "$(cat $d/available_instances)" "${t#*:}"
	grep -q "rmdev sample device with" $d/description || fail "$d/description: $(cat $d/description)"
done
grep -qF -- 'rmdev_sample-256m' <<<"$(mdevctl types)" || fail "mdevctl types: $(mdevctl types)"

# Create through sysfs, watching uevents as udev does.
udevadm monitor --kernel --subsystem-match=mdev >/tmp/uevents 2>&1 &
sleep 1
t=$SAMPLE_TYPES/rmdev_sample-4m
u=$(new_uuid)
sysfs_write $t/create "$u"
# libvirt reads these as soon as the device appears.
expect_eq "mdev_type link" "$(basename "$(readlink /sys/bus/mdev/devices/$u/mdev_type)")" rmdev_sample-4m
[ -e /sys/bus/mdev/devices/$u/iommu_group ] || fail "no iommu_group link"
[ -e "/dev/vfio/$(basename "$(readlink /sys/bus/mdev/devices/$u/iommu_group)")" ] || fail "no /dev/vfio group node"
expect_eq "driver" "$(basename "$(readlink /sys/bus/mdev/devices/$u/driver)")" rmdev_sample
[ -L $t/devices/$u ] || fail "no $t/devices/$u"
expect_eq "available after create" "$(cat $t/available_instances)" 3
udevadm settle
grep -q "add .*/$u (mdev)" /tmp/uevents || fail "no add uevent for $u: $(cat /tmp/uevents)"
expect_errno "File exists" sysfs_write $t/create "$u"
expect_errno "Invalid argument" sysfs_write $t/create "not-a-uuid"
expect_errno "Invalid argument" sysfs_write $t/create "$(printf 'x%.0s' $(seq 5000))"
grep -qF -- "$u rmdev_sample rmdev_sample-4m" <<<"$(mdevctl list)" || fail "mdevctl list: $(mdevctl list)"

# The budget: 2 of the 256 MiB type, then EUSERS.
big=$SAMPLE_TYPES/rmdev_sample-256m
b1=$(new_uuid) b2=$(new_uuid)
sysfs_write $big/create "$b1"
sysfs_write $big/create "$b2"
expect_eq "256m available when full" "$(cat $big/available_instances)" 0
expect_errno "Too many users" sysfs_write $big/create "$(new_uuid)"
sysfs_write /sys/bus/mdev/devices/$b1/remove 1
sysfs_write /sys/bus/mdev/devices/$b2/remove 1
expect_eq "256m available after removal" "$(cat $big/available_instances)" 2

sysfs_write /sys/bus/mdev/devices/$u/remove 1
[ ! -e /sys/bus/mdev/devices/$u ] || fail "$u still there after remove"
expect_eq "available after remove" "$(cat $t/available_instances)" 4
udevadm settle
grep -q "remove .*/$u (mdev)" /tmp/uevents || fail "no remove uevent for $u"

# mdevctl start/list/stop.
u=$(new_uuid)
mdevctl start -u "$u" -p rmdev_sample -t rmdev_sample-16k
[ -d /sys/bus/mdev/devices/$u ] || fail "mdevctl start did not create $u"
grep -qF -- "$u rmdev_sample rmdev_sample-16k" <<<"$(mdevctl list)" || fail "mdevctl list: $(mdevctl list)"
mdevctl stop -u "$u"
[ ! -e /sys/bus/mdev/devices/$u ] || fail "mdevctl stop did not remove $u"

# Unloading with mdevs present removes them.
u=$(new_uuid)
sysfs_write $SAMPLE_TYPES/rmdev_sample-16k/create "$u"
rmmod rmdev_sample
[ ! -e /sys/bus/mdev/devices/$u ] || fail "$u survived rmmod"
[ ! -e /sys/class/mdev_bus/rmdev_sample ] || fail "parent survived rmmod"
note "types, create/remove (sysfs, mdevctl), links, budget, uevents, rmmod with mdevs"
