// SPDX-License-Identifier: GPL-2.0

//! Transmit queue 0, shadowed: the user programs a ring of 82576 advanced
//! transmit descriptors in its own memory and writes the tail doorbell;
//! the vendor reads the user's descriptors, pins and maps the frames'
//! buffers for the VF, writes translated descriptors into a ring of its own
//! ([`Coherent`] memory), rings the VF's doorbell, waits for the hardware
//! to complete them, gives the pins back, and writes the completion (DD)
//! back into the user's ring. The round's pins go back with
//! [`GuestMemory::release_all`]: the framework keeps them pinned and
//! mapped, idle, and the next frame from the same buffer finds them so.
//!
//! Every address the VF sees is the vendor's ring or a page the vendor
//! pinned and mapped for it ([`GuestMemory::pin_for`]); the user's
//! addresses are IOVAs, never handed to the hardware. A frame is refused
//! (dropped, its descriptors completed, nothing of it reaching the
//! hardware) when a buffer is not mapped readable in the user's IOMMU
//! context, is empty, or the descriptor is not an advanced data or context
//! descriptor, or asks for segmentation (TSE). A ring the vendor cannot
//! read or write back stops the queue (TXDCTL.ENABLE reads 0 again).
//!
//! A round runs inside the doorbell write (or when the device starts
//! running again with descriptors pending), to its end: no pin the vendor
//! holds outlives it (the ones it gave back are the framework's), so
//! [`Device::guest_unmapped`](super::rmdev::device::Device) only waits for
//! a running round. The doorbell is only served while the device
//! runs (migration states RUNNING and RUNNING_P2P); in the stopped states a
//! tail written is kept and served when it runs again.

use kernel::prelude::*;
use kernel::time::Ktime;

use super::hw::{Ctx, VfHw, QUEUE_ENABLE as ENABLE};
use super::ring::{hw_ring_lost, RingRegs, BAL_MASK, DESC, RING_LEN_MASK};
use super::rmdev::device::Pinned;
use super::rmdev::pci::{timed_out, Coherent};

/// The queue's registers (queue 0), user view and hardware alike.
pub(crate) const TDBAL: u64 = 0x3800;
pub(crate) const TDBAH: u64 = 0x3804;
pub(crate) const TDLEN: u64 = 0x3808;
pub(crate) const TDH: u64 = 0x3810;
pub(crate) const TXCTL: u64 = 0x3814;
pub(crate) const TDT: u64 = 0x3818;
pub(crate) const TXDCTL: u64 = 0x3828;
pub(crate) const TDWBAL: u64 = 0x3838;
pub(crate) const TDWBAH: u64 = 0x383c;
/// TXDCTL: the thresholds (bits 5:0, 13:8, 21:16) and the enable, the
/// bits a user's write keeps.
const TXDCTL_BITS: u32 = ENABLE | 0x003f_3f3f;

/// Descriptor fields (`cmd_type_len`, `olinfo_status`).
const LEN_MASK: u32 = 0xffff;
const DTYP_MASK: u32 = 0xf << 20;
const DTYP_CONTEXT: u32 = 0x2 << 20;
const DTYP_DATA: u32 = 0x3 << 20;
const EOP: u32 = 1 << 24;
const IFCS: u32 = 1 << 25;
const RS: u32 = 1 << 27;
const DEXT: u32 = 1 << 29;
const VLE: u32 = 1 << 30;
const TSE: u32 = 1 << 31;
const DD: u32 = 1;
/// The user's command bits a data descriptor passes on.
const DATA_KEEP: u32 = DTYP_MASK | IFCS | DEXT | VLE;

/// How a doorbell's rounds ended.
#[derive(PartialEq, Eq)]
pub(crate) enum Kick {
    /// Until the user's ring had no complete frame left, or the queue
    /// stopped. `on_hw`: a round's frames were completed by the VF, which
    /// so still had the vendor's ring.
    Served { on_hw: bool },
    /// The VF lost the vendor's ring (see [`TxQueue::kick`]).
    Lost,
}

