// SPDX-License-Identifier: GPL-2.0

//! Receive queue 0, shadowed: the user programs a ring of 82576 advanced
//! receive descriptors in its own memory and gives descriptors to the
//! device with the tail doorbell; the VF receives into buffers of the
//! vendor's own ([`Coherent`] memory, a ring of [`HOST_DESCS`] 2 KiB
//! buffers), and the vendor copies each frame into the user's buffers
//! ([`write_whole`]), writes the user's descriptors back and raises the
//! queue's interrupt.
//!
//! So the VF never reaches the user's memory for receive: every address it
//! sees is the vendor's. The vendor writes only through the user's IOMMU
//! context, where the user mapped memory writable; a buffer that is not
//! (unmapped, past its mapping, read-only) is refused: its descriptor is
//! written back with the error bit (RXE) and no length, and the rest of
//! the frame is dropped, nothing of it written. A ring the vendor cannot read or write back stops
//! the queue (RXDCTL.ENABLE reads 0 again).
//!
//! Delivery runs when the VF signals the vendor's vector (from its
//! interrupt thread, or at the end of the transmit doorbell that held the
//! queues then), when the user writes the tail, and when the device runs
//! again; only while the device runs. A frame that finds no free
//! descriptor of the user's stays in the vendor's ring until the user
//! gives some (the VF drops frames once the vendor's ring is full, as it
//! does when a guest's is). When the device stops, what the VF received is
//! delivered and its queue disabled: nothing is written into the user's
//! memory while the device is stopped.

use kernel::prelude::*;

use super::hw::{Ctx, VfHw, QUEUE_ENABLE as ENABLE};
use super::ring::{hw_ring_lost, RingRegs, BAL_MASK, DESC, RING_LEN_MASK};
use super::rmdev::pci::Coherent;

/// The queue's registers (queue 0), user view and hardware alike.
pub(crate) const RDBAL: u64 = 0x2800;
pub(crate) const RDBAH: u64 = 0x2804;
pub(crate) const RDLEN: u64 = 0x2808;
pub(crate) const SRRCTL: u64 = 0x280c;
pub(crate) const RDH: u64 = 0x2810;
pub(crate) const RDT: u64 = 0x2818;
pub(crate) const RXDCTL: u64 = 0x2828;
/// RXDCTL: the thresholds (bits 4:0, 12:8, 20:16) and the enable, the
/// bits a user's write keeps.
const RXDCTL_BITS: u32 = ENABLE | 0x001f_1f1f;
/// SRRCTL: packet buffer size (bits 6:0, KiB), header buffer size (bits
/// 11:8), descriptor type (bits 27:25), drop enable (bit 31). The vendor
/// writes advanced one-buffer descriptors whatever the type says.
const SRRCTL_BITS: u32 = 0x8e00_0f7f;
const BSIZE_MASK: u32 = 0x7f;
/// SRRCTL of the vendor's ring: drop enable, advanced one-buffer
/// descriptors, 2 KiB buffers.
const HOST_SRRCTL: u32 = (1 << 31) | (1 << 25) | 2;

/// Write-back status bits (dword 2) and the length (dword 3, bits 15:0).
const DD: u32 = 1;
const EOP: u32 = 1 << 1;
const RXE: u32 = 1 << 31;
const LEN_MASK: u32 = 0xffff;

/// The vendor's ring: 64 descriptors with a 2 KiB buffer each, two to a
/// page.
const HOST_DESCS: usize = 64;
const HOST_BUF: usize = 2048;
const PAGE: usize = super::rmdev::dma::PAGE_SIZE as usize;
const BUFS_PER_PAGE: usize = PAGE / HOST_BUF;

/// The user's view of the queue: what it programmed.
#[derive(Clone, Copy, Default)]
pub(crate) struct RxRegs {
    /// RDBAL, RDBAH, RDLEN, RDH, RDT.
    pub(crate) ring: RingRegs,
    pub(crate) srrctl: u32,
    pub(crate) rxdctl: u32,
}

