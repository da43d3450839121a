#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""QEMU as a real VFIO client of rmdev mdevs, driven over QMP as an operator
(or libvirt) would: nested QEMU processes in the lab VM, each with one mdev as
a vfio-pci device.

    qemu_vfio.py migrate SRC_UUID DST_UUID [--uri tcp|file:PATH] [--downtime MS]
                 [--switchover-bandwidth BYTES_PER_S]
                 [--kernel GUEST [--word OFFSET --step N] --pause-target [--dma-page ADDR]]
                 [--capture IFACE] [--iommufd] [--expect-failure]
    qemu_vfio.py restore DST_UUID FILE      (a fresh QEMU -incoming from FILE)
    qemu_vfio.py attach UUID               (realize, reset, quit)
    qemu_vfio.py bench (--device SRC_UUID DST_UUID | --ram-mb N)
                 (a timed migration for make bench: prints one JSON line)

Every QEMU's stderr is kept; a line mentioning vfio fails the command (QEMU
logs vfio errors and warnings there). The devices keep QEMU's default
enable-migration=auto: QEMU migrates them only because they offer device
dirty logging. --iommufd attaches them through an iommufd object instead of
a type1 container. Prints QEMU's own query-migrate figures. --capture
checks the numbered frames a guest built with NIC_DST sends through an
igbvf mdev while it migrates, captured on IFACE (the PF's netdev): every
frame's bytes, no duplicate and none out of order, frames from the target
after the switch-over, and reports the frames lost.
Exit status: 0 as expected, 1 otherwise.
"""

import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

QEMU = "qemu-system-x86_64"
# The q35 PCI slot of the vfio-pci device (guest/mmio-writer.c uses it).
SLOT = 4
# Where guest/mmio-writer.c maps BAR2.
BAR2_ADDR = 0xD0000000


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


class Qemu:
    """One QEMU process with a QMP socket."""

    def __init__(self, name, uuid, workdir, incoming=None, kernel=None, paused=False,
                 ram_file=None, ram_mb=64, iommufd=False, serial=False):
        self.name = name
        self.dir = workdir
        self.log_path = os.path.join(workdir, f"{name}.log")
        qmp_path = os.path.join(workdir, f"{name}.qmp")
        machine = "q35"
        args = [QEMU, "-m", str(ram_mb), "-nodefaults", "-display", "none", "-accel", "tcg",
                "-qmp", f"unix:{qmp_path},server=on,wait=off"]
        if uuid:
            backend = ""
            if iommufd:
                args += ["-object", "iommufd,id=iommufd0"]
                backend = "iommufd=iommufd0,"
            args += [
                "-device",
                f"vfio-pci,sysfsdev=/sys/bus/mdev/devices/{uuid},{backend}"
                f"bus=pcie.0,addr={SLOT:#x},id=dev0",
            ]
        if ram_file:
            # Guest RAM in a file the caller filled: migrated byte for byte.
            args += ["-object", f"memory-backend-file,id=ram0,size={ram_mb}M,"
                     f"mem-path={ram_file},share=on"]
            machine += ",memory-backend=ram0"
        args += ["-M", machine]
        if kernel:
            args += ["-kernel", kernel]
        if serial:
            # The guest's serial port (its reports, guest/mmio-writer.c).
            # Only where asked: the BIOS then writes to it too, which
            # delays the guest's start.
            self.serial_path = os.path.join(workdir, f"{name}.serial")
            args += ["-serial", f"file:{self.serial_path}"]
        if paused:
            args += ["-S"]
        if incoming:
            args += ["-incoming", incoming]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.qmp = self._connect(qmp_path)
        self.buf = b""
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _connect(self, path):
        for _ in range(600):
            if self.proc.poll() is not None:
                fail(f"{self.name}: QEMU exited ({self.proc.returncode}): {self.log_text()}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                return s
            except OSError:
                time.sleep(0.1)
        fail(f"{self.name}: no socket {path}")

    def _read(self):
        while b"\n" not in self.buf:
            try:
                chunk = self.qmp.recv(65536)
            except OSError as e:
                chunk = b""
                print(f"{self.name}: QMP: {e}", file=sys.stderr)
            if not chunk:
                time.sleep(0.5)
                fail(f"{self.name}: QMP closed (QEMU exit {self.proc.poll()}): {self.log_text()}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.qmp.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError(f"{self.name}: {name}: {r['error'].get('desc')}")
            # An event: skip.

    def read_word(self, addr):
        """A 32-bit read of guest-physical memory (through the device's BAR
        for a BAR address), with the monitor's xp."""
        out = self.cmd("human-monitor-command", **{"command-line": f"xp /1wx {addr:#x}"})
        try:
            return int(out.split(":")[1].split()[0], 16)
        except (IndexError, ValueError):
            # "Cannot access memory": nothing mapped there (yet).
            return None

    def quit(self):
        try:
            self.cmd("quit")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def serial_text(self):
        try:
            with open(self.serial_path) as f:
                return f.read()
        except (AttributeError, OSError):
            return ""

    def vfio_lines(self):
        return [l for l in self.log_text().splitlines() if "vfio" in l.lower()]


# The frames of guest/mmio-writer.c built with NIC_DST.
ETH_P_RMDEV = 0x88B5
FRAME_LEN = 114
PACKET_OUTGOING = 4


class SeqCapture(threading.Thread):
    """The guest's numbered frames arriving on a network interface, with
    the time each arrived."""

    def __init__(self, iface):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                  socket.htons(ETH_P_RMDEV))
        self.sock.bind((iface, 0))
        self.sock.settimeout(0.2)
        self.frames = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            if addr[2] != PACKET_OUTGOING:
                self.frames.append((time.time(), data))

    def stop(self):
        self.done.set()
        self.join()
        self.sock.close()

    def seqs_after(self, t):
        return sum(1 for at, _ in self.frames if at > t)

    def check(self, started_at, switched_at):
        """Fails on a damaged, duplicated or reordered frame, or if frames
        did not flow before, during and after the migration; prints what
        arrived and what was lost."""
        seqs = []
        for at, f in self.frames:
            if len(f) < FRAME_LEN or f[14:18] != b"RMDV":
                fail(f"a frame that is not the guest's: {f[:32].hex()}")
            seq = struct.unpack_from("<I", f, 18)[0]
            want = bytes((seq * 7 + k) & 0xFF for k in range(22, FRAME_LEN))
            if len(f) != FRAME_LEN or f[22:] != want:
                fail(f"frame {seq} damaged: {len(f)} bytes, {f.hex()}")
            seqs.append(seq)
        if not seqs:
            fail("no frame captured")
        for a, b in zip(seqs, seqs[1:]):
            if b <= a:
                fail(f"frame {b} after frame {a}: duplicated or out of order")
        have = set(seqs)
        lost = [s for s in range(seqs[0], seqs[-1] + 1) if s not in have]
        before = sum(1 for at, _ in self.frames if at <= started_at)
        during = sum(1 for at, _ in self.frames if started_at < at <= switched_at)
        after = len(seqs) - before - during
        print(f"  {len(seqs)} frames {seqs[0]}..{seqs[-1]} captured, every one as sent and in "
              f"order: {before} before the migration, {during} during it, {after} after it "
              f"(from the target); lost: {len(lost)}"
              f"{' ' + str(lost[:20]) if lost else ''}")
        if min(before, during, after) < 5:
            fail(f"frames before, during and after the migration: {before}, {during}, {after}")
        return lost


