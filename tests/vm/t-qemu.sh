# SPDX-License-Identifier: GPL-2.0
# QEMU 10 as a real VFIO client (tests/vm/qemu_vfio.py drives nested QEMU
# processes over QMP): an rmdev_sample mdev attaches, resets and quits with
# no vfio line in QEMU's log (and while QEMU holds it, the rmdev tool names
# QEMU and opens nothing: tests/vm/rmdev-in-use); live migrations between two QEMUs over TCP on
# 127.0.0.1 complete for the flag sets 7 (pre-copy), 3 and 1, with QEMU's
# own figures printed and the target's memory equal to the source's (read
# through VFIO after the QEMUs exit); a guest keeps writing the device
# through QEMU during pre-copy and has the device copy what it wrote into a
# page of guest memory the vCPU never writes, on a type1 container and on
# iommufd: the page arrives on the target only if the device's dirty log
# reports it (guest/mmio-writer.c with DMA_PAGE, built here with the host's
# gcc); the devices keep QEMU's default enable-migration=auto, which
# migrates them only because they offer dirty logging; a migration to a
# file restores onto another
# mdev in a fresh QEMU; a target that refuses the stream (another format
# version) fails the migration cleanly with the source still running.
. "$(dirname "$0")/lib.sh"

QV=(python3 "$(dirname "$0")/qemu_vfio.py")
# end_round: no QEMU and no mdev left (the sample stays loaded).
end_round() {
	pkill -f qemu-system-x86_64 2>/dev/null || true
	sleep 1
	remove_all_mdevs
}
cleanup() {
	end_round
	unload_sample
}
trap cleanup EXIT
[ -x "$VM_TEST" ] || fail "$VM_TEST not built"
command -v qemu-system-x86_64 >/dev/null || fail "no qemu-system-x86_64"

# new_mdev TYPE: creates an mdev of the sample's TYPE, prints its UUID.
new_mdev() {
	local u
	u=$(new_uuid)
	sysfs_write "$SAMPLE_TYPES/rmdev_sample-$1/create" "$u"
	echo "$u"
}
remove_mdev() { sysfs_write "/sys/bus/mdev/devices/$1/remove" 1; }

# One load of the sample: a new flag set applies to the mdevs created after
# it (each unload waits seconds for the kobject releases the debug kernel
# delays).
load_sample migration_flags=7
for flags in 7 3 1; do
	sysfs_write /sys/module/rmdev_sample/parameters/migration_flags $flags
	src=$(new_mdev 4m) dst=$(new_mdev 4m)
	"$VM_TEST" fill "$src" 1
	"$VM_TEST" fill "$dst" 2
	if [ $flags = 7 ]; then
		# While QEMU holds it, the rmdev tool's view (tests/vm/rmdev-in-use).
		"${QV[@]}" attach "$src" --during "$(dirname "$0")/rmdev-in-use $src $dst" || fail "attach"
	fi
	if [ $flags = 7 ]; then
		note "flag set $flags: live migration over TCP, default parameters"
		"${QV[@]}" migrate "$src" "$dst" || fail "flag set $flags: migration"
	else
		# Without pre-copy the whole device state (4 MiB) moves while the
		# VM is stopped. QEMU predicts that time from the bandwidth it
		# measured while sending the idle guest's few dirty RAM pages
		# (well under 1 MB/s here), so the prediction never falls under
		# the default 300 ms downtime limit and the migration never ends.
		# Telling QEMU the bandwidth loopback really has (a conservative
		# 128 MiB/s) lets it switch over; the downtime it then reports is
		# the real one.
		note "flag set $flags: live migration over TCP, avail-switchover-bandwidth 128 MiB/s"
		"${QV[@]}" migrate "$src" "$dst" --switchover-bandwidth $((128 << 20)) ||
			fail "flag set $flags: migration"
	fi
	"$VM_TEST" compare "$src" "$dst" || fail "flag set $flags: target memory"
	remove_mdev "$dst"
	if [ $flags = 7 ]; then
		# The guest writes the device and has the device copy what it
		# wrote into a page of guest memory the vCPU never writes: that
		# page reaches the target only through the device's dirty log.
		guest=$(mktemp /tmp/mmio-writer.XXXXXX)
		build_guest "$guest" -DDMA_PAGE=0x300000 -DPAGES=0
		for backend in type1 iommufd; do
			note "flag set 7, $backend: a guest keeps writing the device, and the device guest memory, during pre-copy"
			dst2=$(new_mdev 4m)
			"$VM_TEST" fill "$dst2" 3
			opt=()
			[ $backend = iommufd ] && opt=(--iommufd)
			# The target stays paused, so its memory is the migrated state.
			"${QV[@]}" migrate "$src" "$dst2" --kernel "$guest" --pause-target \
				--dma-page 0x300000 "${opt[@]}" || fail "$backend: migration while the guest writes"
			"$VM_TEST" compare "$src" "$dst2" || fail "$backend: target memory after writes during pre-copy"
			remove_mdev "$dst2"
		done
		rm -f "$guest"

		note "flag set 7: migration to a file, restored onto another mdev by a fresh QEMU"
		file=$(mktemp /tmp/rmdev-migration.XXXXXX)
		"${QV[@]}" migrate "$src" - --uri "file:$file" || fail "migration to a file"
		dst3=$(new_mdev 4m)
		"$VM_TEST" fill "$dst3" 4
		"${QV[@]}" restore "$dst3" "$file" || fail "restore from the file"
		"$VM_TEST" compare "$src" "$dst3" || fail "restored memory"
		remove_mdev "$dst3"
		rm -f "$file"

		note "flag set 7: a target of another format version refuses the stream"
		echo 2 >/sys/module/rmdev_sample/parameters/format_version
		other=$(new_mdev 4m)
		echo 1 >/sys/module/rmdev_sample/parameters/format_version
		expect_eq "target's migration_version" "$(cat /sys/bus/mdev/devices/$other/migration_version)" "rmdev_sample:4m:2.0"
		"$VM_TEST" fill "$src" 5
		"${QV[@]}" migrate "$src" "$other" --expect-failure || fail "refused migration"
		"$VM_TEST" compare-pattern "$src" 5 || fail "source memory after the refused migration"
	fi
	end_round
done
cleanup
trap - EXIT
