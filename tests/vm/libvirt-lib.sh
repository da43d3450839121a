# SPDX-License-Identifier: GPL-2.0
# Helpers for the in-VM libvirt tests (sourced after lib.sh): libvirt
# started the lab's way (tools/lab-libvirt), domains built around the
# multiboot guest tests/vm/guest/mmio-writer.c, and what the tests read
# back from them.

VIRSH=(virsh -q -c qemu:///system)

# One virsh for a whole test (t-libvirt): vsh_start starts VIRSH's
# interactive shell, vsh CMD [ARG...] runs one command in it as
# "${VIRSH[@]}" CMD ARG... would (its output on stdout, its "error: ..."
# lines on stderr, status 1 when it failed), vsh_stop ends it. Measured in
# the lab on 2026-12-05: a virsh process takes 1.6 to 2.0 s in the lab VM
# alone whether it connects or not (92 % of it in the debug kernel, mapping
# its 60-odd libraries), several seconds more beside a second lab VM; on an
# open connection, list takes 18 ms, nodedev-list 0.6 s (libvirtd's work).
# t-libvirt's 31 commands in one virsh: 670 s -> 496 s beside a second VM.
#
# The shell reads its commands through readline, which echoes each after the
# prompt ("virsh # CMD") on stdout: TERM=dumb and a wide COLUMNS keep the
# echo that one plain line, INPUTRC=/dev/null keeps inputrc settings out.
# After each command vsh sends "echo MARKER" and an empty line: the
# command's output is what comes between its echo and the marker command's.
# The interactive shell has no exit status per command: a failed command is
# the "error: " line virsh prints for it (vshReportError), which comes
# before the marker (stderr unbuffered, one thread) into a file of its own
# (LC_ALL=C: that prefix untranslated). XDG_CACHE_HOME: virsh writes its
# history there on exit (the lab's root is read-only).
vsh_start() {
	VSH_DIR=$(mktemp -d /tmp/vsh.XXXXXX)
	coproc VSH_CO {
		INPUTRC=/dev/null TERM=dumb COLUMNS=100000 LC_ALL=C XDG_CACHE_HOME=$VSH_DIR \
			exec "${VIRSH[@]}" 2>>"$VSH_DIR/err"
	}
	VSH_PID=$VSH_CO_PID
	# Descriptors of our own: bash closes a coprocess's in pipelines.
	exec {VSH_OUT}<&"${VSH_CO[0]}" {VSH_IN}>&"${VSH_CO[1]}"
	eval "exec ${VSH_CO[0]}<&- ${VSH_CO[1]}>&-"
}
vsh() {
	local line= a marker got out= err=
	[ -n "${VSH_IN:-}" ] || fail "vsh: no virsh (vsh_start)"
	for a; do
		case "$a" in *[\'$'\n']*) fail "vsh: cannot quote '$a' for virsh's shell" ;; esac
		line+="${line:+ }'$a'"
	done
	marker=vsh-done-$RANDOM$RANDOM
	: >"$VSH_DIR/err"
	printf '%s\necho %s\n\n' "$line" "$marker" >&"$VSH_IN"
	IFS= read -r got <&"$VSH_OUT" || fail "vsh: virsh exited: $(cat "$VSH_DIR/err")"
	[ "$got" = "virsh # $line" ] || fail "vsh: virsh echoed '$got' for '$line'"
	while IFS= read -r got <&"$VSH_OUT"; do
		[ "$got" != "${marker}virsh # " ] || break
		out+=$got$'\n'
	done
	[ "$got" = "${marker}virsh # " ] || fail "vsh: virsh exited during '$line': $(cat "$VSH_DIR/err")"
	[[ $out == *"virsh # echo $marker"$'\n' ]] || fail "vsh: no marker command after '$line': $out"
	printf '%s' "${out%"virsh # echo $marker"$'\n'}"
	IFS= read -r -d '' err <"$VSH_DIR/err" || true
	printf '%s' "$err" >&2
	case "$err" in "error: "* | *$'\n'"error: "*) return 1 ;; esac
}
# vsh_stop: ends the shell (for cleanups: never fails).
vsh_stop() {
	[ -n "${VSH_IN:-}" ] || return 0
	exec {VSH_IN}>&- {VSH_OUT}<&-
	VSH_IN=
	wait "$VSH_PID" || true
	rm -rf "$VSH_DIR"
}
LAB_LIBVIRT=$RMDEV_REPO/tools/lab-libvirt
# Where libvirt keeps what the tests give it: a tmpfs of the guest, which
# QEMU (as libvirt-qemu) may read once libvirt labelled it.
LV_IMAGES=/var/lib/libvirt/images

# guest_image NAME [-DKEY=VALUE...]: builds the multiboot guest with those
# settings into $LV_IMAGES/NAME.elf (see mmio-writer.c).
guest_image() {
	local name=$1
	shift
	build_guest "$LV_IMAGES/$name.elf" "$@"
}

# The guest variants: the sample's memory in BAR2 (a counter and stride
# writes over 64 pages), the VF mdev's BAR0 (RDBAL1, a register the VF
# vendor forwards to the hardware, where the tests read it back: queue 0's
# is the vendor's emulation; 128-byte steps, the register's unit).
GUEST_SAMPLE=(-DBAR_REG=0x18 -DBAR_64=1 -DWORD=0 -DSTEP=1 -DPAGES=64)
# The same on the sample's 16k type (4 pages), which migrates faster.
GUEST_SAMPLE_16K=(-DBAR_REG=0x18 -DBAR_64=1 -DWORD=0 -DSTEP=1 -DPAGES=4)
GUEST_VF=(-DBAR_REG=0x10 -DBAR_64=1 -DWORD=0x2900 -DSTEP=0x80 -DPAGES=0)

# domain_xml [--words-cpu-check] NAME KERNEL UUID...: a domain (TCG,
# 64 MiB) booting KERNEL with the mdevs UUID... as vfio-pci hostdevs, the
# first in slot 4 of bus 0 (where the guest looks), and its serial port in
# a file.
#
# --words-cpu-check: at each QEMU start (start, restore, incoming
# migration), libvirt 11.3 verifies the guest CPU by reading every boolean
# property of the vCPU, one qom-get each (about 930 round trips, 14 to 16 s
# through the nested QEMU's monitor; QEMU 10.0 has no qom-list-get). This
# domain takes libvirt's other path, the CPUID words in 3 round trips, by
# hiding the capability that selects the first from it (<qemu:del
# capability='cpu-unavailable-features'/>, which libvirt calls a setting
# for experiments and marks the domain tainted for). The tests use it for
# the domains they start again and again; one domain of t-libvirt and the
# demo's keep libvirt's default (Documentation/lab.rst).
domain_xml() {
	local words=
	[ "$1" != --words-cpu-check ] || { words=1; shift; }
	local name=$1 kernel=$2 slot=4 u
	shift 2
	cat <<-XML
	<domain type='qemu'${words:+ xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'}>
	  <name>$name</name>
	  <memory unit='MiB'>64</memory>
	  <vcpu>1</vcpu>
	  <os>
	    <type arch='x86_64' machine='q35'>hvm</type>
	    <kernel>$kernel</kernel>
	  </os>
	  <devices>
	    <emulator>/usr/bin/qemu-system-x86_64</emulator>
	    <controller type='usb' model='none'/>
	    <serial type='file'>
	      <source path='$(serial_log "$name")'/>
	    </serial>
	XML
	for u in "$@"; do
		cat <<-XML
		    <hostdev mode='subsystem' type='mdev' model='vfio-pci'>
		      <source><address uuid='$u'/></source>
		      <address type='pci' domain='0x0000' bus='0x00' slot='$(printf '0x%02x' $slot)' function='0x0'/>
		    </hostdev>
		XML
		slot=$((slot + 1))
	done
	cat <<-XML
	    <memballoon model='none'/>
	  </devices>
	XML
	[ -z "$words" ] || cat <<-XML
	  <qemu:capabilities>
	    <qemu:del capability='cpu-unavailable-features'/>
	  </qemu:capabilities>
	XML
	echo "</domain>"
}

# serial NAME: what the domain's guest wrote to its serial port so far.
# serial_log NAME: the file the domain's serial port writes to.
serial_log() { printf '%s\n' "/var/log/libvirt/qemu/$1-serial.log"; }
serial() { cat "$(serial_log "$1")" 2>/dev/null || true; }

# wait_serial NAME TEXT [SECONDS]: the guest's serial output shows TEXT.
# Each look reads the file with a builtin and waits with nap: no process
# of its own (a fork and exec cost about half a second of CPU here, which
# a look five times a second would take from the domain it waits for).
wait_serial() {
	local i text f
	f=$(serial_log "$1")
	for i in $(seq $((${3:-60} * 5))); do
		text=
		if [ -f "$f" ]; then IFS= read -r -d '' text <"$f" || true; fi
		case "$text" in *"$2"*) return 0 ;; esac
		nap 0.2
	done
	fail "domain $1: no '$2' on its serial port within ${3:-60} s; it has: $(serial "$1" | tr '\n' '|')"
}

# qemu_log_clean NAME: QEMU's log of the domain has no vfio message.
qemu_log_clean() {
	local logf=/var/log/libvirt/qemu/$1.log
	[ -f "$logf" ] || fail "no QEMU log for $1"
	local msgs
	msgs=$(grep -i 'vfio' "$logf" | grep -v -- '-device' || true)
	[ -z "$msgs" ] || fail "QEMU's log of $1 has vfio messages: $msgs"
}

# domain_user NAME: the user the domain's QEMU runs as.
domain_user() {
	local pid
	pid=$(cat "/run/libvirt/qemu/$1.pid")
	ps -o user= -p "$pid"
}

# timed VAR CMD...: runs CMD, leaves its duration in ms in VAR.
timed() {
	local __var=$1 t0 t1
	shift
	t0=$(date +%s%N)
	"$@"
	t1=$(date +%s%N)
	printf -v "$__var" '%d' $(((t1 - t0) / 1000000))
}

# Two hosts of `tools/lab pair` take turns through files in PAIR_DIR (a
# directory of RMDEV_SHARE, which both see; empty it before a run: a file
# left by an earlier run would be taken as new).
# signal NAME [TEXT]: tells the other host NAME happened (with TEXT).
signal() { printf '%s\n' "${2:-}" >"$PAIR_DIR/.$1.tmp" && mv "$PAIR_DIR/.$1.tmp" "$PAIR_DIR/$1"; }
# await NAME [SECONDS]: waits for the other host's NAME; prints its TEXT.
# A host that fails leaves "failed" (cleanup), which ends the wait.
await() {
	local i
	# One look a second, without a fork (nap): the other host is busy.
	for i in $(seq "${2:-600}"); do
		if [ -f "$PAIR_DIR/$1" ]; then cat "$PAIR_DIR/$1"; return 0; fi
		[ -f "$PAIR_DIR/failed" ] && fail "the other host failed (waiting for $1)"
		nap 1
	done
	fail "the other host did not say '$1' within ${2:-600} s"
}