def check_logs(*qemus, allow=None):
    bad = [f"{q.name}: {l}" for q in qemus for l in q.vfio_lines()
           if not (allow and re.search(allow, l))]
    if bad:
        fail("vfio lines in QEMU's log:\n  " + "\n  ".join(bad))


def wait_migration(q, timeout):
    start = time.time()
    while time.time() - start < timeout:
        info = q.cmd("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.5)
    info = q.cmd("query-migrate")
    fail(f"migration still {info.get('status')} after {timeout} s: {json.dumps(info)}")


def report(info, what):
    vfio = info.get("vfio", {}).get("transferred")
    ram = info.get("ram", {})
    print(f"  {what}: status {info.get('status')}, vfio.transferred {vfio} bytes, "
          f"downtime {info.get('downtime')} ms, total-time {info.get('total-time')} ms, "
          f"ram.transferred {ram.get('transferred')} bytes, "
          f"dirty-sync-count {ram.get('dirty-sync-count')}")


def migrate(args):
    work = tempfile.mkdtemp(prefix="rmdev-qemu-")
    if args.uri == "tcp":
        uri = "tcp:127.0.0.1:4444"
        dst = Qemu("target", args.dst, work, incoming=uri, kernel=args.kernel,
                   paused=args.pause_target, iommufd=args.iommufd,
                   serial=bool(args.capture))
    else:
        uri = args.uri
        dst = None
    src = Qemu("source", args.src, work, kernel=args.kernel, iommufd=args.iommufd,
               serial=bool(args.capture))
    if args.downtime:
        src.cmd("migrate-set-parameters", **{"downtime-limit": args.downtime})
    if args.switchover_bandwidth:
        src.cmd("migrate-set-parameters",
                **{"avail-switchover-bandwidth": args.switchover_bandwidth})
    word = BAR2_ADDR + args.word
    capture = SeqCapture(args.capture) if args.capture else None
    if capture:
        capture.start()
    if args.kernel:
        # The guest keeps writing the device: wait until the word changes.
        # Its first value may be what the device held before the guest
        # started (a test's fill pattern), so only a changed value is
        # known to be the guest's.
        deadline = time.time() + 300
        # Read once the BAR is mapped: a change from "nothing mapped yet"
        # would take what the device held before for the guest's value.
        while (first := src.read_word(word)) is None:
            if time.time() > deadline:
                fail("the device's BAR was never mapped")
            time.sleep(0.5)
        while (before := src.read_word(word)) == first:
            if time.time() > deadline:
                fail("the guest never wrote the device")
            time.sleep(0.5)
        # Slow the migration down at first, so pre-copy lasts a while.
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 4 << 20})
    if capture:
        # Frames flowing before the migration starts.
        deadline = time.time() + 120
        while len(capture.frames) < 10:
            if time.time() > deadline:
                fail(f"{len(capture.frames)} frames from the guest in 120 s")
            time.sleep(0.2)
    if args.before:
        # Both QEMUs have started (and reset their devices): set the
        # device up behind QEMU's back, as a test fixture.
        subprocess.run(args.before, shell=True, check=True)
    started_at = time.time()
    src.cmd("migrate", uri=uri)
    if args.kernel:
        time.sleep(3)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    info = wait_migration(src, 600)
    switched_at = time.time()
    report(info, "source")
    if args.kernel:
        after = src.read_word(word)
        writes = (after - before) // args.step
        print(f"  the guest wrote the device {writes} times during the migration")
        if writes < 10:
            fail(f"only {writes} guest writes during the migration")
    ok = info.get("status") == "completed"
    if dst:
        deadline = time.time() + 120
        if ok:
            want = "paused" if args.pause_target else "running"
            while dst.cmd("query-status").get("status") != want:
                if time.time() > deadline:
                    fail(f"target not {want} after the migration")
                time.sleep(0.2)
        else:
            while dst.proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
    if ok and dst and args.dma_page:
        check_dma(dst, args.dma_page)
    if capture:
        # The target goes on sending: a few seconds of its frames.
        deadline = time.time() + 60
        while capture.seqs_after(switched_at) < 20 and time.time() < deadline:
            time.sleep(0.5)
        capture.stop()
        for q in (q for q in (src, dst) if q):
            if "rmdev-guest: stuck" in q.serial_text():
                fail(f"{q.name}: the device did not complete a descriptor: {q.serial_text()}")
        if ok:
            lost = capture.check(started_at, switched_at)
            if lost:
                fail(f"{len(lost)} frames lost in the migration")
    if args.expect_failure:
        if ok:
            fail("the migration completed; expected the target to refuse it")
        status = src.cmd("query-status").get("status")
        if status != "running":
            fail(f"source QEMU is {status} after the failed migration, not running")
        print(f"  refused as expected: {info.get('error-desc')}; source QEMU running")
        src.quit()
        if dst:
            dst.quit()
            print("  target QEMU: " + " | ".join(dst.log_text().strip().splitlines()[-3:]))
        # The source saw a failed migration, not a device error. When the
        # target drops the connection while the source is still sending the
        # device's state, QEMU reports the stream's write error (-EIO, from
        # its socket file, not from the device) against the vfio section;
        # only that line is allowed, and only when the error says the
        # connection broke.
        allow = None
        if re.search(r"Connection reset by peer|Broken pipe", info.get("error-desc") or ""):
            allow = r"^qemu-system-x86_64: failed to save SaveStateEntry with id\(name\): \d+\([0-9a-f:.]+/vfio\): -5$"
        check_logs(src, allow=allow)
        return
    if not ok:
        fail(f"migration {info.get('status')}: {info.get('error-desc')}")
    src.quit()
    if dst:
        dst.quit()
        check_logs(src, dst)
    else:
        check_logs(src)


