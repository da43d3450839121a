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
//! a new user see no state of the last. And the interrupts: the mdev's
//! MSI-X as the 82576 VF has it (capability, BAR3, three vectors), the
//! transmit completion raised on the vector IVAR0 routes it to, with the
//! VF's cause, enable, auto-clear and auto-mask registers, across the
//! migration too; and the mailbox, where the vendor answers as the PF:
//! the VF's MAC address the operator set, requests refused.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rmdev::vfio::Device;
use rmdev_logic::fsm::State;

use rmdev::vfio;

use super::guest_memory::Buffer;
use super::{
    ctx, errno_name, eventfd_take, load_into, new_eventfd, pattern, read_to_eof, TestResult, PAGE,
};

/// Transmit queue 0's registers (82576 VF BAR0).
const TDBAL: u64 = 0x3800;
const TDBAH: u64 = 0x3804;
const TDLEN: u64 = 0x3808;
pub(crate) const TDH: u64 = 0x3810;
pub(crate) const TDT: u64 = 0x3818;
pub(crate) const TXDCTL: u64 = 0x3828;
pub(crate) const ENABLE: u32 = 1 << 25;
/// Advanced data descriptor bits (82576 datasheet, 7.2.2.3).
pub(crate) const DTYP_DATA: u32 = 0x3 << 20;
pub(crate) const EOP: u32 = 1 << 24;
pub(crate) const IFCS: u32 = 1 << 25;
pub(crate) const RS: u32 = 1 << 27;
pub(crate) const DEXT: u32 = 1 << 29;
const TSE: u32 = 1 << 31;
pub(crate) const DD: u32 = 1;
/// The interrupt registers (82576 datasheet 8.9; VF view).
const EICS: u64 = 0x1520;
pub(crate) const EIMS: u64 = 0x1524;
pub(crate) const EIMC: u64 = 0x1528;
pub(crate) const EIAC: u64 = 0x152c;
const EIAM: u64 = 0x1530;
pub(crate) const EICR: u64 = 0x1580;
pub(crate) const IVAR0: u64 = 0x1700;
const IVAR_MISC: u64 = 0x1740;
/// The mailbox (82576 datasheet 7.8.2.9; Linux's igbvf mbx.h).
pub(crate) const V2PMAILBOX: u64 = 0x0c40;
pub(crate) const VMBMEM: u64 = 0x0800;
pub(crate) const MBX_REQ: u32 = 1 << 0;
pub(crate) const MBX_VFU: u32 = 1 << 2;
pub(crate) const MBX_PFSTS: u32 = 1 << 4;
pub(crate) const MBX_PFACK: u32 = 1 << 5;
pub(crate) const VF_RESET: u32 = 0x01;
const VF_SET_MAC_ADDR: u32 = 0x02;
const VF_SET_MULTICAST: u32 = 0x03;
pub(crate) const MSG_ACK: u32 = 1 << 31;
pub(crate) const MSG_NACK: u32 = 1 << 30;
const MSG_CTS: u32 = 1 << 29;
const VF_SET_VLAN: u32 = 0x04;
/// IVAR0 routing transmit queue 0 (byte 1) to vector 1, valid.
const TX_TO_VECTOR1: u32 = 0x81 << 8;
/// The MSI-X interrupt index and the VF's BAR3 region.
pub(crate) const MSIX_INDEX: u32 = 2;
const BAR3: u32 = 3;
/// The test's EtherType (IEEE local experimental).
pub(crate) const ETHERTYPE: u16 = 0x88b5;

/// The memory layout, in IOVA: the ring (16 descriptors), then 16 slots of
/// two pages for frames; nothing is mapped at `IOVA_NONE`. The receive
/// test (`vf_rx.rs`) uses it too.
pub(crate) const IOVA_RING: u64 = 0x10_0000;
pub(crate) const RING_DESCS: u32 = 16;
pub(crate) const IOVA_BUFS: u64 = 0x10_1000;
pub(crate) const SLOT: usize = 2 * PAGE;
pub(crate) const MAP_LEN: usize = PAGE + RING_DESCS as usize * SLOT;
pub(crate) const IOVA_NONE: u64 = 0x90_0000;
/// Where the pin-cache test maps its frames' memory, and how many pages
/// it sends from: more than the framework keeps pinned idle
/// (`rmdev::dma::CACHE_PAGES`, 512 pages).
const IOVA_MANY: u64 = 0x100_0000;
const MANY_PAGES: usize = 600;
const CACHE_PAGES: u64 = 512;

/// A capture of the test's frames on a network interface.
struct Capture(OwnedFd);

/// An `AF_PACKET` raw socket bound to `ifname` for frames of EtherType
/// `ethertype` (0: it receives none, and only sends).
pub(crate) fn packet_socket(ifname: &str, ethertype: u16) -> Result<OwnedFd, String> {
    let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: A NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("no interface {ifname}"));
    }
    let proto = ethertype.to_be();
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
    Ok(fd)
}