/// The stream record of the queue: the seven registers, in this order.
pub(crate) const RECORD_LEN: usize = 7 * 4;

impl RxRegs {
    fn enabled(&self) -> bool {
        self.rxdctl & ENABLE != 0
    }

    /// The size of the user's buffers (0 in SRRCTL: 2 KiB, the reset
    /// value's).
    fn buf_size(&self) -> usize {
        match self.srrctl & BSIZE_MASK {
            0 => 2048,
            k => k as usize * 1024,
        }
    }

    /// The descriptors the user gave the device: from the head up to the
    /// tail (a tail outside the ring gives none).
    fn free(&self) -> u32 {
        let n = self.ring.count();
        if n == 0 || self.ring.head >= n || self.ring.tail >= n {
            return 0;
        }
        (self.ring.tail + n - self.ring.head) % n
    }

    /// The registers as the stream carries them.
    pub(crate) fn to_record(self, out: &mut [u8]) -> Result {
        let words = [
            self.ring.bal,
            self.ring.bah,
            self.ring.len,
            self.srrctl,
            self.ring.head,
            self.ring.tail,
            self.rxdctl,
        ];
        super::put_words(out, &words)
    }

    /// The registers from a stream record, checked: values a user could
    /// have written (masks), head and tail inside the ring.
    pub(crate) fn from_record(rec: &[u8]) -> Result<Self> {
        let w: [u32; RECORD_LEN / 4] = super::get_words(rec)?;
        let r = RxRegs {
            ring: RingRegs {
                bal: w[0],
                bah: w[1],
                len: w[2],
                head: w[4],
                tail: w[5],
            },
            srrctl: w[3],
            rxdctl: w[6],
        };
        if !r.ring.valid() || r.srrctl & !SRRCTL_BITS != 0 || r.rxdctl & !RXDCTL_BITS != 0 {
            return Err(EINVAL);
        }
        Ok(r)
    }
}

/// The hardware side, once set up: the vendor's ring and buffers in the
/// VF.
struct HostRing {
    ring: Coherent,
    /// The buffers, [`BUFS_PER_PAGE`] to a page: descriptor `i`'s is in
    /// page `i / BUFS_PER_PAGE`.
    pages: KVec<Coherent>,
    /// The next descriptor the VF completes.
    next: usize,
}

impl HostRing {
    /// Gives descriptor `i` its buffer again (the read format; writing the
    /// header address clears the status the write-back put there).
    fn refill(&mut self, i: usize) -> Result {
        let page = self.pages.get(i / BUFS_PER_PAGE).ok_or(EINVAL)?;
        let a = page.dma_addr() + ((i % BUFS_PER_PAGE) * HOST_BUF) as u64;
        let at = i * DESC;
        self.ring.write32(at, a as u32)?;
        self.ring.write32(at + 4, (a >> 32) as u32)?;
        self.ring.write32(at + 8, 0)?;
        self.ring.write32(at + 12, 0)
    }

    /// Copies descriptor `i`'s first `out.len()` received bytes.
    fn copy_out(&self, i: usize, out: &mut [u8]) -> Result {
        let page = self.pages.get(i / BUFS_PER_PAGE).ok_or(EINVAL)?;
        page.read_into((i % BUFS_PER_PAGE) * HOST_BUF, out)
    }
}

/// Writes `data` into the user's memory at `iova`, all of it or nothing:
/// the pages are pinned writable first (which fails unless every one is
/// mapped writable), written through the pin, and unpinned (which logs
/// them dirty), within the delivery that holds the queues' lock.
fn write_whole(cx: &Ctx<'_>, iova: u64, data: &[u8]) -> Result {
    let end = iova.checked_add(data.len() as u64).ok_or(EINVAL)?;
    let page = PAGE as u64;
    let first = iova & !(page - 1);
    let pages = ((end - 1) / page - first / page + 1) as usize;
    let pin = cx.guest.pin(first, pages, true)?;
    let written = cx.guest.write_pinned(&pin, (iova - first) as usize, data);
    // A pin the framework took back meanwhile (the user unmapped it) is
    // gone already.
    let _ = cx.guest.unpin(pin);
    written
}

