// SPDX-License-Identifier: GPL-2.0

//! Frames through rmdev_igbvf's shadowed transmit queue
//! (`vendors/igbvf/tx.rs`), driven as a guest driver drives an 82576 VF:
//! this process maps its own memory into the mdev's type1 container,
//! programs a ring of advanced transmit descriptors there and rings the
//! tail doorbell. The frames go to the PF's MAC address, which QEMU's igb
//! switches to the PF: they are captured on the PF's netdev with an
//! `AF_PACKET` socket and compared byte for byte with what was sent, in
//! order, none missing, none extra. Then the refusals: buffers unmapped,
//! past their mapping, legacy or segmentation descriptors (completed, never
//! sent); a ring the device cannot read (the queue stops); memory unmapped
//! under the queue; frames queued while the device is stopped, migrated
//! with the queue to an mdev on another VF and sent from there; a reset and
//! a new user see no state of the last.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rmdev::vfio::Device;
use rmdev_logic::fsm::State;

use super::guest_memory::Buffer;
use super::{ctx, load_into, pattern, read_to_eof, TestResult, PAGE};

/// Transmit queue 0's registers (82576 VF BAR0).
const TDBAL: u64 = 0x3800;
const TDBAH: u64 = 0x3804;
const TDLEN: u64 = 0x3808;
const TDH: u64 = 0x3810;
const TDT: u64 = 0x3818;
const TXDCTL: u64 = 0x3828;
const ENABLE: u32 = 1 << 25;
/// Advanced data descriptor bits (82576 datasheet, 7.2.2.3).
const DTYP_DATA: u32 = 0x3 << 20;
const EOP: u32 = 1 << 24;
const IFCS: u32 = 1 << 25;
const RS: u32 = 1 << 27;
const DEXT: u32 = 1 << 29;
const TSE: u32 = 1 << 31;
const DD: u32 = 1;
/// The test's EtherType (IEEE local experimental).
const ETHERTYPE: u16 = 0x88b5;

/// The memory layout, in IOVA: the ring (16 descriptors), then 16 slots of
/// two pages for frames; nothing is mapped at `IOVA_NONE`.
const IOVA_RING: u64 = 0x10_0000;
const RING_DESCS: u32 = 16;
const IOVA_BUFS: u64 = 0x10_1000;
const SLOT: usize = 2 * PAGE;
const MAP_LEN: usize = PAGE + RING_DESCS as usize * SLOT;
const IOVA_NONE: u64 = 0x90_0000;

/// A capture of the test's frames on a network interface.
struct Capture(OwnedFd);

impl Capture {
    fn open(ifname: &str) -> Result<Capture, String> {
        let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
        // SAFETY: A NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(format!("no interface {ifname}"));
        }
        let proto = ETHERTYPE.to_be();
        // SAFETY: A plain socket call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            return Err(format!(
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: A new descriptor, ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: All-zero is a valid `sockaddr_ll`.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = index as i32;
        // SAFETY: `sa` is a `sockaddr_ll` of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(format!(
                "bind to {ifname}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 300_000,
        };
        // SAFETY: A `timeval` of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Capture(fd))
    }

    /// The frames that arrive until none came for 0.3 s (3 s at most).
    fn frames(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(3) {
            let mut buf = vec![0u8; 2048];
            // SAFETY: `buf` is writable for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                break;
            }
            buf.truncate(n as usize);
            out.push(buf);
        }
        out
    }
}

/// The MAC address of `ifname`.
fn mac_of(ifname: &str) -> Result<[u8; 6], String> {
    let path = format!("/sys/class/net/{ifname}/address");
    let s = ctx(std::fs::read_to_string(&path), &path)?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{path}: '{}'", s.trim()));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(mac)
}

/// Frame `seq` of `len` bytes to `dst`: the test's EtherType, a marker,
/// the number, then a pattern.
fn frame(dst: &[u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(dst);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(b"rmdev-tx");
    f.extend_from_slice(&seq.to_le_bytes());
    let rest = len - f.len();
    f.extend_from_slice(&pattern(u64::from(seq) + 1000, rest));
    f
}

/// The test's side of the queue: the mapped memory and where the tail is.
struct Queue<'a> {
    dev: &'a Device,
    mem: Buffer,
    tail: u32,
}