/// Sets the socket-level option `opt` of `fd` to `v`.
pub(crate) fn set_socket_opt<T>(fd: &OwnedFd, opt: i32, v: &T) -> TestResult {
    // SAFETY: `v` is readable for the size given; the kernel only reads it
    // (and refuses a size the option does not take).
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    ensure!(
        r == 0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A receive on `fd` gives up after `ms` milliseconds (under 1000).
pub(crate) fn set_recv_timeout(fd: &OwnedFd, ms: u32) -> TestResult {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::from(ms) * 1000,
    };
    set_socket_opt(fd, libc::SO_RCVTIMEO, &tv)
}

impl Capture {
    fn open(ifname: &str) -> Result<Capture, String> {
        let fd = packet_socket(ifname, ETHERTYPE)?;
        set_recv_timeout(&fd, 300)?;
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
pub(crate) fn mac_of(ifname: &str) -> Result<[u8; 6], String> {
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
pub(crate) fn frame(dst: &[u8; 6], seq: u32, len: usize) -> Vec<u8> {
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

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("MAC {s}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("MAC {s}: not six bytes"))
}

/// Reads register `r` of the mdev's BAR0.
pub(crate) fn read_reg(dev: &Device, r: u64) -> Result<u32, String> {
    ctx(dev.read_reg(r), &format!("read register {r:#x}"))
}

/// Writes register `r` of the mdev's BAR0.
pub(crate) fn write_reg(dev: &Device, r: u64, v: u32) -> TestResult {
    ctx(dev.write_reg(r, v), &format!("write register {r:#x}"))
}

/// Programs `dev`'s transmit queue 0 with a ring of `RING_DESCS` at
/// `base` (disabled first), head and tail 0.
pub(crate) fn program_tx(dev: &Device, base: u64) -> TestResult {
    write_reg(dev, TXDCTL, 0)?;
    write_reg(dev, TDBAL, base as u32)?;
    write_reg(dev, TDBAH, (base >> 32) as u32)?;
    write_reg(dev, TDLEN, RING_DESCS * 16)?;
    write_reg(dev, TDH, 0)?;
    write_reg(dev, TDT, 0)?;
    write_reg(dev, TXDCTL, ENABLE)
}

/// An advanced transmit descriptor as the ring holds it: the buffer's
/// address, the command word, the offload word.
pub(crate) fn tx_desc(addr: u64, cmd: u32, olinfo: u32) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&cmd.to_le_bytes());
    d[12..16].copy_from_slice(&olinfo.to_le_bytes());
    d
}

/// The test's side of the queue: the mapped memory and where the tail is.
struct Queue<'a> {
    dev: &'a Device,
    mem: Buffer,
    tail: u32,
}

impl Queue<'_> {
    fn reg(&self, r: u64) -> Result<u32, String> {
        read_reg(self.dev, r)
    }

    fn set(&self, r: u64, v: u32) -> TestResult {
        write_reg(self.dev, r, v)
    }

    /// Programs the ring at `base` (disabled first), head and tail 0.
    fn program(&mut self, base: u64) -> TestResult {
        program_tx(self.dev, base)?;
        self.tail = 0;
        Ok(())
    }

    /// Writes descriptor `i` of the ring.
    fn desc(&mut self, i: u32, addr: u64, cmd: u32, olinfo: u32) {
        let at = (i * 16) as usize;
        self.mem.bytes()[at..at + 16].copy_from_slice(&tx_desc(addr, cmd, olinfo));
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
/// (the device writes completions), the frames read-only for transmit
/// (it only reads them), writable for receive (`bufs_writable`).
pub(crate) fn map(dev: &Device, mem: &Buffer, bufs_writable: bool) -> TestResult {
    ctx(
        dev.map_dma(IOVA_RING, mem.addr(0), PAGE as u64, true),
        "map the ring",
    )?;
    ctx(
        dev.map_dma(
            IOVA_BUFS,
            mem.addr(PAGE),
            (MAP_LEN - PAGE) as u64,
            bufs_writable,
        ),
        "map the buffers",
    )
}

/// `VFIO_DEVICE_GET_IRQ_INFO`: (flags, count).
fn irq_info(dev: &Device, index: u32) -> Result<(u32, u32), String> {
    let mut irq = [16u32, 0, index, 0];
    // SAFETY: A 16-byte `vfio_irq_info` with its argsz.
    let r = unsafe { vfio::ioctl(dev.raw(), vfio::DEVICE_GET_IRQ_INFO, irq.as_mut_ptr() as _) };
    ctx(r, &format!("GET_IRQ_INFO {index}"))?;
    Ok((irq[1], irq[3]))
}

/// Three new eventfds registered as the device's MSI-X vectors.
pub(crate) fn enable_msix(dev: &Device) -> Result<Vec<OwnedFd>, String> {
    let efds = (0..3)
        .map(|_| new_eventfd())
        .collect::<Result<Vec<_>, _>>()?;
    let fds: Vec<u8> = efds
        .iter()
        .flat_map(|e| e.as_raw_fd().to_ne_bytes())
        .collect();
    ctx(
        dev.set_irqs(
            MSIX_INDEX,
            vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER,
            0,
            3,
            &fds,
        ),
        "SET_IRQS MSI-X, three eventfds",
    )?;
    Ok(efds)
}

/// How often each vector fired since the last look, vector 0 first.
pub(crate) fn fired(efds: &[OwnedFd]) -> Result<Vec<u64>, String> {
    efds.iter().map(eventfd_take).collect()
}

/// The mdev's MSI-X as the VF's, and the transmit interrupt through the
/// VF's interrupt registers (expected values from the 82576 datasheet and
/// the PCI specification).
fn interrupts(q: &mut Queue<'_>, cap: &Capture, dst: &[u8; 6]) -> TestResult {
    let dev = q.dev;
    // GET_IRQ_INFO as vfio-pci answers for the VF: no INTx (its flags
    // are INTx's all the same), no MSI, three MSI-X vectors (EVENTFD |
    // NORESIZE).
    for (index, want) in [(0u32, (0x7u32, 0u32)), (1, (0x9, 0)), (2, (0x9, 3))] {
        let got = irq_info(dev, index)?;
        ensure!(
            got == want,
            "IRQ index {index}: flags, count {got:?}, expected {want:?}"
        );
    }
    // The configuration space: the capability list (status bit 4, pointer
    // 0x40), MSI-X first: ID 0x11, table size 3 - 1, table in BAR3 at 0,
    // PBA in BAR3 at 0x2000.
    let cfg = |at: u64| ctx(dev.config32(at), &format!("config {at:#x}"));
    ensure!(cfg(4)? & (1 << 20) != 0, "status: no capability list");
    ensure!(
        cfg(0x34)? & 0xff == 0x40,
        "capabilities pointer {:#x}",
        cfg(0x34)?
    );
    let want = [(0x40u64, 0x0002_0011u32), (0x44, 0x3), (0x48, 0x2003)];
    for (at, v) in want {
        ensure!(
            cfg(at)? == v,
            "MSI-X capability at {at:#x}: {:#x}, expected {v:#x}",
            cfg(at)?
        );
    }
    // Enable and function mask are writable, nothing else.
    ctx(
        dev.set_config32(0x40, u32::MAX),
        "write the MSI-X capability",
    )?;
    ensure!(
        cfg(0x40)? == 0xc002_0011,
        "MSI-X control after writing ones: {:#x}",
        cfg(0x40)?
    );
    ctx(dev.set_config32(0x40, 0), "clear the MSI-X control")?;
    // BAR3 is 16 KiB; the table's 48 bytes read as ones and ignore writes,
    // the PBA and the rest read as zeros.
    let (_, size, _) = ctx(dev.region(BAR3), "region info BAR3")?;
    ensure!(size == 16 << 10, "BAR3 of {size} bytes");
    let bar3 = |at: u64| -> Result<u32, String> {
        let mut b = [0u8; 4];
        ctx(dev.read_at(BAR3, at, &mut b), &format!("read BAR3 {at:#x}"))?;
        Ok(u32::from_le_bytes(b))
    };
    ctx(
        dev.write_at(BAR3, 0x0c, &0u32.to_le_bytes()),
        "write the table",
    )?;
    for (at, v) in [
        (0u64, u32::MAX),
        (0x0c, u32::MAX),
        (0x2c, u32::MAX),
        (0x30, 0),
        (0x2000, 0),
    ] {
        ensure!(
            bar3(at)? == v,
            "BAR3 {at:#x}: {:#x}, expected {v:#x}",
            bar3(at)?
        );
    }
    let mut b = [0u8; 8];
    ctx(
        dev.read_at(BAR3, 0x2c, &mut b),
        "read across the table's end",
    )?;
    ensure!(
        b == [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        "BAR3 0x2c..0x34: {b:?}"
    );

    // Enabling no vector is vfio-pci's ERANGE; masking through SET_IRQS
    // its ENOTTY.
    expect_errno!(
        dev.set_irqs(
            MSIX_INDEX,
            vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            &[]
        ),
        libc::ERANGE,
        "enable MSI-X with no vector"
    );
    let efds = enable_msix(dev)?;
    expect_errno!(
        dev.set_irqs(
            MSIX_INDEX,
            vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_MASK,
            0,
            1,
            &[]
        ),
        libc::ENOTTY,
        "mask an MSI-X vector"
    );
    ctx(
        dev.set_irqs(
            MSIX_INDEX,
            vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER,
            2,
            1,
            &[],
        ),
        "MSI-X loopback of vector 2",
    )?;
    ensure!(fired(&efds)? == [0, 0, 1], "loopback of vector 2");

    let mut sent = Vec::new();
    let mut seq = 500u32;
    let mut send = |q: &mut Queue<'_>, sent: &mut Vec<Vec<u8>>| -> TestResult {
        let f = frame(dst, seq, 100 + seq as usize % 50);
        seq += 1;
        q.send_frame(&f, seq as usize % RING_DESCS as usize, 0, 1)?;
        sent.push(f);
        Ok(())
    };
    // Routed to vector 1, enabled, auto-cleared: one message per
    // completion, none on the other vectors, EICR left clear.
    q.set(IVAR0, TX_TO_VECTOR1)?;
    ensure!(
        q.reg(IVAR0)? == TX_TO_VECTOR1,
        "IVAR0 reads {:#x}",
        q.reg(IVAR0)?
    );
    q.set(EIAC, 0x2)?;
    q.set(EIMS, 0x2)?;
    for _ in 0..3 {
        send(q, &mut sent)?;
        ensure!(
            fired(&efds)? == [0, 1, 0],
            "a completion with EIAC: one message on vector 1"
        );
    }
    ensure!(q.reg(EICR)? == 0, "EICR after auto-clear");
    // Without auto-clear the cause stays: the next completion sends
    // nothing until the cause is read (EICR clears on read).
    q.set(EIAC, 0)?;
    send(q, &mut sent)?;
    ensure!(fired(&efds)? == [0, 1, 0], "first completion without EIAC");
    send(q, &mut sent)?;
    ensure!(
        fired(&efds)? == [0, 0, 0],
        "a completion while the cause is still set"
    );
    ensure!(q.reg(EICR)? == 0x2, "EICR without auto-clear");
    ensure!(q.reg(EICR)? == 0, "EICR after it was read");
    send(q, &mut sent)?;
    ensure!(
        fired(&efds)? == [0, 1, 0],
        "a completion after EICR was read"
    );
    q.set(EICR, 0x2)?;
    // Disabled (EIMC): the cause is kept and fires once enabled again.
    q.set(EIMC, 0x2)?;
    ensure!(q.reg(EIMS)? == 0, "EIMS after EIMC");
    send(q, &mut sent)?;
    ensure!(fired(&efds)? == [0, 0, 0], "a completion while disabled");
    q.set(EIMS, 0x2)?;
    ensure!(fired(&efds)? == [0, 1, 0], "the pending cause when enabled");
    q.set(EICR, 0x2)?;
    // Auto-mask: the message disables its vector.
    q.set(EIAM, 0x2)?;
    send(q, &mut sent)?;
    ensure!(fired(&efds)? == [0, 1, 0], "a completion with EIAM");
    ensure!(
        q.reg(EIMS)? == 0,
        "EIMS after an auto-masked message: {:#x}",
        q.reg(EIMS)?
    );
    // EICS on an auto-masked vector enables it again and fires it (what
    // Linux's igbvf does when its ring was not cleaned).
    q.set(EICR, 0x2)?;
    q.set(EICS, 0x2)?;
    ensure!(fired(&efds)? == [0, 1, 0], "EICS of the auto-masked vector");
    q.set(EIAM, 0)?;
    q.set(EICR, 0x7)?;
    // Software causes (EICS) on vector 0 and 2.
    q.set(EIMS, 0x5)?;
    q.set(EICS, 0x5)?;
    ensure!(fired(&efds)? == [1, 0, 1], "EICS of vectors 0 and 2");
    q.set(EICR, 0x7)?;
    // IVAR's valid bit clear: the completion raises nothing.
    q.set(IVAR0, 0x01 << 8)?;
    q.set(EIMS, 0x7)?;
    send(q, &mut sent)?;
    ensure!(fired(&efds)? == [0, 0, 0], "a completion routed nowhere");
    ensure!(q.reg(EICR)? == 0, "EICR after a completion routed nowhere");
    // A vector the user took the eventfd away from (as QEMU masks): the
    // message is dropped, the others still go.
    q.set(IVAR0, TX_TO_VECTOR1)?;
    q.set(EIAC, 0x7)?;
    let minus1 = (-1i32).to_ne_bytes();
    ctx(
        dev.set_irqs(
            MSIX_INDEX,
            vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER,
            1,
            1,
            &minus1,
        ),
        "vector 1 without an eventfd",
    )?;
    send(q, &mut sent)?;
    q.set(EICS, 0x1)?;
    ensure!(fired(&efds)? == [1, 0, 0], "vector 1 without its eventfd");
    // MSI-X off: nothing is signalled, and the device goes on sending.
    ctx(
        dev.set_irqs(
            MSIX_INDEX,
            vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            &[],
        ),
        "disable MSI-X",
    )?;
    send(q, &mut sent)?;
    q.set(EICS, 0x7)?;
    ensure!(
        fired(&efds)? == [0, 0, 0],
        "messages after MSI-X was disabled"
    );
    expect_frames(cap, &sent, "frames of the interrupt steps")?;
    println!(
        "  MSI-X like the VF's (capability, BAR3, 3 vectors); transmit completions on the vector IVAR0 names, with EIMS/EIMC, EIAC, EIAM, EICS and EICR as the datasheet has them"
    );
    Ok(())
}

/// Sends `msg` (word 0, then `rest`) through the mailbox as Linux's igbvf
/// does: lock (VFU), write, request.
fn mailbox_send(dev: &Device, msg: u32, rest: &[u32]) -> TestResult {
    let set = |r: u64, v: u32| ctx(dev.write_reg(r, v), &format!("write register {r:#x}"));
    set(V2PMAILBOX, MBX_VFU)?;
    set(VMBMEM, msg)?;
    for (i, w) in rest.iter().enumerate() {
        set(VMBMEM + 4 * (i as u64 + 1), *w)?;
    }
    set(V2PMAILBOX, MBX_REQ)
}

/// The mailbox: the vendor answers `VF_RESET` with the MAC address the
/// operator set for the VF (`mac`, set by the test script with `ip link
/// set <pf> vf 0 mac`), refuses every other request, raises the mailbox's
/// vector (IVAR_MISC), and the queue goes on after the VF's reset. Leaves
/// a refusal unread, for the migration.
fn user_mailbox(q: &mut Queue<'_>, cap: &Capture, dst: &[u8; 6], mac: &[u8; 6]) -> TestResult {
    let efds = enable_msix(q.dev)?;
    ensure!(q.reg(V2PMAILBOX)? == 0, "V2PMAILBOX at first");
    q.set(V2PMAILBOX, MBX_VFU)?;
    ensure!(
        q.reg(V2PMAILBOX)? == MBX_VFU,
        "V2PMAILBOX with the buffer taken"
    );
    q.set(IVAR_MISC, 0x82)?;
    q.set(EIAC, 0x4)?;
    q.set(EIMS, 0x4)?;
    // Before any VF_RESET: refused, without CTS.
    mailbox_send(q.dev, VF_SET_MULTICAST, &[1])?;
    ensure!(
        q.reg(V2PMAILBOX)? == MBX_PFSTS | MBX_PFACK,
        "V2PMAILBOX after a request"
    );
    let w0 = q.reg(VMBMEM)?;
    ensure!(
        w0 == VF_SET_MULTICAST | MSG_NACK,
        "the reply to a request before VF_RESET: {w0:#x}"
    );
    ensure!(fired(&efds)? == [0, 0, 1], "the first reply's vector");
    mailbox_send(q.dev, VF_RESET, &[])?;
    let bits = q.reg(V2PMAILBOX)?;
    ensure!(
        bits == MBX_PFSTS | MBX_PFACK,
        "V2PMAILBOX after VF_RESET: {bits:#x}, expected PFSTS | PFACK"
    );
    ensure!(q.reg(V2PMAILBOX)? == 0, "PFSTS and PFACK clear when read");
    let w: Vec<u32> = (0..3)
        .map(|i| q.reg(VMBMEM + 4 * i))
        .collect::<Result<_, _>>()?;
    let want = [
        VF_RESET | MSG_ACK,
        u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        u32::from_le_bytes([mac[4], mac[5], 0, 0]),
    ];
    ensure!(
        w == want,
        "the reply to VF_RESET: {w:08x?}, expected {want:08x?} (the MAC the operator set)"
    );
    ensure!(
        fired(&efds)? == [0, 0, 1],
        "the reply's vector (IVAR_MISC: 2)"
    );
    // Another MAC address: refused, the operator's stays.
    mailbox_send(q.dev, VF_SET_MAC_ADDR, &[0x0403_0252, 0x0605])?;
    ensure!(
        q.reg(V2PMAILBOX)? == MBX_PFSTS | MBX_PFACK,
        "V2PMAILBOX after SET_MAC_ADDR"
    );
    let w0 = q.reg(VMBMEM)?;
    ensure!(
        w0 == VF_SET_MAC_ADDR | MSG_NACK | MSG_CTS,
        "the reply to SET_MAC_ADDR: {w0:#x}"
    );
    ensure!(fired(&efds)? == [0, 0, 1], "the refusal's vector");
    // A reply sent back (ACK set): taken (PFACK), not answered.
    mailbox_send(q.dev, VF_RESET | MSG_ACK, &[])?;
    ensure!(
        q.reg(V2PMAILBOX)? == MBX_PFACK,
        "V2PMAILBOX after a message carrying ACK"
    );
    ensure!(
        fired(&efds)? == [0, 0, 0],
        "a message carrying ACK answered"
    );
    // VF_RESET again at once: the same MAC (the operator's stayed; the
    // answer comes from the last handshake, less than a second old).
    mailbox_send(q.dev, VF_RESET, &[])?;
    ensure!(
        q.reg(V2PMAILBOX)? == MBX_PFSTS | MBX_PFACK,
        "V2PMAILBOX after VF_RESET again"
    );
    let again: Vec<u32> = (0..3)
        .map(|i| q.reg(VMBMEM + 4 * i))
        .collect::<Result<_, _>>()?;
    ensure!(again == want, "the second reply to VF_RESET: {again:08x?}");
    ensure!(fired(&efds)? == [0, 0, 1], "the second reply's vector");
    // The VF was reset under the queue: the next frame goes all the same.
    let f = frame(dst, 700, 321);
    q.send_frame(&f, 3, 0, 1)?;
    expect_frames(cap, &[f], "a frame after the VF_RESET")?;
    ctx(
        q.dev.set_irqs(
            MSIX_INDEX,
            vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            &[],
        ),
        "disable MSI-X",
    )?;
    println!(
        "  the mailbox: VF_RESET answered with the MAC the operator set, other requests refused, on IVAR_MISC's vector; frames go on"
    );
    Ok(())
}

/// The stopped `dev`'s state: STOP_COPY, the data FD read to its end,
/// STOP again.
pub(crate) fn save_stopped(dev: &Device) -> Result<Vec<u8>, String> {
    let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no save FD")?;
    let mut stream = Vec::new();
    read_to_eof(&fd, &mut stream)?;
    drop(fd);
    ctx(dev.set_state(State::Stop.raw()), "SET STOP")?;
    Ok(stream)
}

/// Frames queued while the source is stopped are not sent; migrated with
/// the queue into `target` (an mdev on another VF, the same memory mapped
/// into its container, as a VMM's guest RAM moves), they go from there when
/// it runs, and the target's head reaches the tail. The interrupt set-up
/// goes along: the target raises the vector the source's IVAR0 named.
fn migrate_pending(q: &mut Queue<'_>, target: &Device, cap: &Capture, dst: &[u8; 6]) -> TestResult {
    // Vector 1 enabled, its cause set and not cleared (no auto-clear): the
    // target must not send it again at load.
    q.set(EIMC, 0x7)?;
    q.set(EIAM, 0)?;
    q.set(EIAC, 0)?;
    q.set(EICR, 0x7)?;
    q.set(IVAR0, TX_TO_VECTOR1)?;
    q.set(EIMS, 0x2)?;
    q.set(EICS, 0x2)?;
    ctx(q.dev.set_state(State::Stop.raw()), "SET STOP")?;
    // A mailbox request while stopped: taken (PFACK), answered only when
    // the device runs again, here on the target.
    mailbox_send(q.dev, VF_SET_VLAN, &[0x0000_0005])?;
    let w0 = q.reg(VMBMEM)?;
    ensure!(
        w0 == VF_SET_VLAN,
        "a request answered while stopped: {w0:#x}"
    );
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
    let stream = save_stopped(q.dev)?;
    map(target, &q.mem, false)?;
    let efds = enable_msix(target)?;
    load_into(target, &stream)?;
    ensure!(fired(&efds)? == [0, 0, 0], "the target raised at load");

    // The cause came along (and this read clears it, so the target's
    // completions send vector 1 again).
    for (r, v) in [(IVAR0, TX_TO_VECTOR1), (EIAC, 0), (EIMS, 0x2), (EICR, 0x2)] {
        let got = ctx(target.read_reg(r), "read the target's interrupt registers")?;
        ensure!(got == v, "the target's {r:#x}: {got:#x}, expected {v:#x}");
    }
    ctx(
        target.set_state(State::Running.raw()),
        "SET RUNNING on the target",
    )?;
    expect_frames(cap, &pending, "pending frames sent by the target")?;
    let t = ctx(target.read_reg(TDH), "read the target's TDH")?;
    ensure!(t == q.tail, "the target's TDH {t}, tail {}", q.tail);
    let f = fired(&efds)?;
    ensure!(
        f[0] == 0 && f[1] >= 1 && f[2] == 0,
        "the target's completions: vectors fired {f:?}, expected vector 1"
    );
    // The source's pending request came along and is answered now, with
    // CTS (the source's VF_RESET was answered).
    let bits = ctx(target.read_reg(V2PMAILBOX), "the target's V2PMAILBOX")?;
    let w0 = ctx(target.read_reg(VMBMEM), "the target's VMBMEM")?;
    ensure!(
        bits == MBX_PFSTS | MBX_PFACK && w0 == VF_SET_VLAN | MSG_NACK | MSG_CTS,
        "the target's mailbox: {bits:#x}, word 0 {w0:#x}"
    );
    // The target's VF has no MAC address (the script cleared it): its
    // VF_RESET is answered with NACK.
    mailbox_send(target, VF_RESET, &[])?;
    let w0 = ctx(target.read_reg(VMBMEM), "the target's VMBMEM")?;
    ensure!(
        w0 == VF_RESET | MSG_NACK,
        "the reply to VF_RESET on a VF without a MAC: {w0:#x}"
    );
    ctx(q.dev.reset(), "reset the source")?;
    println!("  3 frames queued on the stopped source went from the target after the migration");
    Ok(())
}

/// The process's locked memory in KiB (`VmLck`): type1 counts every page
/// an mdev pins for the process there, once however often it is pinned.
fn locked_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .ok_or("/proc/self/status has no VmLck")?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse().map_err(|e| format!("VmLck {line:?}: {e}"))
}

/// The distinct pages that sending `pieces` (IOVA, length) pins.
fn pages_of(pieces: &[(u64, usize)]) -> std::collections::BTreeSet<u64> {
    let mut pages = std::collections::BTreeSet::new();
    for &(iova, len) in pieces {
        pages.extend(iova / PAGE as u64..=(iova + len as u64 - 1) / PAGE as u64);
    }
    pages
}

/// The vendor gives a frame's pins back to the framework's cache: the
/// pages stay pinned (the process's locked memory shows them) while the
/// user keeps them mapped, at most 512 pages (the least recently used go),
/// and unmapping the memory unpins them.
fn pin_cache(q: &mut Queue<'_>, cap: &Capture, dst: &[u8; 6], sent_from: u64) -> TestResult {
    let locked = locked_kib()?;
    ensure!(
        locked == sent_from * 4,
        "after frames from {sent_from} pages: {locked} KiB locked, expected {}",
        sent_from * 4
    );
    let mut many = Buffer::new(MANY_PAGES * PAGE)?;
    ctx(
        q.dev
            .map_dma(IOVA_MANY, many.addr(0), (MANY_PAGES * PAGE) as u64, false),
        "map the pin-cache test's memory",
    )?;
    // In batches the capture socket's buffer holds.
    for batch in (0..MANY_PAGES).collect::<Vec<_>>().chunks(50) {
        let mut sent = Vec::new();
        for &i in batch {
            let f = frame(dst, 1000 + i as u32, 60);
            many.bytes()[i * PAGE..i * PAGE + f.len()].copy_from_slice(&f);
            let last = q.send(&[(IOVA_MANY + (i * PAGE) as u64, f.len())], 0)?;
            q.expect_done(last, "a frame of the pin-cache test")?;
            sent.push(f);
        }
        expect_frames(cap, &sent, "frames from 600 pages")?;
    }
    let locked = locked_kib()?;
    ensure!(
        locked == CACHE_PAGES * 4,
        "after frames from {MANY_PAGES} pages: {locked} KiB locked, expected {} (the cache's bound)",
        CACHE_PAGES * 4
    );
    ctx(
        q.dev.unmap_dma(IOVA_MANY, (MANY_PAGES * PAGE) as u64),
        "unmap the pin-cache test's memory",
    )?;
    let locked = locked_kib()?;
    ensure!(locked == 0, "{locked} KiB locked after the unmap");
    println!(
        "  pins kept for reuse: {sent_from} pages locked after the first frames, {CACHE_PAGES} after frames from {MANY_PAGES} pages, none after the unmap"
    );
    Ok(())
}

/// A PF reset (igb taking its interface down and up again) clears the
/// VF's registers behind the vendor's back: the next doorbell finds the
/// vendor's ring gone, sets the VF up again (reset, handshake) and sends.
fn pf_reset(q: &mut Queue<'_>, cap: &Capture, dst: &[u8; 6], pf_if: &str) -> TestResult {
    for state in ["down", "up"] {
        let st = std::process::Command::new("ip")
            .args(["link", "set", pf_if, state])
            .status()
            .map_err(|e| format!("ip link set {pf_if} {state}: {e}"))?;
        ensure!(st.success(), "ip link set {pf_if} {state}: {st}");
    }
    let operstate = format!("/sys/class/net/{pf_if}/operstate");
    let start = std::time::Instant::now();
    while ctx(std::fs::read_to_string(&operstate), &operstate)?.trim() != "up" {
        ensure!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{pf_if} not up again 30 s after a reset"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The capture socket reports the interface's going down once.
    let _ = cap.frames();
    let f = frame(dst, 300, 200);
    q.send_frame(&f, 2, 0, 1)?;
    expect_frames(cap, &[f], "the first frame after a PF reset")?;
    println!("  a PF reset under the queue: the next frame set the VF up again and went");
    Ok(())
}

/// `rmdev-vm-test vf-tx UUID OTHER-UUID PF-NETDEV`: OTHER-UUID is an mdev on
/// another VF, the migration target.
pub(crate) fn vf_tx(uuid: &str, other: &str, pf_if: &str, vf_mac: &str) -> TestResult {
    let mac = parse_mac(vf_mac)?;
    let dst = mac_of(pf_if)?;
    let cap = Capture::open(pf_if)?;
    let dev = ctx(Device::open(uuid), "open the mdev")?;
    let mem = Buffer::new(MAP_LEN)?;
    map(&dev, &mem, false)?;
    let mut q = Queue {
        dev: &dev,
        mem,
        tail: 0,
    };
    q.program(IOVA_RING)?;

    // 40 frames of 60 to 1514 bytes, every fifth in three descriptors,
    // many across a page boundary; the ring wraps twice and more.
    ensure!(locked_kib()? == 0, "locked memory before the first frame");
    let mut sent = Vec::new();
    let mut pages = std::collections::BTreeSet::new();
    for seq in 0..40u32 {
        let len = 60 + (seq as usize * 397) % 1455;
        let f = frame(&dst, seq, len);
        let parts = if seq % 5 == 4 { 3 } else { 1 };
        let offset = (seq as usize * 331) % PAGE;
        let slot = seq as usize % RING_DESCS as usize;
        let iova = IOVA_BUFS + (slot * SLOT + offset) as u64;
        pages.extend(pages_of(&[(iova, len)]));
        q.send_frame(&f, slot, offset, parts)?;
        sent.push(f);
    }
    expect_frames(&cap, &sent, "40 frames")?;
    println!("  40 frames sent through the mdev, all captured on {pf_if} as sent");
    pin_cache(&mut q, &cap, &dst, pages.len() as u64)?;
    interrupts(&mut q, &cap, &dst)?;
    user_mailbox(&mut q, &cap, &dst, &mac)?;
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
    // Memory unmapped under the queue (a frame was just sent from it, its
    // pages kept pinned): the frames there are refused; mapped again, from
    // other memory, they go at once, read from the new memory (the pins
    // kept from before the unmap went with it).
    q.program(IOVA_RING)?;
    let f = frame(&dst, 199, 300);
    q.send_frame(&f, 1, 0, 1)?;
    expect_frames(&cap, &[f], "before the unmap")?;
    ctx(
        dev.unmap_dma(IOVA_BUFS, (MAP_LEN - PAGE) as u64),
        "unmap the buffers under the queue",
    )?;
    let f = frame(&dst, 200, 300);
    q.send_frame(&f, 1, 0, 1)?;
    expect_frames(&cap, &[], "buffers unmapped")?;
    let mut moved = Buffer::new(MAP_LEN)?;
    moved.bytes().copy_from_slice(q.mem.bytes());
    ctx(dev.unmap_dma(IOVA_RING, PAGE as u64), "unmap the ring")?;
    map(&dev, &moved, false)?;
    let old = std::mem::replace(&mut q.mem, moved);
    let f = frame(&dst, 201, 300);
    q.send_frame(&f, 1, 0, 1)?;
    expect_frames(&cap, &[f], "buffers mapped again from other memory")?;
    drop(old);
    println!(
        "  a ring nothing is mapped at stops the queue, one past the address space is refused; unmapped buffers are not sent"
    );
    pf_reset(&mut q, &cap, &dst, pf_if)?;

    // A reset forgets the queue; so does closing the device.
    q.set(IVAR0, TX_TO_VECTOR1)?;
    q.set(EIMS, 0x7)?;
    q.set(EIAC, 0x7)?;
    mailbox_send(q.dev, VF_SET_MULTICAST, &[1])?;
    ctx(dev.reset(), "VFIO_DEVICE_RESET")?;
    for r in [
        TDBAL, TDLEN, TDT, TXDCTL, IVAR0, EIMS, EIAC, V2PMAILBOX, VMBMEM,
    ] {
        ensure!(q.reg(r)? == 0, "register {r:#x} after a reset");
    }
    q.program(IOVA_RING)?;
    q.set(IVAR0, TX_TO_VECTOR1)?;
    q.set(EIMS, 0x7)?;
    mailbox_send(q.dev, VF_SET_MULTICAST, &[1])?;
    drop(q);
    drop(dev);
    let dev = ctx(Device::open(uuid), "open the mdev again")?;
    for r in [TDBAL, TDLEN, TDT, TXDCTL, IVAR0, EIMS, V2PMAILBOX, VMBMEM] {
        let v = ctx(dev.read_reg(r), "read")?;
        ensure!(v == 0, "register {r:#x} for the next user: {v:#x}");
    }
    expect_frames(&cap, &[], "after reset and close")?;
    println!("  a reset and the next user see no transmit, interrupt or mailbox state");
    Ok(())
}
