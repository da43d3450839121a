# SPDX-License-Identifier: GPL-2.0
# rmdev_igbvf's shadowed transmit queue carries real frames: with the PF's
# interface up, the test program drives an mdev on VF0 as a guest driver
# drives the VF (its own memory mapped into the mdev's container, a ring of
# advanced descriptors, the tail doorbell) and captures what arrives on
# the PF's netdev: every frame as sent, in order, none extra; then the
# refusals, a ring the device cannot read, memory unmapped under the queue,
# frames queued on a stopped mdev migrated to an mdev on VF1 and sent from
# there, a reset and the next user; the MSI-X interrupts and the mailbox,
# where the vendor answers VF_RESET with the MAC set here
# (tests/vm/uapi/src/vf_traffic.rs). Then the receive side: frames sent
# from the PF's netdev to the VFs' MACs, which QEMU's igb switches to the
# VFs, land in a ring of the test's memory through the mdev on VF0, in
# order, byte for byte; the ring wraps, 1 KiB buffers split frames, frames
# wait while no descriptor is free; buffers unmapped, past their mapping
# or read-only are refused, a ring the device cannot read stops the queue;
# the interrupt on the routed vector; a reset and the next user; the ring
# migrated to the mdev on VF1, whose frames continue it
# (tests/vm/uapi/src/vf_rx.rs). Last, QEMU: a guest sending numbered frames
# while it is live-migrated from the VF0 mdev to the VF1 mdev.
. "$(dirname "$0")/lib.sh"

[ -x "$VM_TEST" ] || fail "$VM_TEST not built"
PF=$(igb_pf)
PFIF=$(ls "$PF/net" | head -n1)
[ -n "$PFIF" ] || fail "the igb PF has no netdev"
guest=$(mktemp /tmp/nic-guest.XXXXXX)
cleanup() {
	rm -f "$guest"
	remove_all_mdevs
	igbvf_release
	ip link set "$PFIF" down 2>/dev/null || true
}
trap cleanup EXIT

# The PF's igb answers the VF's mailbox from its interrupt handler, and
# its transmit and receive run only while its interface is up (QEMU's
# user network gives it a link).
ip link set "$PFIF" up
expect_eventually "carrier on $PFIF" "/sys/class/net/$PFIF/carrier" 1
igbvf_bind_two
M0=$(new_uuid) M1=$(new_uuid)
sysfs_write "/sys/class/mdev_bus/${VFS[0]}/mdev_supported_types/rmdev_igbvf-vf/create" "$M0"
sysfs_write "/sys/class/mdev_bus/${VFS[1]}/mdev_supported_types/rmdev_igbvf-vf/create" "$M1"
# The operator's MAC address for VF0: what the mailbox must answer.
VF0_MAC=02:52:4d:56:46:30
ip link set "$PFIF" vf 0 mac $VF0_MAC
# VF1, the migration target, has none.
ip link set "$PFIF" vf 1 mac 00:00:00:00:00:00
# The VF's own MSI-X vector is the vendor's: the hardware signals the
# write-backs of the vendor's rings on it (the interrupts counted in
# /proc/interrupts, under the driver's name) while receive runs or a
# transmit round waits for the VF. QEMU's igb completes a round inside its
# doorbell, so transmit alone raises few or none.
vf_irqs() {
	local n=0 i c
	for i in $(ls /sys/bus/pci/devices/$1/msi_irqs); do
		c=$(awk -v i="$i:" '$1 == i { s = 0; for (k = 2; k <= NF && $k ~ /^[0-9]+$/; k++) s += $k; print s }' /proc/interrupts)
		n=$((n + ${c:-0}))
	done
	echo $n
}
expect_eq "VF0's MSI-X vectors" "$(ls /sys/bus/pci/devices/${VFS[0]}/msi_irqs | wc -l)" 1
irq=$(ls /sys/bus/pci/devices/${VFS[0]}/msi_irqs)
grep -Eq "^ *$irq:.* rmdev_igbvf\$" /proc/interrupts || fail "VF0's vector $irq is not rmdev_igbvf's: $(grep "^ *$irq:" /proc/interrupts)"
irqs_before=$(vf_irqs ${VFS[0]})
klog_mark
"$VM_TEST" vf-tx "$M0" "$M1" "$PFIF" $VF0_MAC || fail "frames through the mdev"
irqs_after=$(vf_irqs ${VFS[0]})
# Hundreds of rounds: the vector unmasked for them would fire for each.
[ $((irqs_after - irqs_before)) -lt 20 ] || fail "VF0 signalled $((irqs_after - irqs_before)) interrupts for transmit alone (its vector is to be masked while no round waits)"
note "VF0's vector $irq: $((irqs_after - irqs_before)) interrupts during the transmit checks"
# The refused ring stopped the queue, with one line in the log.
[ "$(klog_count 'transmit queue stopped')" -ge 1 ] || fail "no log line for the stopped queue"
# The receive side; VF1, the migration target, now gets its frames by a MAC
# of its own. VF0's frames are delivered from its vector's interrupts.
VF1_MAC=02:52:4d:56:46:31
ip link set "$PFIF" vf 1 mac $VF1_MAC
irqs_before=$(vf_irqs ${VFS[0]})
"$VM_TEST" vf-rx "$M0" "$M1" "$PFIF" $VF0_MAC $VF1_MAC || fail "frames received through the mdev"
irqs_after=$(vf_irqs ${VFS[0]})
# Dozens of batches, each delivered from its own interrupt (one stale
# cause left by the transmit checks fires once, at the first unmask).
[ $((irqs_after - irqs_before)) -ge 10 ] || fail "VF0 signalled $((irqs_after - irqs_before)) interrupts for the frames it received, expected one a batch at least"
note "VF0's vector $irq: $((irqs_after - irqs_before)) interrupts for the vendor's receive ring"
# The unreadable ring stopped the receive queue, with a line in the log.
[ "$(klog_count 'receive queue stopped')" -ge 1 ] || fail "no log line for the stopped receive queue"
# QEMU: the lab's multiboot guest as a minimal driver of the VF's transmit
# queue (guest/mmio-writer.c, NIC_DST) sends a numbered frame to the PF
# every 20 ms while it is live-migrated from a QEMU holding the VF0 mdev to
# one holding the VF1 mdev; the capture on the PF's netdev checks every
# frame's bytes, that none is duplicated or out of order, that the target
# goes on where the source stopped, and that none is lost.
note "QEMU: a guest sends frames through the VF0 mdev while it is live-migrated to the VF1 mdev"
pf_mac=$(cat /sys/class/net/$PFIF/address)
build_guest "$guest" -DBAR_REG=0x10 -DBAR_64=1 -DWORD=0x2900 -DSTEP=0x80 -DPAGES=0 \
	-DNIC_DST=0x${pf_mac//:/}ULL
python3 "$(dirname "$0")/qemu_vfio.py" migrate "$M0" "$M1" --kernel "$guest" --word 0x2900 --step 128 \
	--capture "$PFIF" || fail "frames through a live migration"
# Unbinding gives the vector back: MSI-X off on the VF again.
remove_all_mdevs
echo "${VFS[0]}" >/sys/bus/pci/drivers/rmdev_igbvf/unbind
[ -z "$(ls /sys/bus/pci/devices/${VFS[0]}/msi_irqs 2>/dev/null)" ] || fail "VF0 kept MSI-X vectors after the unbind"
grep -Eq "^ *$irq:.* rmdev_igbvf\$" /proc/interrupts && fail "vector $irq still rmdev_igbvf's after the unbind"
true
