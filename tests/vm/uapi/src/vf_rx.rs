// SPDX-License-Identifier: GPL-2.0

//! Frames received through rmdev_igbvf's emulated receive queue 0, driven
//! as a guest driver drives an 82576 VF: this process maps its own memory
//! writable into the mdev's type1 container, programs a ring of advanced
//! one-buffer receive descriptors there and hands them over with the tail
//! doorbell. The frames are sent from the PF's netdev with an `AF_PACKET`
//! socket to the VF's MAC address, which QEMU's igb switches to the VF;
//! each must land in the ring in arrival order, byte for byte, written
//! back with DD, EOP on a frame's last descriptor and its length, the
//! rest of every buffer untouched, nothing more. Then: the registers'
//! masks, the ring wrapping as descriptors are recycled, frames split
//! over 1 KiB buffers, frames held while no descriptor is free, the
//! refusals (buffers unmapped, past their mapping, read-only: written
//! back with RXE; a ring the device cannot read stops the queue), the
//! interrupt on the vector IVAR0 routes the queue to, a reset and the next
//! user, and a migration to an mdev on another VF, whose ring goes on
//! where the source's stopped. The transmit side is `vf_traffic.rs`,
//! whose helpers this uses.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rmdev::vfio::{self, Device};
use rmdev_logic::fsm::State;

use super::guest_memory::Buffer;
use super::vf_traffic::{
    enable_msix, fired, frame, mac_of, map, packet_socket, parse_mac, program_tx, read_reg,
    save_stopped, tx_desc, write_reg, DEXT, DTYP_DATA, EIAC, EICR, EIMC, EIMS, ENABLE,
    EOP as TX_EOP, IFCS, IOVA_BUFS, IOVA_NONE, IOVA_RING, IVAR0, MAP_LEN, MSIX_INDEX, RING_DESCS,
    RS, SLOT, TDH, TDT, TXDCTL,
};
use super::{ctx, load_into, TestResult, PAGE};

/// Receive queue 0's registers (82576 VF BAR0).
const RDBAL: u64 = 0x2800;
const RDBAH: u64 = 0x2804;
const RDLEN: u64 = 0x2808;
const SRRCTL: u64 = 0x280c;
const RDH: u64 = 0x2810;
const RDT: u64 = 0x2818;
const RXDCTL: u64 = 0x2828;
/// All of them, as a reset leaves them (0).
const RX_REGS: [u64; 7] = [RDBAL, RDBAH, RDLEN, SRRCTL, RDH, RDT, RXDCTL];
/// What the registers keep of a write of ones (the vendor's masks).
const RDBAL_MASK: u32 = 0xffff_ff80;
const RDLEN_MASK: u32 = 0x000f_ff80;
const SRRCTL_MASK: u32 = 0x8e00_0f7f;
const RXDCTL_MASK: u32 = ENABLE | 0x001f_1f1f;
/// SRRCTL: advanced one-buffer descriptors, 2 or 1 KiB buffers
/// (BSIZEPACKET, in KiB).
const ADV_ONEBUF: u32 = 1 << 25;
const SRRCTL_2K: u32 = ADV_ONEBUF | 2;
const SRRCTL_1K: u32 = ADV_ONEBUF | 1;
/// Write-back status (dword 2) and error bits (82576 datasheet, 7.1.5.2).
const DD: u32 = 1 << 0;
const EOP: u32 = 1 << 1;
const RXE: u32 = 1 << 31;
/// IVAR0 byte 0: receive queue 0 to vector 0 or 2, valid.
const RX_TO_VECTOR0: u32 = 0x80;
const RX_TO_VECTOR2: u32 = 0x82;
/// Where nothing may be written: a page mapped read-only past the
/// buffers, and the byte every buffer is filled with before it is handed
/// over.
const IOVA_RO: u64 = 0x80_0000;
const MEM_LEN: usize = MAP_LEN + PAGE;
const CANARY: u8 = 0x5a;
/// How long a frame may take to arrive (it is delivered from the VF's
/// interrupt), and how long "nothing more" is watched for. The second is
/// not a timing assertion that can flake: with a correct vendor nothing
/// arrives however long one waits; on a slow lab VM a late wrong write may
/// be missed, never a right one failed.
const DEADLINE: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_millis(300);
/// Frame lengths for the first frames: the shortest and longest the VF
/// gets unpadded, and some between.
const LENGTHS: [usize; 10] = [60, 1514, 61, 128, 500, 1000, 1513, 64, 777, 1200];

/// Frames sent from a network interface (the PF's).
struct Sender(OwnedFd);