def check_dma(q, page):
    """The paused target of a guest/mmio-writer.c built with DMA_PAGE: the
    word the device last copied into guest memory arrived. The vCPU never
    writes it, so it only reaches the target if the source's device dirty
    log reported the page after QEMU last sent it."""
    b, x, z = q.read_word(page), q.read_word(BAR2_ADDR), q.read_word(BAR2_ADDR + 8)
    print(f"  target: guest page {page:#x} holds {b}, device memory {x} (written) "
          f"and {z} (after the copy)")
    if None in (b, x, z) or z < 10:
        fail(f"the guest did not run its DMA loop: page {b}, device {x}, {z}")
    if not (z <= b <= x and x - z <= 1):
        fail(f"the page the device wrote is stale on the target: {b}, expected "
             f"{z} to {x} (the device's dirty log did not reach QEMU)")


def restore(args):
    work = tempfile.mkdtemp(prefix="rmdev-qemu-")
    dst = Qemu("restore", args.dst, work, incoming=f"file:{args.file}")
    deadline = time.time() + 300
    while True:
        status = dst.cmd("query-status").get("status")
        if status == "running":
            break
        info = dst.cmd("query-migrate")
        if info.get("status") == "failed" or time.time() > deadline:
            fail(f"restore from {args.file}: {status}, {json.dumps(info)}: {dst.log_text()}")
        time.sleep(0.2)
    print(f"  restored from {args.file}: target running")
    dst.quit()
    check_logs(dst)


