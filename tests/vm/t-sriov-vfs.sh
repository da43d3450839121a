# SPDX-License-Identifier: GPL-2.0
# The real SR-IOV NIC: QEMU's igb PF offers 7 VFs and the lab created
# exactly RMDEV_VFS of them, with no driver bound.
. "$(dirname "$0")/lib.sh"

pf=$(igb_pf)
expect_eq "sriov_totalvfs" "$(cat $pf/sriov_totalvfs)" 7
expect_eq "sriov_numvfs" "$(cat $pf/sriov_numvfs)" "$RMDEV_VFS"
expect_eq "sriov_drivers_autoprobe" "$(cat $pf/sriov_drivers_autoprobe)" 0
n=0
for d in /sys/bus/pci/devices/*; do
	[ "$(cat $d/vendor)" = 0x8086 ] && [ "$(cat $d/device)" = 0x10ca ] || continue
	n=$((n + 1))
	[ -e $d/driver ] && fail "VF $(basename $d) is bound to $(basename "$(readlink $d/driver)")"
	[ "$(readlink -f $d/physfn)" = "$(readlink -f $pf)" ] || fail "VF $(basename $d) has no physfn link to the PF"
done
expect_eq "VFs 8086:10ca" "$n" "$RMDEV_VFS"
note "PF $(basename $pf): 7 VFs offered, $n created, none bound"