impl Sender {
    fn open(ifname: &str) -> Result<Sender, String> {
        // EtherType 0: the socket receives nothing; the kernel takes each
        // frame's protocol from its header.
        Ok(Sender(packet_socket(ifname, 0)?))
    }

    fn send(&self, f: &[u8]) -> TestResult {
        // SAFETY: `f` is readable for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        ensure!(
            n == f.len() as isize,
            "send a frame of {} bytes: {}",
            f.len(),
            if n < 0 {
                std::io::Error::last_os_error().to_string()
            } else {
                format!("{n} sent")
            }
        );
        Ok(())
    }

    /// Sends `frames` at once.
    fn send_all(&self, frames: &[Vec<u8>]) -> TestResult {
        frames.iter().try_for_each(|f| self.send(f))
    }
}

/// Frame slot `i`'s offset in the test's memory and its IOVA (descriptor
/// `i` of the ring gets slot `i`).
fn slot_at(i: u32) -> usize {
    PAGE + i as usize * SLOT
}

fn slot_iova(i: u32) -> u64 {
    IOVA_BUFS + (i as usize * SLOT) as u64
}

/// Who a frame was for, to tell a stray one from the test's.
fn describe(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("{} bytes", f.len());
    }
    format!(
        "to {:02x?}, EtherType {:#06x}",
        &f[..6],
        u16::from_be_bytes([f[12], f[13]])
    )
}

/// The test's side of the queue: the mapped memory (the ring at its
/// start), the descriptor the device writes next and the tail last
/// written.
struct Ring<'a> {
    dev: &'a Device,
    mem: Buffer,
    next: u32,
    tail: u32,
    /// The buffer size SRRCTL names.
    buf: usize,
}