/// How a round ended.
enum Round {
    /// Its frames went to the hardware (`on_hw`) or were all refused, and
    /// completed.
    Sent { on_hw: bool },
    /// The frame at the head has no end (EOP) before the tail yet.
    Nothing,
    /// The VF lost the vendor's ring: the frames it completed before are
    /// completed, the others left at the head of the user's ring.
    Lost,
}

/// What the hardware did with a round's descriptors.
#[derive(PartialEq, Eq)]
enum Hw {
    /// None to do: every frame was refused.
    Idle,
    /// Completed them all.
    Done,
    /// The VF no longer has the vendor's ring (a PF reset took it).
    Lost,
}

/// The vendor's ring: 256 descriptors.
const HOST_DESCS: usize = 256;
/// The most descriptors of one frame, in the user's ring and in the
/// vendor's (a frame's buffers split at page boundaries).
const MAX_FRAME_DESCS: usize = 16;
const MAX_HOST_FRAME_DESCS: usize = 32;
/// The most frames of one round.
const MAX_ROUND_FRAMES: usize = 32;
/// The page size of pins.
const PAGE: u64 = super::rmdev::dma::PAGE_SIZE;
/// How long the hardware may take for a round, in ms.
const HW_TIMEOUT_MS: u32 = 200;
/// The most user descriptors a round reads in one copy.
const WINDOW_DESCS: u32 = 64;

/// The user's view of the queue: what it programmed.
#[derive(Clone, Copy, Default)]
pub(crate) struct TxRegs {
    /// TDBAL, TDBAH, TDLEN, TDH, TDT.
    pub(crate) ring: RingRegs,
    pub(crate) txctl: u32,
    pub(crate) txdctl: u32,
    pub(crate) tdwbal: u32,
    pub(crate) tdwbah: u32,
}

/// The stream record of the queue: the nine registers, in this order.
pub(crate) const RECORD_LEN: usize = 9 * 4;

impl TxRegs {
    fn enabled(&self) -> bool {
        self.txdctl & ENABLE != 0
    }

    /// The registers as the stream carries them.
    pub(crate) fn to_record(self, out: &mut [u8]) -> Result {
        let words = [
            self.ring.bal,
            self.ring.bah,
            self.ring.len,
            self.ring.head,
            self.txctl,
            self.ring.tail,
            self.txdctl,
            self.tdwbal,
            self.tdwbah,
        ];
        super::put_words(out, &words)
    }

    /// The registers from a stream record, checked: values a user could
    /// have written (masks), head and tail inside the ring.
    pub(crate) fn from_record(rec: &[u8]) -> Result<Self> {
        let w: [u32; RECORD_LEN / 4] = super::get_words(rec)?;
        let r = TxRegs {
            ring: RingRegs {
                bal: w[0],
                bah: w[1],
                len: w[2],
                head: w[3],
                tail: w[5],
            },
            txctl: w[4],
            txdctl: w[6],
            tdwbal: w[7],
            tdwbah: w[8],
        };
        if !r.ring.valid() || r.txdctl & !TXDCTL_BITS != 0 {
            return Err(EINVAL);
        }
        Ok(r)
    }
}

/// The hardware side, once set up: the vendor's ring in the VF.
struct HostRing {
    ring: Coherent,
    /// The next descriptor to fill (the hardware's tail).
    tail: usize,
}

impl HostRing {
    /// Whether the hardware wrote descriptor `i` back (DD).
    fn done(&self, i: usize) -> Result<bool> {
        Ok(self.ring.read32(i * DESC + 12)? & DD != 0)
    }
}

/// One frame of a round.
struct Frame {
    /// The user's descriptor after the frame's last one.
    next: u32,
    /// Where the completion goes (the IOVA of the last descriptor's status
    /// word) and its value without DD, if the user asked for one (RS).
    complete: Option<(u64, u32)>,
    /// The vendor's last descriptor of the frame (`None`: refused).
    host_last: Option<usize>,
}

/// The queue.
pub(crate) struct TxQueue {
    pub(crate) regs: TxRegs,
    host: Option<HostRing>,
    /// Whether the queue stopped since the last reset (one log line per
    /// user, whatever it does).
    stopped_once: bool,
    /// A completion (DD) was written back since the owner last asked: the
    /// queue's interrupt cause.
    completed: bool,
    /// The user's descriptors of the frame being read.
    frame_descs: [[u32; 4]; MAX_FRAME_DESCS],
    /// The [`Window`]'s buffer between rounds.
    window_buf: KVec<u8>,
}