/// The queue.
pub(crate) struct RxQueue {
    pub(crate) regs: RxRegs,
    host: Option<HostRing>,
    /// The rest of a refused frame is dropped (its first part found a
    /// buffer the vendor could not write).
    dropping: bool,
    /// Whether the queue stopped since the last reset (one log line per
    /// user, whatever it does).
    stopped_once: bool,
    /// A descriptor was written back since the owner last asked: the
    /// queue's interrupt cause.
    completed: bool,
    /// Where a frame's bytes are copied between the vendor's buffer and
    /// the user's ([`HOST_BUF`] bytes once the queue ran).
    bounce: KVec<u8>,
}

impl RxQueue {
    pub(crate) fn new() -> Self {
        RxQueue {
            regs: RxRegs::default(),
            host: None,
            dropping: false,
            stopped_once: false,
            completed: false,
            bounce: KVec::new(),
        }
    }

    /// Whether the vendor's ring is set up in the VF.
    pub(crate) fn has_hw(&self) -> bool {
        self.host.is_some()
    }

    /// Whether a descriptor was written back since the last call.
    pub(crate) fn take_completed(&mut self) -> bool {
        core::mem::take(&mut self.completed)
    }

    /// Whether `offset` is one of the queue's registers.
    pub(crate) fn owns(offset: u64) -> bool {
        matches!(offset, RDBAL | RDBAH | RDLEN | SRRCTL | RDH | RDT | RXDCTL)
    }

    /// The user reads a queue register.
    pub(crate) fn read(&self, offset: u64) -> u32 {
        let r = &self.regs;
        match offset {
            RDBAL => r.ring.bal,
            RDBAH => r.ring.bah,
            RDLEN => r.ring.len,
            SRRCTL => r.srrctl,
            RDH => r.ring.head,
            RDT => r.ring.tail,
            RXDCTL => r.rxdctl,
            _ => 0,
        }
    }

    /// The user writes a queue register. The ring's set-up only changes
    /// while the queue is disabled, as the hardware requires. Returns
    /// whether the doorbell rang (the tail or the enable written): the
    /// owner then starts the queue and delivers.
    #[must_use]
    pub(crate) fn write(&mut self, cx: &Ctx<'_>, vf: &mut VfHw, offset: u64, value: u32) -> bool {
        let r = &mut self.regs;
        let idle = !r.enabled();
        match offset {
            RDBAL if idle => r.ring.bal = value & BAL_MASK,
            RDBAH if idle => r.ring.bah = value,
            RDLEN if idle => r.ring.len = value & RING_LEN_MASK,
            RDH if idle => r.ring.head = value & 0xffff,
            SRRCTL => r.srrctl = value & SRRCTL_BITS,
            RDT => {
                r.ring.tail = value & 0xffff;
                return true;
            }
            RXDCTL => {
                let mut v = value & RXDCTL_BITS;
                if !r.ring.fits() {
                    // A ring past the end of the address space: refused.
                    v &= !ENABLE;
                }
                r.rxdctl = v;
                if v & ENABLE == 0 && self.host.is_some() {
                    self.stop_hw(cx, vf);
                }
                return true;
            }
            _ => {}
        }
        false
    }

    /// Forgets the user's set-up (a function reset, or the device opened
    /// or closed); the hardware is stopped already.
    pub(crate) fn reset(&mut self) {
        self.regs = RxRegs::default();
        self.dropping = false;
        self.stopped_once = false;
        self.completed = false;
    }