impl Ring<'_> {
    fn reg(&self, r: u64) -> Result<u32, String> {
        read_reg(self.dev, r)
    }

    fn set(&self, r: u64, v: u32) -> TestResult {
        write_reg(self.dev, r, v)
    }

    /// Programs a clean ring at `base` with `srrctl` (disabled first), head
    /// and tail 0: no descriptor handed over yet.
    fn program(&mut self, base: u64, srrctl: u32) -> TestResult {
        self.set(RXDCTL, 0)?;
        self.mem.write(0, &[0; RING_DESCS as usize * 16]);
        self.set(RDBAL, base as u32)?;
        self.set(RDBAH, (base >> 32) as u32)?;
        self.set(RDLEN, RING_DESCS * 16)?;
        self.set(SRRCTL, srrctl)?;
        self.set(RDH, 0)?;
        self.set(RDT, 0)?;
        self.set(RXDCTL, ENABLE)?;
        ensure!(
            self.reg(RXDCTL)? & ENABLE != 0,
            "a ring at {base:#x}: RXDCTL {:#x}, not enabled",
            self.reg(RXDCTL)?
        );
        self.next = 0;
        self.tail = 0;
        self.buf = match srrctl & 0x7f {
            0 => 2048,
            kib => kib as usize * 1024,
        };
        Ok(())
    }

    /// The four words of descriptor `i`, its status (DD) read first.
    fn desc(&self, i: u32) -> [u32; 4] {
        let at = i as usize * 16;
        let status = self.mem.load32(at + 8);
        [
            self.mem.load32(at),
            self.mem.load32(at + 4),
            status,
            self.mem.load32(at + 12),
        ]
    }

    /// Writes descriptor `tail` in the read format (buffer `addr`, header
    /// address 0) without ringing the doorbell.
    fn put(&mut self, addr: u64) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        self.mem.write(self.tail as usize * 16, &d);
        self.tail = (self.tail + 1) % RING_DESCS;
    }

    /// Puts descriptor `tail` with its own slot, filled with the canary.
    fn put_slot(&mut self) {
        self.mem.write(slot_at(self.tail), &[CANARY; SLOT]);
        self.put(slot_iova(self.tail));
    }

    /// Descriptors neither with the device nor written back unread (the
    /// ring keeps one empty, RDH == RDT meaning none handed over).
    fn free(&self) -> u32 {
        (self.next + RING_DESCS - 1 - self.tail) % RING_DESCS
    }

    /// Hands `n` more descriptors over: the doorbell.
    fn give(&mut self, n: u32) -> TestResult {
        ensure!(
            n <= self.free(),
            "give {n} descriptors, {} free",
            self.free()
        );
        for _ in 0..n {
            self.put_slot();
        }
        self.set(RDT, self.tail)
    }

    /// Waits for descriptor `i`'s write-back (DD).
    fn wait_desc(&self, i: u32, what: &str) -> Result<[u32; 4], String> {
        let start = Instant::now();
        loop {
            let d = self.desc(i);
            if d[2] & DD != 0 {
                return Ok(d);
            }
            ensure!(
                start.elapsed() < DEADLINE,
                "{what}: descriptor {i} not written back within {DEADLINE:?} (RDH {}, RDT {}, RXDCTL {:#x})",
                self.reg(RDH)?,
                self.reg(RDT)?,
                self.reg(RXDCTL)?
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The descriptor was read: cleared, as a driver cleans its ring, so a
    /// later write-back there shows.
    fn consume(&mut self, i: u32) {
        self.mem.write(i as usize * 16, &[0; 16]);
        self.next = (i + 1) % RING_DESCS;
    }

    /// Frame `f` arrives in the next descriptors, which have their own
    /// slots: each buffer holds its piece and nothing after it, each is
    /// written back with DD, EOP on the last, the piece's length.
    fn expect_frame(&mut self, f: &[u8], what: &str) -> TestResult {
        let mut off = 0;
        while off < f.len() {
            let i = self.next;
            let n = (f.len() - off).min(self.buf);
            let status = if off + n == f.len() { DD | EOP } else { DD };
            let d = self.wait_desc(i, what)?;
            let buf = self.mem.read(slot_at(i), SLOT);
            if let Some(at) = (0..n).find(|&k| buf[k] != f[off + k]) {
                return Err(format!(
                    "{what}: descriptor {i} ({d:08x?}) holds other bytes than the frame's {off}..{} from byte {at} ({}; sent {})",
                    off + n,
                    describe(&buf),
                    describe(f)
                ));
            }
            ensure!(
                d == [0, 0, status, n as u32],
                "{what}: descriptor {i} written back as {d:08x?}, expected [0, 0, {status:#x}, {n:#x}] ({} bytes of {}, buffers of {})",
                n,
                f.len(),
                self.buf
            );
            if let Some(at) = (n..SLOT).find(|&k| buf[k] != CANARY) {
                return Err(format!(
                    "{what}: descriptor {i}'s buffer written past the frame's {n} bytes, at {at}"
                ));
            }
            self.consume(i);
            off += n;
        }
        Ok(())
    }

    /// The next descriptor is refused: DD | EOP | RXE, length 0.
    fn expect_refused(&mut self, what: &str) -> TestResult {
        let i = self.next;
        let d = self.wait_desc(i, what)?;
        ensure!(
            d == [0, 0, DD | EOP | RXE, 0],
            "{what}: descriptor {i} written back as {d:08x?}, expected [0, 0, {:#x}, 0]",
            DD | EOP | RXE
        );
        self.consume(i);
        Ok(())
    }

    /// Nothing more written for a while: no descriptor written back, the
    /// slots handed over still all canary, RDH where the test counts.
    fn expect_quiet(&self, what: &str) -> TestResult {
        self.untouched(what)?;
        let head = self.reg(RDH)?;
        ensure!(
            head == self.next,
            "{what}: RDH {head}, expected {}",
            self.next
        );
        Ok(())
    }

    /// No descriptor written back after a while, the slots handed over
    /// still all canary.
    fn untouched(&self, what: &str) -> TestResult {
        std::thread::sleep(SETTLE);
        for i in 0..RING_DESCS {
            let d = self.desc(i);
            ensure!(
                d[2] & DD == 0,
                "{what}: descriptor {i} written back ({d:08x?}; the test expected none after {})",
                self.next
            );
        }
        let mut i = self.next;
        while i != self.tail {
            let addr = u64::from(self.desc(i)[0]) | u64::from(self.desc(i)[1]) << 32;
            if addr == slot_iova(i) {
                ensure!(
                    self.mem.read(slot_at(i), SLOT).iter().all(|&b| b == CANARY),
                    "{what}: descriptor {i}'s buffer written, its descriptor not"
                );
            }
            i = (i + 1) % RING_DESCS;
        }
        Ok(())
    }
}

/// Numbered frames to `dst`: the next `seq`, in the lengths given.
fn frames(dst: &[u8; 6], seq: &mut u32, lengths: &[usize]) -> Vec<Vec<u8>> {
    lengths
        .iter()
        .map(|&len| {
            *seq += 1;
            frame(dst, *seq, len)
        })
        .collect()
}

/// `n` frames to `dst` of lengths spread over 60..1514.
fn spread(dst: &[u8; 6], seq: &mut u32, n: usize) -> Vec<Vec<u8>> {
    let lengths: Vec<usize> = (0..n)
        .map(|k| 60 + ((*seq as usize + k) * 397) % 1455)
        .collect();
    frames(dst, seq, &lengths)
}

/// Waits for vector `v` to fire; how often each fired meanwhile.
fn wait_fired(efds: &[OwnedFd], v: usize) -> Result<Vec<u64>, String> {
    let mut total = vec![0u64; efds.len()];
    let start = Instant::now();
    while total[v] == 0 && start.elapsed() < DEADLINE {
        for (t, n) in total.iter_mut().zip(fired(efds)?) {
            *t += n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(total)
}

/// The seven receive registers read 0 (`when`: at open, after a reset).
fn regs_zero(dev: &Device, when: &str) -> TestResult {
    for r in RX_REGS {
        let v = read_reg(dev, r)?;
        ensure!(v == 0, "register {r:#x} {when}: {v:#x}");
    }
    Ok(())
}

/// The registers at open, their masks, what an enabled queue keeps, and a
/// ring past the top of the address space, never enabled.
fn registers(q: &Ring<'_>) -> TestResult {
    regs_zero(q.dev, "at open")?;
    for (r, mask) in [
        (RDBAL, RDBAL_MASK),
        (RDBAH, u32::MAX),
        (RDLEN, RDLEN_MASK),
        (SRRCTL, SRRCTL_MASK),
    ] {
        q.set(r, u32::MAX)?;
        let v = q.reg(r)?;
        ensure!(
            v == mask,
            "register {r:#x} after writing ones: {v:#x}, expected {mask:#x}"
        );
    }
    // 0xffff_ffff_ffff_ff80 + 256 bytes: its last descriptor's address
    // does not exist.
    q.set(RDLEN, RING_DESCS * 16)?;
    q.set(RXDCTL, ENABLE)?;
    ensure!(
        q.reg(RXDCTL)? & ENABLE == 0,
        "a ring past the top of the address space: the queue enabled"
    );
    q.set(RDBAH, 0)?;
    q.set(RDBAL, IOVA_RING as u32)?;
    q.set(SRRCTL, SRRCTL_2K)?;
    q.set(RDH, 5)?;
    ensure!(
        q.reg(RDH)? == 5,
        "RDH written while disabled: {}",
        q.reg(RDH)?
    );
    q.set(RDH, 0)?;
    q.set(RDT, 0)?;
    q.set(RXDCTL, u32::MAX)?;
    let v = q.reg(RXDCTL)?;
    ensure!(
        v == RXDCTL_MASK,
        "RXDCTL after writing ones to a valid ring: {v:#x}, expected {RXDCTL_MASK:#x}"
    );
    // Enabled: the ring's place, size and head stay.
    q.set(RDBAL, 0x20_0000)?;
    q.set(RDBAH, 1)?;
    q.set(RDLEN, 2 * RING_DESCS * 16)?;
    q.set(RDH, 5)?;
    for (r, v) in [
        (RDBAL, IOVA_RING as u32),
        (RDBAH, 0),
        (RDLEN, RING_DESCS * 16),
        (RDH, 0),
    ] {
        let got = q.reg(r)?;
        ensure!(
            got == v,
            "register {r:#x} written while enabled: {got:#x}, expected {v:#x}"
        );
    }
    q.set(RXDCTL, 0)?;
    ensure!(q.reg(RXDCTL)? == 0, "RXDCTL after writing 0");
    println!(
        "  receive registers: 0 at open, masked as the VF's, ring fixed while enabled; a ring past the address space is never enabled"
    );
    Ok(())
}

/// Where the transmit ring (one page) and the frame it sends (the next
/// page) are mapped while the device receives and transmits at once.
const IOVA_TX: u64 = 0x40_0000;
/// Frames the PF sends while the device transmits, one at a time, and
/// the pause before each (the device rings doorbells meanwhile).
const WHILE_TX_FRAMES: usize = 15;
const WHILE_TX_GAP: Duration = Duration::from_millis(2);

/// Receive while the same device transmits: the VF signals both queues on
/// its one vector, and a transmit doorbell holds the queues while it waits
/// for the VF, so a frame arriving then is delivered by the doorbell's
/// server when it is done rather than by the interrupt thread. Each frame
/// is the last thing that happens: the device transmits without pause
/// until the PF has sent it, then stops, and the frame must arrive (no
/// later doorbell or interrupt would deliver it).
fn while_transmitting(
    q: &mut Ring<'_>,
    tx: &Sender,
    dst: &[u8; 6],
    pf_mac: &[u8; 6],
    seq: &mut u32,
) -> TestResult {
    let dev = q.dev;
    q.program(IOVA_RING, SRRCTL_2K)?;
    q.give(RING_DESCS - 1)?;
    let txmem = Buffer::new(2 * PAGE)?;
    let out = frame(pf_mac, 0, 60);
    txmem.write(PAGE, &out);
    ctx(
        dev.map_dma(IOVA_TX, txmem.addr(0), PAGE as u64, true),
        "map the transmit ring",
    )?;
    ctx(
        dev.map_dma(IOVA_TX + PAGE as u64, txmem.addr(PAGE), PAGE as u64, false),
        "map the transmitted frame",
    )?;
    program_tx(dev, IOVA_TX)?;
    let cmd = out.len() as u32 | DTYP_DATA | DEXT | IFCS | TX_EOP | RS;
    let desc = tx_desc(IOVA_TX + PAGE as u64, cmd, (out.len() as u32) << 14);
    let sent = spread(dst, seq, WHILE_TX_FRAMES);
    let doorbells = AtomicU32::new(0);
    let mut tail = 0;
    for (k, f) in sent.iter().enumerate() {
        let before = doorbells.load(Ordering::SeqCst);
        std::thread::scope(|s| -> TestResult {
            let pf = s.spawn(|| -> TestResult {
                // Once the device transmits.
                while doorbells.load(Ordering::SeqCst) == before {
                    std::thread::sleep(Duration::from_micros(100));
                }
                std::thread::sleep(WHILE_TX_GAP);
                tx.send(f)
            });
            // Half the ring a doorbell, until the PF sent the frame.
            while !pf.is_finished() {
                for _ in 0..RING_DESCS / 2 {
                    txmem.write(tail as usize * 16, &desc);
                    tail = (tail + 1) % RING_DESCS;
                }
                let rung = write_reg(dev, TDT, tail);
                // Counted even when it failed: the sender waits for it.
                doorbells.fetch_add(1, Ordering::SeqCst);
                rung?;
            }
            pf.join()
                .map_err(|_| "the PF's sender panicked".to_string())?
        })?;
        let head = read_reg(dev, TDH)?;
        ensure!(
            head == tail,
            "the transmit queue stopped short: TDH {head}, TDT {tail}"
        );
        q.expect_frame(
            f,
            &format!("frame {k} of {WHILE_TX_FRAMES}, received while transmitting"),
        )?;
    }
    write_reg(dev, TXDCTL, 0)?;
    q.expect_quiet("after the frames received while transmitting")?;
    ctx(
        dev.unmap_dma(IOVA_TX, 2 * PAGE as u64),
        "unmap the transmit memory",
    )?;
    println!(
        "  {WHILE_TX_FRAMES} frames received while the device transmitted ({} doorbells of {} frames), each the last event: all delivered in order",
        doorbells.load(Ordering::SeqCst),
        RING_DESCS / 2
    );
    Ok(())
}

/// The interrupt of a delivery: on the vector IVAR0's byte 0 names, with
/// the enable and auto-clear of the transmit side; none masked or unrouted.
fn interrupts(q: &mut Ring<'_>, tx: &Sender, dst: &[u8; 6], seq: &mut u32) -> TestResult {
    let efds = enable_msix(q.dev)?;
    q.program(IOVA_RING, SRRCTL_2K)?;
    q.give(RING_DESCS - 1)?;
    q.set(EIMC, 0x7)?;
    q.set(EICR, 0x7)?;
    let mut one = |q: &mut Ring<'_>, what: &str| -> TestResult {
        if q.free() > 0 {
            q.give(q.free())?;
        }
        let f = frames(dst, seq, &[200]);
        tx.send_all(&f)?;
        q.expect_frame(&f[0], what)
    };
    // Routed to vector 0, enabled, auto-cleared: a message per delivery,
    // none elsewhere, EICR left clear.
    q.set(IVAR0, RX_TO_VECTOR0)?;
    q.set(EIAC, 0x1)?;
    q.set(EIMS, 0x1)?;
    for _ in 0..3 {
        one(q, "a frame routed to vector 0")?;
        let got = wait_fired(&efds, 0)?;
        ensure!(
            got[0] >= 1 && got[1] == 0 && got[2] == 0,
            "a delivery routed to vector 0: vectors fired {got:?}"
        );
    }
    ensure!(
        q.reg(EICR)? == 0,
        "EICR after auto-clear: {:#x}",
        q.reg(EICR)?
    );
    // Routed to vector 2 instead.
    q.set(EIMC, 0x7)?;
    q.set(IVAR0, RX_TO_VECTOR2)?;
    q.set(EIAC, 0x4)?;
    q.set(EIMS, 0x4)?;
    one(q, "a frame routed to vector 2")?;
    let got = wait_fired(&efds, 2)?;
    ensure!(
        got[0] == 0 && got[1] == 0 && got[2] >= 1,
        "a delivery routed to vector 2: vectors fired {got:?}"
    );
    // Masked (EIMC), no auto-clear: no message; the cause is kept and
    // fires when enabled again.
    q.set(EIAC, 0)?;
    q.set(EIMC, 0x4)?;
    one(q, "a frame while its vector is masked")?;
    std::thread::sleep(SETTLE);
    ensure!(
        fired(&efds)? == [0, 0, 0],
        "a delivery while its vector is masked"
    );
    q.set(EIMS, 0x4)?;
    let got = wait_fired(&efds, 2)?;
    ensure!(
        got == [0, 0, 1],
        "the masked delivery's cause when enabled: vectors fired {got:?}"
    );
    q.set(EICR, 0x7)?;
    // IVAR0's valid bit clear: the delivery raises nothing.
    q.set(IVAR0, RX_TO_VECTOR2 & 0x3)?;
    q.set(EIMS, 0x7)?;
    one(q, "a frame routed nowhere")?;
    std::thread::sleep(SETTLE);
    ensure!(fired(&efds)? == [0, 0, 0], "a delivery routed nowhere");
    ensure!(q.reg(EICR)? == 0, "EICR after a delivery routed nowhere");
    q.set(EIMC, 0x7)?;
    q.set(IVAR0, 0)?;
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
        "  receive interrupts on the vector IVAR0's byte 0 names (0, then 2), none masked (the cause kept) or unrouted"
    );
    Ok(())
}

/// The refusals: buffers the device must not write are written back with
/// RXE and left as they were, and the next frame lands in the next
/// descriptor; a ring the device cannot read stops the queue.
fn refusals(q: &mut Ring<'_>, tx: &Sender, dst: &[u8; 6], seq: &mut u32) -> TestResult {
    q.program(IOVA_RING, SRRCTL_2K)?;
    // The writable mapping's last 100 bytes (frames of 200 run past
    // them), and the read-only page.
    let end = IOVA_RING + MAP_LEN as u64;
    q.mem.write(MAP_LEN - 100, &[CANARY; 100]);
    q.mem.write(MAP_LEN, &[CANARY; PAGE]);
    let bad = [
        (IOVA_NONE, "an unmapped buffer"),
        (end - 100, "a buffer past its mapping"),
        (IOVA_RO, "a read-only buffer"),
    ];
    for (addr, _) in bad {
        q.put(addr);
        q.put_slot();
    }
    q.set(RDT, q.tail)?;
    let sent = frames(dst, seq, &[200, 300, 200, 301, 200, 302]);
    tx.send_all(&sent)?;
    for (k, (_, what)) in bad.iter().enumerate() {
        q.expect_refused(what)?;
        q.expect_frame(&sent[2 * k + 1], &format!("the frame after {what}"))?;
    }
    ensure!(
        q.mem.read(MAP_LEN - 100, 100).iter().all(|&b| b == CANARY),
        "the mapping's end written by a frame running past it"
    );
    ensure!(
        q.mem.read(MAP_LEN, PAGE).iter().all(|&b| b == CANARY),
        "the read-only page written"
    );
    q.expect_quiet("after the refusals")?;

    // A ring where nothing is mapped: the first frame stops the queue.
    q.set(RXDCTL, 0)?;
    q.set(RDBAL, IOVA_NONE as u32)?;
    q.set(RDH, 0)?;
    q.set(RDT, 0)?;
    q.set(RXDCTL, ENABLE)?;
    q.set(RDT, 4)?;
    let stopper = frames(dst, seq, &[100]);
    tx.send_all(&stopper)?;
    let start = Instant::now();
    while q.reg(RXDCTL)? & ENABLE != 0 {
        ensure!(
            start.elapsed() < DEADLINE,
            "a ring the device cannot read: the queue still enabled {DEADLINE:?} after a frame"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "  unmapped, out-of-range and read-only buffers: RXE, length 0, untouched, the next frame in the next descriptor; an unreadable ring stops the queue"
    );
    Ok(())
}

/// The source's ring, partly used, with 1 KiB buffers and a tail short of
/// the ring's end, migrated to `target` (an mdev on another VF, the same
/// memory mapped into its container): frames for the target's VF go on in
/// the same ring at the migrated head, split by the migrated buffer size,
/// held at the migrated tail; nothing is written while the source is
/// stopped, and frames for the source's VF after it stopped never appear.
fn migrate<'a>(
    q: &mut Ring<'a>,
    target: &'a Device,
    tx: &Sender,
    (mac0, mac1): (&[u8; 6], &[u8; 6]),
    seq: &mut u32,
) -> TestResult {
    let source = q.dev;
    q.program(IOVA_RING, SRRCTL_1K)?;
    q.give(8)?;
    for f in frames(mac0, seq, &[200, 60, 1000]) {
        tx.send(&f)?;
        q.expect_frame(&f, "a frame before the migration")?;
    }
    // The interrupt set-up goes along.
    q.set(EIMC, 0x7)?;
    q.set(EICR, 0x7)?;
    q.set(IVAR0, RX_TO_VECTOR0)?;
    q.set(EIAC, 0x1)?;
    q.set(EIMS, 0x1)?;
    ctx(source.set_state(State::Stop.raw()), "SET STOP")?;
    tx.send_all(&frames(mac0, seq, &[200, 400]))?;
    q.expect_quiet("frames for the stopped source's VF")?;
    let stream = save_stopped(source)?;
    map(target, &q.mem, true)?;
    let efds = enable_msix(target)?;
    load_into(target, &stream)?;
    ensure!(fired(&efds)? == [0, 0, 0], "the target raised at load");
    q.dev = target;
    for (r, v) in [
        (RDBAL, IOVA_RING as u32),
        (RDBAH, 0),
        (RDLEN, RING_DESCS * 16),
        (SRRCTL, SRRCTL_1K),
        (RDH, 3),
        (RDT, 8),
        (RXDCTL, ENABLE),
        (IVAR0, RX_TO_VECTOR0),
    ] {
        let got = q.reg(r)?;
        ensure!(got == v, "the target's {r:#x}: {got:#x}, expected {v:#x}");
    }
    ctx(
        target.set_state(State::Running.raw()),
        "SET RUNNING on the target",
    )?;
    q.expect_quiet("the target running, no frame for its VF yet")?;
    // 1514 bytes in two 1 KiB buffers (3, 4), then 5 and 6; 7 is the
    // last before the migrated tail.
    let sent = frames(mac1, seq, &[1514, 300, 60, 200, 250]);
    tx.send_all(&sent)?;
    for f in &sent[..4] {
        q.expect_frame(f, "a frame for the target's VF")?;
    }
    // The fifth is held at RDT 8 until the tail moves.
    q.expect_quiet("the migrated tail reached")?;
    let got = wait_fired(&efds, 0)?;
    ensure!(
        got[0] >= 1 && got[1] == 0 && got[2] == 0,
        "the target's deliveries: vectors fired {got:?}, expected vector 0"
    );
    q.give(1)?;
    q.expect_frame(&sent[4], "the frame held at the migrated tail")?;
    // The source's VF is not the target's: its frames stay out.
    tx.send_all(&frames(mac0, seq, &[200]))?;
    q.expect_quiet("frames for the source's VF after the migration")?;
    ctx(target.reset(), "reset the target")?;
    q.dev = source;
    ctx(source.reset(), "reset the source")?;
    println!(
        "  migrated to the mdev on VF1: its frames continue the source's ring at the migrated RDH, SRRCTL and RDT, on the migrated vector; none while stopped, none for VF0's MAC"
    );
    Ok(())
}

/// `rmdev-vm-test vf-rx UUID OTHER-UUID PF-NETDEV VF0-MAC VF1-MAC`: UUID
/// is an mdev on the VF whose MAC address the operator set to VF0-MAC,
/// OTHER-UUID one on the VF with VF1-MAC, the migration target.
pub(crate) fn vf_rx(
    uuid: &str,
    other: &str,
    pf_if: &str,
    vf0_mac: &str,
    vf1_mac: &str,
) -> TestResult {
    let mac0 = parse_mac(vf0_mac)?;
    let mac1 = parse_mac(vf1_mac)?;
    let tx = Sender::open(pf_if)?;
    let dev = ctx(Device::open(uuid), "open the mdev")?;
    let mem = Buffer::new(MEM_LEN)?;
    map(&dev, &mem, true)?;
    ctx(
        dev.map_dma(IOVA_RO, mem.addr(MAP_LEN), PAGE as u64, false),
        "map a page read-only",
    )?;
    let mut q = Ring {
        dev: &dev,
        mem,
        next: 0,
        tail: 0,
        buf: 2048,
    };
    let mut seq = 0u32;
    registers(&q)?;

    // Ten frames for a ring of 15 free descriptors: all in order, none
    // after them.
    q.program(IOVA_RING, SRRCTL_2K)?;
    q.give(RING_DESCS - 1)?;
    let sent = frames(&mac0, &mut seq, &LENGTHS);
    tx.send_all(&sent)?;
    for (k, f) in sent.iter().enumerate() {
        q.expect_frame(f, &format!("frame {k} of 10"))?;
    }
    q.expect_quiet("after 10 frames")?;
    println!("  10 frames of 60 to 1514 bytes from {pf_if} to VF0: in the ring in order, byte for byte, DD|EOP and lengths exact, nothing more");

    // 40 more in batches of 15 at most, the descriptors recycled through
    // RDT: the ring wraps three times.
    let mut left = 40;
    while left > 0 {
        q.give(q.free())?;
        let batch = spread(&mac0, &mut seq, left.min(15));
        tx.send_all(&batch)?;
        for f in &batch {
            q.expect_frame(f, "a frame of the 40")?;
        }
        left -= batch.len();
    }
    q.expect_quiet("after 40 more frames")?;
    println!("  40 more in batches of up to 15, descriptors recycled by RDT, the ring wrapped");

    // 1 KiB buffers: longer frames continue in the next descriptors.
    q.program(IOVA_RING, SRRCTL_1K)?;
    q.give(RING_DESCS - 1)?;
    let sent = frames(&mac0, &mut seq, &[1514, 1024, 1025, 60]);
    tx.send_all(&sent)?;
    for f in &sent {
        q.expect_frame(f, &format!("a frame of {} bytes in 1 KiB buffers", f.len()))?;
    }
    ensure!(
        q.next == 6,
        "frames of 1514, 1024, 1025, 60 bytes took {} descriptors, expected 6",
        q.next
    );
    q.expect_quiet("after the frames in 1 KiB buffers")?;
    println!(
        "  1 KiB buffers: a 1514-byte frame in 1024 + 490 bytes, EOP on the second; 1024 bytes in one, 1025 in two"
    );

    // No free descriptor: frames are held, and delivered once RDT moves.
    q.program(IOVA_RING, SRRCTL_2K)?;
    q.give(3)?;
    let sent = spread(&mac0, &mut seq, 8);
    tx.send_all(&sent)?;
    for f in &sent[..3] {
        q.expect_frame(f, "a frame before the ring filled")?;
    }
    q.expect_quiet("5 frames with no descriptor free")?;
    q.give(RING_DESCS - 1)?;
    for f in &sent[3..] {
        q.expect_frame(f, "a held frame")?;
    }
    q.expect_quiet("after the held frames")?;
    println!(
        "  5 frames arriving with no descriptor free: held, delivered in order when RDT moved"
    );

    let pf_mac = mac_of(pf_if)?;
    while_transmitting(&mut q, &tx, &mac0, &pf_mac, &mut seq)?;
    interrupts(&mut q, &tx, &mac0, &mut seq)?;
    refusals(&mut q, &tx, &mac0, &mut seq)?;

    // A reset forgets the queue, and the device no longer writes the ring.
    q.program(IOVA_RING, SRRCTL_1K)?;
    q.give(RING_DESCS - 1)?;
    // The frame that met the unreadable ring went with the vendor's ring,
    // and the VF drops what arrives while its queue is off (QEMU's igb
    // drops for a disabled queue): none of it reaches the new ring.
    q.expect_quiet("the frame that met the unreadable ring: dropped")?;
    let f = frames(&mac0, &mut seq, &[300]);
    tx.send_all(&f)?;
    q.expect_frame(&f[0], "a frame before the reset")?;
    ctx(dev.reset(), "VFIO_DEVICE_RESET")?;
    regs_zero(q.dev, "after a reset")?;
    let after_reset = frames(&mac0, &mut seq, &[300, 400]);
    tx.send_all(&after_reset)?;
    q.untouched("frames after a reset")?;
    ensure!(q.reg(RDH)? == 0, "RDH moved after a reset");
    // So does closing the device: the next user sees no state, and the
    // old ring is not written.
    q.program(IOVA_RING, SRRCTL_1K)?;
    q.give(RING_DESCS - 1)?;
    // Frames sent while the queue was reset are dropped, not held for
    // the next ring.
    q.expect_quiet("frames sent while the queue was reset: dropped")?;
    let Ring {
        mem, next, tail, ..
    } = q;
    drop(dev);
    let after_close = frames(&mac0, &mut seq, &[300, 400]);
    tx.send_all(&after_close)?;
    let dev = ctx(Device::open(uuid), "open the mdev again")?;
    regs_zero(&dev, "for the next user")?;
    let mut q = Ring {
        dev: &dev,
        mem,
        next,
        tail,
        buf: 1024,
    };
    q.untouched("frames after the close")?;
    map(&dev, &q.mem, true)?;
    q.program(IOVA_RING, SRRCTL_2K)?;
    q.give(RING_DESCS - 1)?;
    // Nor are the last user's frames held for the next user.
    q.expect_quiet("frames sent while the mdev was closed: not in the next user's ring")?;
    let f = frames(&mac0, &mut seq, &[500]);
    tx.send_all(&f)?;
    q.expect_frame(&f[0], "the next user's first frame")?;
    println!(
        "  a reset and the next user: receive registers 0, the old ring untouched by later frames"
    );

    let target = ctx(Device::open(other), "open the target mdev")?;
    migrate(&mut q, &target, &tx, (&mac0, &mac1), &mut seq)?;
    Ok(())
}