def attach(args):
    work = tempfile.mkdtemp(prefix="rmdev-qemu-")
    q = Qemu("attach", args.uuid, work)
    q.cmd("system_reset")
    time.sleep(1)
    if args.during:
        # While QEMU holds the mdev: what other users of it see.
        done = subprocess.run(args.during, shell=True)
        if done.returncode != 0:
            q.quit()
            fail(f"while QEMU held {args.uuid}: '{args.during}' exited {done.returncode}")
    status = q.cmd("query-status").get("status")
    q.quit()
    check_logs(q)
    if status != "running":
        fail(f"QEMU holding {args.uuid} is {status}, not running, after the reset")
    print(f"  attached, reset and quit: {status}; no vfio line in QEMU's log")


def bench(args):
    """One migration over TCP on 127.0.0.1 with no bandwidth limit: either
    of an mdev (the source's guest RAM, 64 MiB, left as QEMU zeroes it) or
    of no device and N MiB of guest RAM filled with non-zero bytes (the
    reference). Prints QEMU's own figures as one JSON line."""
    work = tempfile.mkdtemp(prefix="rmdev-bench-")
    uri = "tcp:127.0.0.1:4445"
    if args.device:
        src_uuid, dst_uuid = args.device
        dst = Qemu("target", dst_uuid, work, incoming=uri)
        src = Qemu("source", src_uuid, work)
    else:
        files = [os.path.join(work, f"{n}.ram") for n in ("source", "target")]
        block = os.urandom(1 << 20)
        for path in files:
            with open(path, "wb") as f:
                for _ in range(args.ram_mb):
                    f.write(block)
        dst = Qemu("target", None, work, incoming=uri, ram_file=files[1], ram_mb=args.ram_mb)
        src = Qemu("source", None, work, ram_file=files[0], ram_mb=args.ram_mb)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    src.cmd("migrate", uri=uri)
    info = wait_migration(src, 1200)
    if info.get("status") != "completed":
        fail(f"migration {info.get('status')}: {info.get('error-desc')}")
    src.quit()
    dst.quit()
    check_logs(src, dst)
    print(json.dumps({
        "figure": "qemu-migration", "what": "device" if args.device else "ram",
        "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
        "setup_ms": info.get("setup-time"),
        "vfio_bytes": info.get("vfio", {}).get("transferred", 0),
        "ram_bytes": info.get("ram", {}).get("transferred", 0),
        "ram_normal_pages": info.get("ram", {}).get("normal", 0),
    }))
    for path in os.listdir(work):
        if path.endswith(".ram"):
            os.unlink(os.path.join(work, path))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("migrate")
    m.add_argument("src")
    m.add_argument("dst")
    m.add_argument("--uri", default="tcp")
    m.add_argument("--downtime", type=int, help="downtime-limit, ms")
    m.add_argument("--switchover-bandwidth", type=int,
                   help="avail-switchover-bandwidth, bytes/s")
    m.add_argument("--kernel", help="a guest kernel for both QEMUs (guest/mmio-writer.c)")
    m.add_argument("--word", type=lambda v: int(v, 0), default=0,
                   help="the offset in the guest's BAR of the word it writes (WORD)")
    m.add_argument("--step", type=int, default=1,
                   help="what each of the guest's writes adds to the word (STEP)")
    m.add_argument("--capture", metavar="IFACE",
                   help="check the guest's frames (NIC_DST) captured on IFACE")
    m.add_argument("--pause-target", action="store_true",
                   help="the target stays paused (-S) after the migration")
    m.add_argument("--dma-page", type=lambda v: int(v, 0),
                   help="with --kernel and --pause-target: the guest's DMA page to check")
    m.add_argument("--iommufd", action="store_true",
                   help="attach the devices through iommufd, not a type1 container")
    m.add_argument("--expect-failure", action="store_true")
    m.add_argument("--before", help="a shell command run after both QEMUs started, before migrating")
    r = sub.add_parser("restore")
    r.add_argument("dst")
    r.add_argument("file")
    a = sub.add_parser("attach")
    a.add_argument("uuid")
    a.add_argument("--during", help="a shell command run while QEMU holds the mdev")
    b = sub.add_parser("bench")
    g = b.add_mutually_exclusive_group(required=True)
    g.add_argument("--device", nargs=2, metavar=("SRC", "DST"))
    g.add_argument("--ram-mb", type=int)
    args = p.parse_args()
    if getattr(args, "capture", None) and not args.kernel:
        p.error("--capture needs --kernel (a guest built with NIC_DST sends the frames)")
    {"migrate": migrate, "restore": restore, "attach": attach, "bench": bench}[args.what](args)


if __name__ == "__main__":
    main()