    /// Disables the VF's queue ([`VfHw::disable_queue`]); frames it
    /// received and the vendor did not deliver are dropped with the
    /// vendor's ring.
    pub(crate) fn stop_hw(&mut self, cx: &Ctx<'_>, vf: &mut VfHw) {
        vf.disable_queue(cx, RXDCTL as usize);
        // Nothing to deliver from the interrupt any more.
        let _ = vf.set_vector(cx, false);
        // Freed once the hardware no longer reaches it.
        self.host = None;
        self.dropping = false;
    }

    /// Whether the VF lost the vendor's ring ([`hw_ring_lost`]).
    pub(crate) fn lost_hw(&self, cx: &Ctx<'_>) -> bool {
        self.host.is_some() && hw_ring_lost(cx.bar, RDLEN, HOST_DESCS)
    }

    /// Starts the VF's queue on the vendor's ring if the user enabled a
    /// ring of descriptors and the device runs; a queue that cannot start
    /// stops.
    pub(crate) fn ensure_hw(&mut self, cx: &Ctx<'_>, vf: &mut VfHw) {
        let wanted = !vf.stopped && self.regs.enabled() && self.regs.ring.count() > 0;
        if !wanted || self.host.is_some() {
            return;
        }
        if let Err(e) = self.start_hw(cx, vf) {
            self.stop(cx, vf, e);
        }
    }

    /// The VF up, the vendor's ring and buffers allocated, programmed and
    /// given to the hardware.
    fn start_hw(&mut self, cx: &Ctx<'_>, vf: &mut VfHw) -> Result {
        while self.bounce.len() < HOST_BUF {
            self.bounce.extend_from_slice(&[0u8; 256], GFP_KERNEL)?;
        }
        let ring = cx.func.alloc_coherent(HOST_DESCS * DESC)?;
        let mut pages = KVec::with_capacity(HOST_DESCS / BUFS_PER_PAGE, GFP_KERNEL)?;
        for _ in 0..HOST_DESCS / BUFS_PER_PAGE {
            pages.push(cx.func.alloc_coherent(PAGE)?, GFP_KERNEL)?;
        }
        let mut host = HostRing {
            ring,
            pages,
            next: 0,
        };
        for i in 0..HOST_DESCS {
            host.refill(i)?;
        }
        vf.up(cx)?;
        let bar = cx.bar;
        let a = host.ring.dma_addr();
        bar.write32(RXDCTL as usize, 0)?;
        bar.write32(SRRCTL as usize, HOST_SRRCTL)?;
        bar.write32(RDBAL as usize, a as u32)?;
        bar.write32(RDBAH as usize, (a >> 32) as u32)?;
        bar.write32(RDLEN as usize, (HOST_DESCS * DESC) as u32)?;
        bar.write32(RDH as usize, 0)?;
        bar.write32(RDT as usize, 0)?;
        // What the VF receives is delivered from its interrupt.
        vf.set_vector(cx, true)?;
        // From here the hardware may reach the ring: the owner stops it
        // before the ring goes.
        self.host = Some(host);
        bar.write32(RXDCTL as usize, ENABLE)?;
        // Every descriptor but one is the hardware's (a full ring would
        // look empty).
        bar.write32(RDT as usize, (HOST_DESCS - 1) as u32)
    }

    /// Stops the queue after an error: the user's enable clears, as a DMA
    /// error stops the real queue, and the hardware is off.
    fn stop(&mut self, cx: &Ctx<'_>, vf: &mut VfHw, e: Error) {
        if !self.stopped_once {
            // ETIMEDOUT may be the PF's: its interface down.
            pr_warn!("receive queue stopped ({:?})\n", e);
            self.stopped_once = true;
        }
        self.regs.rxdctl &= !ENABLE;
        if self.host.is_some() {
            self.stop_hw(cx, vf);
        }
    }