/// Whether a descriptor with command word `cmd` ends a frame: EOP, in
/// any descriptor but a context one (which has no EOP bit).
fn ends_frame(cmd: u32) -> bool {
    let context = cmd & DEXT != 0 && cmd & DTYP_MASK == DTYP_CONTEXT;
    cmd & EOP != 0 && !context
}

fn words(raw: &[u8]) -> [u32; 4] {
    let mut d = [0u32; 4];
    for (w, c) in d.iter_mut().zip(raw.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    d
}

/// The user's descriptors from the head on, read in one copy at the start
/// of a round (a copy from guest memory costs about as much for 16 bytes
/// as for a kilobyte); descriptors past it are read one by one.
struct Window {
    /// The first descriptor's index.
    first: u32,
    /// Room for [`WINDOW_DESCS`] descriptors (or none, if it could not be
    /// had), allocated once per queue and kept between rounds
    /// ([`Window::into_buf`]): neither allocated nor zeroed per round.
    raw: KVec<u8>,
    /// The bytes of `raw` read.
    len: usize,
}

impl Window {
    /// Up to [`WINDOW_DESCS`] descriptors from the head towards the tail,
    /// not past the ring's end. Empty if the copy fails: the descriptors
    /// are then read one by one, and the first that cannot be read stops
    /// the queue, as without the window.
    fn read(cx: &Ctx<'_>, ring: &RingRegs, mut raw: KVec<u8>) -> Self {
        let n = ring.count();
        let size = WINDOW_DESCS as usize * DESC;
        if raw.len() != size {
            raw = KVec::from_elem(0u8, size, GFP_KERNEL).unwrap_or_default();
        }
        let empty = |raw| Window {
            first: ring.head,
            raw,
            len: 0,
        };
        let ahead = if ring.tail >= ring.head {
            ring.tail - ring.head
        } else {
            n - ring.head
        };
        let len = ahead.min(WINDOW_DESCS) as usize * DESC;
        let Ok(at) = ring.desc_at(ring.head) else {
            return empty(raw);
        };
        let read = match raw.get_mut(..len) {
            Some(bytes) => cx.guest.read(at, bytes).is_ok(),
            None => false,
        };
        if !read {
            return empty(raw);
        }
        Window {
            first: ring.head,
            raw,
            len,
        }
    }

    /// Descriptor `i`'s words, if the window holds it.
    fn get(&self, i: u32) -> Option<[u32; 4]> {
        let k = i.checked_sub(self.first)? as usize;
        self.raw
            .get(..self.len)?
            .get(k * DESC..(k + 1) * DESC)
            .map(words)
    }

    /// The buffer, for the next round.
    fn into_buf(self) -> KVec<u8> {
        self.raw
    }
}

impl TxQueue {
    pub(crate) fn new() -> Self {
        TxQueue {
            regs: TxRegs::default(),
            host: None,
            stopped_once: false,
            completed: false,
            frame_descs: [[0; 4]; MAX_FRAME_DESCS],
            window_buf: KVec::new(),
        }
    }

    /// Whether the vendor's ring is set up in the VF.
    pub(crate) fn has_hw(&self) -> bool {
        self.host.is_some()
    }

    /// Whether a completion was written back since the last call.
    pub(crate) fn take_completed(&mut self) -> bool {
        core::mem::take(&mut self.completed)
    }

    /// The user reads a queue register.
    pub(crate) fn read(&self, offset: u64) -> u32 {
        let r = &self.regs;
        match offset {
            TDBAL => r.ring.bal,
            TDBAH => r.ring.bah,
            TDLEN => r.ring.len,
            TDH => r.ring.head,
            TXCTL => r.txctl,
            TDT => r.ring.tail,
            TXDCTL => r.txdctl,
            TDWBAL => r.tdwbal,
            TDWBAH => r.tdwbah,
            _ => 0,
        }
    }

    /// Whether `offset` is one of the queue's registers.
    pub(crate) fn owns(offset: u64) -> bool {
        matches!(
            offset,
            TDBAL | TDBAH | TDLEN | TDH | TXCTL | TDT | TXDCTL | TDWBAL | TDWBAH
        )
    }

    /// The user writes a queue register. The ring's set-up only changes
    /// while the queue is disabled, as the hardware requires. Returns
    /// whether the doorbell rang (the tail or the enable written): the
    /// owner then serves it ([`TxQueue::kick`]).
    #[must_use]
    pub(crate) fn write(&mut self, cx: &Ctx<'_>, vf: &mut VfHw, offset: u64, value: u32) -> bool {
        let r = &mut self.regs;
        let idle = !r.enabled();
        match offset {
            TDBAL if idle => r.ring.bal = value & BAL_MASK,
            TDBAH if idle => r.ring.bah = value,
            TDLEN if idle => r.ring.len = value & RING_LEN_MASK,
            TDH if idle => r.ring.head = value & 0xffff,
            TXCTL => r.txctl = value,
            TDWBAL => r.tdwbal = value,
            TDWBAH => r.tdwbah = value,
            TDT => {
                r.ring.tail = value & 0xffff;
                return true;
            }
            TXDCTL => {
                let mut v = value & TXDCTL_BITS;
                if !r.ring.fits() {
                    // A ring past the end of the address space: refused.
                    v &= !ENABLE;
                }
                r.txdctl = v;
                if v & ENABLE == 0 {
                    // The hardware is off the user's pages (and bus
                    // mastering goes off with the last queue, `settle`).
                    self.stop_hw(cx, vf);
                }
                return true;
            }
            _ => {}
        }
        false
    }

    /// Forgets the user's set-up (a function reset, or the device
    /// closed); the hardware is stopped already.
    pub(crate) fn reset(&mut self) {
        self.regs = TxRegs::default();
        self.stopped_once = false;
        self.completed = false;
    }

    /// Disables the VF's queue ([`VfHw::disable_queue`]); the vendor's
    /// ring is set up again at the next round. Whether or not the vendor
    /// ran it: the queue's reset value is enabled (82576 queue 0), and a
    /// queue the vendor is not running stays disabled.
    pub(crate) fn stop_hw(&mut self, cx: &Ctx<'_>, vf: &mut VfHw) {
        vf.disable_queue(cx, TXDCTL as usize);
        // The ring is freed once the hardware no longer reaches it.
        self.host = None;
    }

    /// Whether the VF lost the vendor's ring ([`hw_ring_lost`]).
    pub(crate) fn lost_hw(&self, cx: &Ctx<'_>) -> bool {
        self.host.is_some() && hw_ring_lost(cx.bar, TDLEN, HOST_DESCS)
    }

    /// Sets the VF up for the vendor's ring: the VF up (reset and
    /// handshake with the PF, bus mastering), the ring programmed and
    /// enabled.
    fn start_hw(&mut self, cx: &Ctx<'_>, vf: &mut VfHw) -> Result {
        if self.host.is_some() {
            return Ok(());
        }
        // Zeroed by the allocator: no descriptor is done.
        let ring = cx.func.alloc_coherent(HOST_DESCS * DESC)?;
        vf.up(cx)?;
        let bar = cx.bar;
        let a = ring.dma_addr();
        bar.write32(TXDCTL as usize, 0)?;
        bar.write32(TDBAL as usize, a as u32)?;
        bar.write32(TDBAH as usize, (a >> 32) as u32)?;
        bar.write32(TDLEN as usize, (HOST_DESCS * DESC) as u32)?;
        bar.write32(TDH as usize, 0)?;
        bar.write32(TDT as usize, 0)?;
        bar.write32(TDWBAL as usize, 0)?;
        bar.write32(TDWBAH as usize, 0)?;
        self.host = Some(HostRing { ring, tail: 0 });
        bar.write32(TXDCTL as usize, ENABLE)
    }

    /// Serves the doorbell: rounds until the user's ring has no complete
    /// frame left, or the queue stopped. [`Kick::Lost`]: the VF lost the
    /// vendor's ring under a round (a PF reset); the frames it completed
    /// before are completed (the VF works in order), the others wait at
    /// the head of the user's ring, and the VF must be set up again.
    pub(crate) fn kick(&mut self, cx: &Ctx<'_>, vf: &mut VfHw) -> Kick {
        let mut on_hw = false;
        while !vf.stopped && self.regs.enabled() && self.pending() {
            match self.round(cx, vf) {
                Ok(Round::Sent { on_hw: hw }) => on_hw |= hw,
                Ok(Round::Nothing) => break,
                Ok(Round::Lost) => return Kick::Lost,
                Err(e) => {
                    self.fail(cx, vf, e);
                    break;
                }
            }
        }
        Kick::Served { on_hw }
    }

    /// The user's ring cannot be read or completed, or the hardware
    /// failed: the queue stops, as a DMA error stops the real one.
    pub(crate) fn fail(&mut self, cx: &Ctx<'_>, vf: &mut VfHw, e: Error) {
        if !self.stopped_once {
            // ETIMEDOUT may be the PF's: its interface down.
            pr_warn!("transmit queue stopped ({:?})\n", e);
            self.stopped_once = true;
        }
        self.regs.txdctl &= !ENABLE;
        self.stop_hw(cx, vf);
    }

    fn pending(&self) -> bool {
        let n = self.regs.ring.count();
        n > 0
            && self.regs.ring.head < n
            && self.regs.ring.tail < n
            && self.regs.ring.head != self.regs.ring.tail
    }

    /// One round: up to [`MAX_ROUND_FRAMES`] complete frames from the
    /// user's ring to the hardware and back.
    fn round(&mut self, cx: &Ctx<'_>, vf: &mut VfHw) -> Result<Round> {
        // A ring the device cannot read stops the queue before the
        // hardware is involved.
        let buf = core::mem::replace(&mut self.window_buf, KVec::new());
        let window = Window::read(cx, &self.regs.ring, buf);
        if window.get(self.regs.ring.head).is_none() {
            let mut raw = [0u8; DESC];
            cx.guest
                .read(self.regs.ring.desc_at(self.regs.ring.head)?, &mut raw)?;
        }
        self.start_hw(cx, vf)?;
        let mut frames: KVec<Frame> = KVec::new();
        // The round's pins, every frame's (room for one a frame's buffer
        // up front, more reserved as needed).
        let mut pins: KVec<Pinned> = KVec::new();
        let mut head = self.regs.ring.head;
        let mut host_used = 0;
        let mut built = Ok(());
        if let Err(e) = frames
            .reserve(MAX_ROUND_FRAMES, GFP_KERNEL)
            .and_then(|()| pins.reserve(MAX_ROUND_FRAMES, GFP_KERNEL))
        {
            built = Err(e.into());
        }
        while built.is_ok() && frames.len() < MAX_ROUND_FRAMES {
            match self.frame(cx, &window, head, &mut host_used, &mut pins) {
                Ok(Some(f)) => {
                    head = f.next;
                    // Cannot fail: the capacity was reserved, so no frame
                    // is dropped here.
                    let _ = frames.push(f, GFP_KERNEL);
                }
                Ok(None) => break,
                Err(e) => {
                    built = Err(e);
                    break;
                }
            }
        }
        // Kept for the next round (lost, and allocated again, only when
        // the ring could not be read or the VF not set up above).
        self.window_buf = window.into_buf();
        let ran = built.and_then(|()| self.run_hw(cx, vf, &frames));
        let done = matches!(ran, Ok(Hw::Idle | Hw::Done));
        // The frames that went: all, or on a lost ring those the VF
        // completed before it lost it (read before the ring goes).
        let went = match ran {
            Ok(Hw::Idle | Hw::Done) => frames.len(),
            Ok(Hw::Lost) => self.completed_before(&frames),
            Err(_) => 0,
        };
        if !done {
            // The hardware must be off the pages before they go.
            self.stop_hw(cx, vf);
        }
        // The hardware is done with the pages (or stopped): given back,
        // kept pinned and mapped for the next frame from the same buffer
        // after a round that went through. A pin the framework took back
        // (the user unmapped it) is gone already.
        if done {
            cx.guest.release_all(pins);
        } else {
            for p in pins {
                let _ = cx.guest.unpin(p);
            }
        }
        let ran = ran?;
        for f in frames.iter().take(went) {
            if let Some((at, olinfo)) = f.complete {
                cx.guest.write(at, &(olinfo | DD).to_le_bytes())?;
                self.completed = true;
            }
            self.regs.ring.head = f.next;
        }
        Ok(match ran {
            Hw::Lost => Round::Lost,
            _ if frames.is_empty() => Round::Nothing,
            hw => Round::Sent {
                on_hw: hw == Hw::Done,
            },
        })
    }

    /// How many of `frames`, from the first, the VF completed (a refused
    /// frame counts: it had nothing for the VF).
    fn completed_before(&self, frames: &[Frame]) -> usize {
        let Some(host) = self.host.as_ref() else {
            return 0;
        };
        frames
            .iter()
            .take_while(|f| match f.host_last {
                None => true,
                Some(i) => host.done(i).unwrap_or(false),
            })
            .count()
    }

    /// Rings the hardware's doorbell for the round's descriptors and waits
    /// until it completed them all.
    fn run_hw(&mut self, cx: &Ctx<'_>, vf: &mut VfHw, frames: &[Frame]) -> Result<Hw> {
        let Some(last) = frames.iter().rev().find_map(|f| f.host_last) else {
            return Ok(Hw::Idle);
        };
        let host = self.host.as_mut().ok_or(EIO)?;
        // The descriptors are in memory before the doorbell (x86 orders
        // the stores; the fence keeps the compiler from moving them).
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        cx.bar.write32(TDT as usize, host.tail as u32)?;
        // From the first check that found the round not done (emulated
        // hardware completes it inside the doorbell: no clock read then).
        let mut start = None;
        // Whether the VF still has the ring is asked only when its
        // interrupt did not come in a tick, and at the timeout: a register
        // read costs more than the rest of the round under emulation.
        let lost = || hw_ring_lost(cx.bar, TDLEN, HOST_DESCS);
        // Whether this round unmasked the VF's vector to wait for it.
        let mut unmasked = false;
        let hw = loop {
            // Read before the check: a write-back signalled after the
            // check changes it, and the wait returns at once.
            let seen = cx.done.count();
            match host.done(last) {
                Ok(true) => break Ok(Hw::Done),
                Ok(false) => {}
                Err(e) => break Err(e),
            }
            let now = Ktime::ktime_get().to_ms();
            if now - *start.get_or_insert(now) >= i64::from(HW_TIMEOUT_MS) {
                break if lost() {
                    Ok(Hw::Lost)
                } else {
                    Err(timed_out())
                };
            }
            if !vf.vector_on() {
                // Not done inside the doorbell: the VF's interrupt is
                // wanted now (a write-back since is signalled when it is
                // unmasked), and the descriptor checked again first.
                if let Err(e) = vf.set_vector(cx, true) {
                    break Err(e);
                }
                unmasked = true;
                continue;
            }
            // Woken by the VF's vector 0, or after a tick: a PF reset
            // under the round clears the vector's routing with the ring.
            if !cx.done.wait(seen, 1) && lost() {
                break Ok(Hw::Lost);
            }
        };
        if unmasked {
            let _ = vf.set_vector(cx, false);
        }
        hw
    }

    /// Reads the frame at user descriptor `head`, and unless it is refused
    /// pins and maps its buffers and writes its descriptors into the
    /// vendor's ring. `None`: no complete frame there, or no room left in
    /// the vendor's ring this round. An error: the user's ring cannot be
    /// read.
    fn frame(
        &mut self,
        cx: &Ctx<'_>,
        window: &Window,
        head: u32,
        host_used: &mut usize,
        pins: &mut KVec<Pinned>,
    ) -> Result<Option<Frame>> {
        let regs = self.regs;
        let n = regs.ring.count();
        if *host_used + MAX_HOST_FRAME_DESCS > HOST_DESCS - 1 {
            return Ok(None);
        }
        // The queue's own array: one on the stack would be zeroed for
        // every frame (a `memset` that costs more than the rest of the
        // frame's reading under emulation).
        let descs = &mut self.frame_descs;
        let mut count = 0;
        let mut too_long = false;
        let mut i = head;
        let last = loop {
            if i == regs.ring.tail {
                return Ok(None);
            }
            let at = regs.ring.desc_at(i)?;
            let d = match window.get(i) {
                Some(d) => d,
                None => {
                    let mut raw = [0u8; DESC];
                    cx.guest.read(at, &mut raw)?;
                    words(&raw)
                }
            };
            i = (i + 1) % n;
            if count < MAX_FRAME_DESCS {
                descs[count] = d;
                count += 1;
            } else {
                too_long = true;
            }
            if ends_frame(d[2]) {
                break (d, at);
            }
        };
        let (d, at) = last;
        let mut frame = Frame {
            next: i,
            complete: (d[2] & RS != 0).then_some((at + 12, d[3] & !DD)),
            host_last: None,
        };
        if !too_long {
            // Refused: nothing reaches the hardware; the frame completes.
            frame.host_last = self.host.as_mut().and_then(|host| {
                translate(host, cx, &self.frame_descs[..count], host_used, pins).ok()
            });
        }
        Ok(Some(frame))
    }
}

/// Writes the vendor's descriptors for the user's `descs` (one frame)
/// into `host`: context descriptors as they are, data descriptors with
/// their buffers pinned, mapped and split at page boundaries. Returns the
/// frame's last descriptor in the vendor's ring.
fn translate(
    host: &mut HostRing,
    cx: &Ctx<'_>,
    descs: &[[u32; 4]],
    host_used: &mut usize,
    pins: &mut KVec<Pinned>,
) -> Result<usize> {
    let mut k = 0;
    let mut put = |k: &mut usize, d: [u32; 4]| -> Result {
        if *k == MAX_HOST_FRAME_DESCS {
            return Err(E2BIG);
        }
        let at = ((host.tail + *k) % HOST_DESCS) * DESC;
        for (j, w) in d.iter().enumerate() {
            host.ring.write32(at + 4 * j, *w)?;
        }
        *k += 1;
        Ok(())
    };
    for (j, d) in descs.iter().enumerate() {
        let cmd = d[2];
        if cmd & DEXT == 0 {
            return Err(EINVAL);
        }
        match cmd & DTYP_MASK {
            // No address in it: the offload context, as it is.
            DTYP_CONTEXT => put(&mut k, *d)?,
            DTYP_DATA => {
                let len = u64::from(cmd & LEN_MASK);
                if cmd & TSE != 0 || len == 0 {
                    return Err(EINVAL);
                }
                let addr = (u64::from(d[1]) << 32) | u64::from(d[0]);
                let end = addr.checked_add(len).ok_or(EINVAL)?;
                let first = addr & !(PAGE - 1);
                let pages = ((end - 1) / PAGE - first / PAGE + 1) as usize;
                // Room first: a pin is never dropped without its unpin.
                pins.reserve(1, GFP_KERNEL)?;
                pins.push(cx.guest.pin_for(cx.func, first, pages, false)?, GFP_KERNEL)?;
                let pin = pins.last().ok_or(EINVAL)?;
                let mut off = (addr - first) as usize;
                let mut left = len as usize;
                while left > 0 {
                    let piece = left.min(PAGE as usize - off % PAGE as usize);
                    let dma = cx.guest.device_address(pin, off)?;
                    let end_of_frame = j == descs.len() - 1 && piece == left;
                    let flags = if end_of_frame { EOP | RS } else { 0 };
                    put(
                        &mut k,
                        [
                            dma as u32,
                            (dma >> 32) as u32,
                            (cmd & DATA_KEEP) | piece as u32 | flags,
                            d[3] & !DD,
                        ],
                    )?;
                    off += piece;
                    left -= piece;
                }
            }
            _ => return Err(EINVAL),
        }
    }
    // Committed: the hardware's tail covers the frame at the next
    // doorbell.
    let last = (host.tail + k - 1) % HOST_DESCS;
    host.tail = (host.tail + k) % HOST_DESCS;
    *host_used += k;
    Ok(last)
}