impl Queue<'_> {
    fn reg(&self, r: u64) -> Result<u32, String> {
        ctx(self.dev.read_reg(r), &format!("read register {r:#x}"))
    }

    fn set(&self, r: u64, v: u32) -> TestResult {
        ctx(self.dev.write_reg(r, v), &format!("write register {r:#x}"))
    }

    /// Programs the ring at `base` (disabled first), head and tail 0.
    fn program(&mut self, base: u64) -> TestResult {
        self.set(TXDCTL, 0)?;
        self.set(TDBAL, base as u32)?;
        self.set(TDBAH, (base >> 32) as u32)?;
        self.set(TDLEN, RING_DESCS * 16)?;
        self.set(TDH, 0)?;
        self.set(TDT, 0)?;
        self.set(TXDCTL, ENABLE)?;
        self.tail = 0;
        Ok(())
    }

    /// Writes descriptor `i` of the ring.
    fn desc(&mut self, i: u32, addr: u64, cmd: u32, olinfo: u32) {
        let at = (i * 16) as usize;
        let d = &mut self.mem.bytes()[at..at + 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&cmd.to_le_bytes());
        d[12..16].copy_from_slice(&olinfo.to_le_bytes());
    }

    fn status(&mut self, i: u32) -> u32 {
        let at = (i * 16 + 12) as usize;
        let b = &self.mem.bytes()[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Queues a frame of the given pieces (IOVA, length) and rings the
    /// doorbell; returns the descriptor that carries its completion.
    fn send(&mut self, pieces: &[(u64, usize)], extra_cmd: u32) -> Result<u32, String> {
        let total: usize = pieces.iter().map(|p| p.1).sum();
        let mut last = self.tail;
        for (k, &(addr, len)) in pieces.iter().enumerate() {
            let end = if k == pieces.len() - 1 { EOP | RS } else { 0 };
            let cmd = len as u32 | DTYP_DATA | DEXT | IFCS | end | extra_cmd;
            self.desc(self.tail, addr, cmd, (total as u32) << 14);
            last = self.tail;
            self.tail = (self.tail + 1) % RING_DESCS;
        }
        self.set(TDT, self.tail)?;
        Ok(last)
    }

    /// Copies `f` into frame slot `slot` at `offset` and sends it split
    /// into `parts` descriptors.
    fn send_frame(&mut self, f: &[u8], slot: usize, offset: usize, parts: usize) -> TestResult {
        let at = PAGE + slot * SLOT + offset;
        self.mem.bytes()[at..at + f.len()].copy_from_slice(f);
        let iova = IOVA_BUFS + (slot * SLOT + offset) as u64;
        let cut = f.len() / parts;
        let mut pieces = Vec::new();
        for p in 0..parts {
            let from = p * cut;
            let to = if p == parts - 1 { f.len() } else { from + cut };
            pieces.push((iova + from as u64, to - from));
        }
        let last = self.send(&pieces, 0)?;
        self.expect_done(last, "a frame")
    }

    /// Descriptor `i` is complete (DD) and the head caught up with the
    /// tail: the device serves the doorbell to its end.
    fn expect_done(&mut self, i: u32, what: &str) -> TestResult {
        ensure!(self.status(i) & DD != 0, "{what}: descriptor {i} not done");
        let head = self.reg(TDH)?;
        ensure!(head == self.tail, "{what}: TDH {head}, tail {}", self.tail);
        Ok(())
    }
}

/// Expects exactly `want` on the capture, in order.
fn expect_frames(cap: &Capture, want: &[Vec<u8>], what: &str) -> TestResult {
    let got = cap.frames();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        ensure!(
            g == w,
            "{what}: frame {i} differs from what was sent ({} bytes, sent {})",
            g.len(),
            w.len()
        );
    }
    ensure!(
        got.len() == want.len(),
        "{what}: {} frames on the PF, {} sent",
        got.len(),
        want.len()
    );
    Ok(())
}