    /// Delivers what the VF received into the user's descriptors, as far
    /// as the user gave descriptors.
    pub(crate) fn deliver(&mut self, cx: &Ctx<'_>, vf: &mut VfHw) {
        if vf.stopped || !self.regs.enabled() {
            return;
        }
        let mut given_back = false;
        let result = loop {
            match self.deliver_one(cx) {
                Ok(true) => given_back = true,
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Some(host) = self.host.as_ref().filter(|_| given_back) {
            // The descriptors refilled go back to the hardware as the tail
            // moves up to the one before the next to complete: the
            // hardware has all the others.
            let tail = (host.next + HOST_DESCS - 1) % HOST_DESCS;
            if let Err(e) = cx.bar.write32(RDT as usize, tail as u32) {
                self.stop(cx, vf, e);
                return;
            }
        }
        if let Err(e) = result {
            self.stop(cx, vf, e);
        }
    }

    /// Delivers the vendor's next completed descriptor, if the VF
    /// completed it and the user has room for it. `false`: nothing (more)
    /// to deliver now.
    fn deliver_one(&mut self, cx: &Ctx<'_>) -> Result<bool> {
        let Some(host) = self.host.as_mut() else {
            return Ok(false);
        };
        let i = host.next;
        let status = host.ring.read32(i * DESC + 8)?;
        if status & DD == 0 {
            return Ok(false);
        }
        // The buffer and the length are read after the status (the VF
        // writes the status last): the kernel's `dma_rmb()`, a compiler
        // barrier on x86.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let len = ((host.ring.read32(i * DESC + 12)? & LEN_MASK) as usize).min(HOST_BUF);
        let end_of_frame = status & EOP != 0;
        let size = self.regs.buf_size();
        let need = len.div_ceil(size).max(1) as u32;
        if !self.dropping {
            if self.regs.free() < need {
                // Held until the user gives descriptors.
                return Ok(false);
            }
            let data = self.bounce.get_mut(..len).ok_or(EINVAL)?;
            host.copy_out(i, data)?;
            self.dropping = !self.copy_in(cx, len, size, end_of_frame)?;
        }
        if end_of_frame {
            self.dropping = false;
        }
        let host = self.host.as_mut().ok_or(EINVAL)?;
        host.refill(i)?;
        host.next = (i + 1) % HOST_DESCS;
        Ok(true)
    }

    /// Writes the bounce buffer's first `len` bytes into the user's
    /// descriptors from the head, `size` bytes to a buffer
    /// ([`write_whole`]), and writes them back. Returns `false` if a buffer was refused (its descriptor
    /// written back with RXE: the rest of the frame is dropped). An error:
    /// the user's ring cannot be read or written.
    fn copy_in(
        &mut self,
        cx: &Ctx<'_>,
        len: usize,
        size: usize,
        end_of_frame: bool,
    ) -> Result<bool> {
        let n = self.regs.ring.count();
        let mut done = 0;
        loop {
            let piece = (len - done).min(size);
            let last = done + piece == len;
            let at = self.regs.ring.desc_at(self.regs.ring.head)?;
            let mut raw = [0u8; 8];
            cx.guest.read(at, &mut raw)?;
            let buf = u64::from_le_bytes(raw);
            let data = self.bounce.get(done..done + piece).ok_or(EINVAL)?;
            let refused = piece > 0 && write_whole(cx, buf, data).is_err();
            let (status, written) = match refused {
                true => (DD | EOP | RXE, 0),
                false if last && end_of_frame => (DD | EOP, piece),
                false => (DD, piece),
            };
            // The descriptor's other words first, its status last (a user
            // polling DD sees the length with it).
            let mut rest = [0u8; 16];
            rest[12..].copy_from_slice(&(written as u32).to_le_bytes());
            cx.guest.write(at, &rest)?;
            cx.guest.write(at + 8, &status.to_le_bytes())?;
            self.completed = true;
            self.regs.ring.head = (self.regs.ring.head + 1) % n;
            if refused {
                return Ok(false);
            }
            done += piece;
            if last {
                return Ok(true);
            }
        }
    }
}