/// Maps the test's memory into `dev`'s container: the ring writable
/// (the device writes completions), the frames read-only (it only reads
/// them).
fn map(dev: &Device, mem: &Buffer) -> TestResult {
    ctx(
        dev.map_dma(IOVA_RING, mem.addr(0), PAGE as u64, true),
        "map the ring",
    )?;
    ctx(
        dev.map_dma(IOVA_BUFS, mem.addr(PAGE), (MAP_LEN - PAGE) as u64, false),
        "map the buffers read-only",
    )
}

/// Frames queued while the source is stopped are not sent; migrated with
/// the queue into `target` (an mdev on another VF, the same memory mapped
/// into its container, as a VMM's guest RAM moves), they go from there when
/// it runs, and the target's head reaches the tail.
fn migrate_pending(q: &mut Queue<'_>, target: &Device, cap: &Capture, dst: &[u8; 6]) -> TestResult {
    ctx(q.dev.set_state(State::Stop.raw()), "SET STOP")?;
    let mut pending = Vec::new();
    for seq in 300..303u32 {
        let f = frame(dst, seq, 500 + seq as usize);
        let slot = seq as usize % RING_DESCS as usize;
        let at = PAGE + slot * SLOT;
        q.mem.bytes()[at..at + f.len()].copy_from_slice(&f);
        let iova = IOVA_BUFS + (slot * SLOT) as u64;
        q.send(&[(iova, f.len())], 0)?;
        pending.push(f);
    }
    expect_frames(cap, &[], "frames queued while stopped")?;
    let head = q.reg(TDH)?;
    ensure!(
        head != q.tail,
        "the stopped source moved its head to the tail"
    );
    let fd = ctx(q.dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no save FD")?;
    let mut stream = Vec::new();
    read_to_eof(&fd, &mut stream)?;
    drop(fd);
    ctx(q.dev.set_state(State::Stop.raw()), "SET STOP")?;
    map(target, &q.mem)?;
    load_into(target, &stream)?;
    ctx(
        target.set_state(State::Running.raw()),
        "SET RUNNING on the target",
    )?;
    expect_frames(cap, &pending, "pending frames sent by the target")?;
    let t = ctx(target.read_reg(TDH), "read the target's TDH")?;
    ensure!(t == q.tail, "the target's TDH {t}, tail {}", q.tail);
    ctx(q.dev.reset(), "reset the source")?;
    println!("  3 frames queued on the stopped source went from the target after the migration");
    Ok(())
}

/// `rmdev-vm-test vf-tx UUID OTHER-UUID PF-NETDEV`: OTHER-UUID is an mdev on
/// another VF, the migration target.
pub(crate) fn vf_tx(uuid: &str, other: &str, pf_if: &str) -> TestResult {
    let dst = mac_of(pf_if)?;
    let cap = Capture::open(pf_if)?;
    let dev = ctx(Device::open(uuid), "open the mdev")?;
    let mem = Buffer::new(MAP_LEN)?;
    map(&dev, &mem)?;
    let mut q = Queue {
        dev: &dev,
        mem,
        tail: 0,
    };
    q.program(IOVA_RING)?;

    // 40 frames of 60 to 1514 bytes, every fifth in three descriptors,
    // many across a page boundary; the ring wraps twice and more.
    let mut sent = Vec::new();
    for seq in 0..40u32 {
        let len = 60 + (seq as usize * 397) % 1455;
        let f = frame(&dst, seq, len);
        let parts = if seq % 5 == 4 { 3 } else { 1 };
        let offset = (seq as usize * 331) % PAGE;
        q.send_frame(&f, seq as usize % RING_DESCS as usize, offset, parts)?;
        sent.push(f);
    }
    expect_frames(&cap, &sent, "40 frames")?;
    println!("  40 frames sent through the mdev, all captured on {pf_if} as sent");
    let target = ctx(Device::open(other), "open the target mdev")?;
    migrate_pending(&mut q, &target, &cap, &dst)?;
    drop(target);
    q.program(IOVA_RING)?;

    // Refused, completed, never sent: a buffer nothing is mapped at, one
    // running past the end of the mapping, a legacy descriptor, a
    // segmentation request. The queue goes on.
    let end = IOVA_RING + MAP_LEN as u64;
    let last = q.send(&[(IOVA_NONE, 100)], 0)?;
    q.expect_done(last, "unmapped buffer")?;
    let last = q.send(&[(end - 50, 100)], 0)?;
    q.expect_done(last, "buffer past its mapping")?;
    let last = q.send(&[(IOVA_BUFS, 100)], TSE)?;
    q.expect_done(last, "segmentation")?;
    let i = q.tail;
    q.desc(i, IOVA_BUFS, 100 | EOP | RS | IFCS, 0);
    q.tail = (q.tail + 1) % RING_DESCS;
    q.set(TDT, q.tail)?;
    q.expect_done(i, "legacy descriptor")?;
    let good = frame(&dst, 100, 200);
    q.send_frame(&good, 0, 0, 1)?;
    expect_frames(&cap, &[good], "after the refused frames")?;
    println!("  unmapped, out-of-range, legacy and TSO descriptors: completed, not sent");

    // A ring where nothing is mapped: the queue stops.
    q.set(TXDCTL, 0)?;
    q.set(TDBAL, IOVA_NONE as u32)?;
    q.set(TDH, 0)?;
    q.set(TXDCTL, ENABLE)?;
    q.set(TDT, 1)?;
    ensure!(
        q.reg(TXDCTL)? & ENABLE == 0,
        "a ring the device cannot read: the queue still enabled"
    );
    // A ring that would end past the top of the address space is never
    // enabled (its last descriptor's address does not exist).
    q.set(TXDCTL, 0)?;
    q.set(TDBAH, u32::MAX)?;
    q.set(TDBAL, 0xffff_ff80)?;
    q.set(TDLEN, RING_DESCS * 16)?;
    q.set(TDH, 8)?;
    q.set(TXDCTL, ENABLE)?;
    q.set(TDT, 9)?;
    ensure!(
        q.reg(TXDCTL)? & ENABLE == 0,
        "a ring past the top of the address space: the queue enabled"
    );
    // Memory unmapped under the queue: the frames there are refused; once
    // mapped again they go.
    q.program(IOVA_RING)?;
    ctx(
        dev.unmap_dma(IOVA_BUFS, (MAP_LEN - PAGE) as u64),
        "unmap the buffers under the queue",
    )?;
    let f = frame(&dst, 200, 300);
    q.send_frame(&f, 1, 0, 1)?;
    expect_frames(&cap, &[], "buffers unmapped")?;
    ctx(
        dev.map_dma(IOVA_BUFS, q.mem.addr(PAGE), (MAP_LEN - PAGE) as u64, false),
        "map the buffers again",
    )?;
    let f = frame(&dst, 201, 300);
    q.send_frame(&f, 1, 0, 1)?;
    expect_frames(&cap, &[f], "buffers mapped again")?;
    println!(
        "  a ring nothing is mapped at stops the queue, one past the address space is refused; unmapped buffers are not sent"
    );

    // A reset forgets the queue; so does closing the device.
    ctx(dev.reset(), "VFIO_DEVICE_RESET")?;
    for r in [TDBAL, TDLEN, TDT, TXDCTL] {
        ensure!(q.reg(r)? == 0, "register {r:#x} after a reset");
    }
    q.program(IOVA_RING)?;
    drop(q);
    drop(dev);
    let dev = ctx(Device::open(uuid), "open the mdev again")?;
    for r in [TDBAL, TDLEN, TDT, TXDCTL] {
        let v = ctx(dev.read_reg(r), "read")?;
        ensure!(v == 0, "register {r:#x} for the next user: {v:#x}");
    }
    expect_frames(&cap, &[], "after reset and close")?;
    println!("  a reset and the next user see no transmit state");
    Ok(())
}
