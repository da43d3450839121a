// SPDX-License-Identifier: GPL-2.0

//! Guest memory: what a device reads, writes and pins of its user's memory,
//! by IOVA, and the dirty-page log that migration reads.
//!
//! C header: [`include/linux/vfio.h`](srctree/include/linux/vfio.h)
//!
//! The user (a VMM) maps its memory into the mdev's IOMMU context: a type1
//! container (`VFIO_IOMMU_MAP_DMA`) or an iommufd IOAS (`IOMMU_IOAS_MAP`).
//! The vendor reaches it through its [`GuestMemory`] handle:
//!
//! - [`GuestMemory::read`] and [`GuestMemory::write`] copy by IOVA
//!   (`vfio_dma_rw()`), without pinning;
//! - [`GuestMemory::pin`] pins whole pages (`vfio_pin_pages()`) and returns
//!   a [`Pinned`] handle, which is the only way to reach them; the pages
//!   never leave this module, so no vendor can keep one past its unpin;
//! - [`GuestMemory::pin_for`] also maps the pinned pages for the parent's
//!   PCI function ([`DmaFunction`]), and [`GuestMemory::device_address`]
//!   gives the addresses to hand the hardware. The mapping is the pin's:
//!   it is undone just before the unpin, whoever unpins;
//! - [`GuestMemory::release`] gives a pin back like [`GuestMemory::unpin`],
//!   but a read-only `pin_for` pin stays pinned and mapped, *idle*, for
//!   the next `pin_for` of the same pages for the same function (a cache of
//!   at most [`CACHE_PAGES`] pages, the least recently released going
//!   first): pinning and mapping is most of what sending a frame from guest
//!   memory costs, and a guest sends from the same buffers again and
//!   again. An idle pin is the framework's: no handle reaches it, and it
//!   goes like any pin when the user unmaps its memory, on a reset and on
//!   close; it counts towards the user's locked memory like any pin (on
//!   a container with no IOMMU-backed device, type1 charges each pinned
//!   page), and when a new pin fails with `-ENOMEM` or would pass
//!   [`MAX_PINNED_PAGES`] the device's idle ones go first. Only a mapping
//!   that needs no sync after the CPU wrote the page (no bounce buffer) is
//!   kept.
//!
//! The framework owns every pin. When the user unmaps memory that is pinned
//! (the `dma_unmap` callback), it refuses new pins into the range
//! (`-EAGAIN`) until it is done, first tells the vendor
//! ([`Device::guest_unmapped`](super::device::Device::guest_unmapped)), which
//! stops using the range, and then unpins every pin in the range itself
//! before the callback returns: a pin left behind would make type1's unmap
//! end in `BUG_ON` (iommufd's in `-EDEADLOCK`). A [`Pinned`] handle whose
//! pin went that way is stale: using it is `-ENOENT`. Closing the device
//! unpins everything the same way, so a new user never meets the previous
//! user's pins.
//!
//! On a type1 container, new pins into a range may be refused with
//! `-EAGAIN` for a while after an unmap under a pin (a *fence*,
//! [`FENCE_MS`]). type1 checks for pins again once the callback returned,
//! before it removes the mapping, and calls back again if it finds one;
//! it crashes the host (`BUG_ON`) after ten such rounds for one mapping.
//! A user that makes the device re-pin the range in that window, ten times
//! in a row, would get there. So the device's range is fenced:
//! [`FENCE_MS`], doubling up to 16 s each time the range is fenced again
//! within a minute of the last fence, when type1 calls back for a range
//! it called back for before (within a minute) and the device pinned into
//! the range in between, and when type1 calls back for a range the device
//! holds no pin in (type1 calls every device of the container: the pins
//! are another device's, whose fence does not stop this one). After a
//! round in which the device was not fenced, every device of the
//! container is fenced at the next: two rounds are the most type1 makes
//! for one unmap, unless its thread is held up longer than the fence
//! between them. The first unmap of a range (within a minute) that finds
//! the device's own pins, made before it (memory the device last used,
//! idle pins included), fences nothing, so unmapping and mapping again
//! works at once; a range unmapped again within the minute after the
//! device pinned into it is fenced. iommufd refuses pins into a range it
//! unmaps itself and gets no fences. Past [`MAX_FENCES`] ranges, they
//! merge into one fence over all of them, in force at once.
//!
//! Dirty logging (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`): every migrating
//! device offers it. While it runs, every page in the logged ranges the
//! device wrote through [`GuestMemory::write`] is reported once, every
//! page pinned for writing is reported in every report while it stays
//! pinned (the device may write it at any time), as type1's own tracking
//! does, and once more after its unpin. A device that never touches guest
//! memory reports nothing, which is exact.
//!
//! One lock ([`DmaState`]'s) serialises pins, unpins, copies and the log; it
//! is taken before the IOMMU backend's locks, never inside them, and no
//! vendor code runs under it.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use kernel::prelude::*;
use kernel::static_lock_class;
use kernel::sync::{Arc, Mutex};

use super::bindings;
use super::pci::DmaFunction;

/// The page size of IOVA pinning and dirty logging.
pub const PAGE_SIZE: u64 = 4096;
/// The most pages one [`GuestMemory::pin`] takes
/// (`VFIO_PIN_PAGES_MAX_ENTRIES` on x86-64).
pub const MAX_PIN_PAGES: usize = 512;
/// The most pages one device keeps pinned at once (256 MiB).
pub const MAX_PINNED_PAGES: usize = 1 << 16;
/// How long pins into a fenced range are refused, at first.
pub const FENCE_MS: i64 = 1000;
/// An unmap or a fence older than this is forgotten: the next unmap of its
/// range counts as a first one.
const FENCE_MEMORY_MS: i64 = 60_000;
/// The fence of a range unmapped under a pin again and again doubles up to
/// `FENCE_MS << MAX_STRIKES` (16 s).
const MAX_STRIKES: u32 = 4;
/// The most unmapped ranges remembered apart; past it they merge into
/// one fence.
pub const MAX_FENCES: usize = 64;
/// The most pages kept pinned idle for reuse ([`GuestMemory::release`]):
/// 2 MiB.
pub const CACHE_PAGES: usize = 512;
/// The most distinct written pages the log keeps between two reports;
/// past it, every logged range reports dirty until a report covers it.
const MAX_LOGGED_PAGES: usize = 1 << 16;
/// Where new pin slots start counting their generations (each takes 2^16).
static NEXT_GEN: AtomicU32 = AtomicU32::new(0);
/// `IOMMU_READ` and `IOMMU_WRITE` (`include/linux/iommu.h`).
const IOMMU_READ: i32 = 1;
const IOMMU_WRITE: i32 = 2;

/// A page `vfio_pin_pages()` returned.
struct PagePtr(*mut bindings::page);

// SAFETY: A pinned page may be used and unpinned from any thread.
unsafe impl Send for PagePtr {}

/// The mapping of a pin's pages for a PCI function.
struct Mapped {
    func: Arc<DmaFunction>,
    /// One DMA address per page.
    addrs: KVec<u64>,
    /// Whether the mapping may be handed to the function again as it is:
    /// no page needs a sync after the CPU wrote it (no bounce buffer).
    reusable: bool,
}

/// One pin: `pages` pages from page-aligned `iova`.
struct Pin {
    iova: u64,
    pages: KVec<PagePtr>,
    writable: bool,
    mapped: Option<Mapped>,
    /// Released and kept for reuse: when (the state's clock).
    idle: Option<u64>,
}

impl Mapped {
    /// Unmaps every page (the device must no longer reach them).
    fn unmap(&self, writable: bool) {
        for a in self.addrs.iter() {
            // SAFETY: Each address is a mapping `map_pages` made on this
            // function with this direction, unmapped once (the pin goes
            // with it).
            unsafe { self.func.unmap_page(*a, !writable) };
        }
    }
}

/// Whether `pages` pages from `iova` overlap `[start, end)`.
fn pages_overlap(iova: u64, pages: usize, start: u64, end: u64) -> bool {
    iova < end && start < iova + pages as u64 * PAGE_SIZE
}

impl Pin {
    /// Whether the pin overlaps `[start, end)`.
    fn overlaps(&self, start: u64, end: u64) -> bool {
        pages_overlap(self.iova, self.pages.len(), start, end)
    }
}

/// A slot of the pin table; `gen` counts its reuses, so a stale handle
/// never matches a newer pin.
struct Slot {
    gen: u32,
    pin: Option<Pin>,
}

/// The dirty log while logging runs.
struct Log {
    /// The logged IOVA ranges, `(first, last)` inclusive.
    ranges: KVec<(u64, u64)>,
    /// Page numbers (IOVA / [`PAGE_SIZE`]) in the logged ranges written
    /// since the last report, sorted, each once.
    dirty: KVec<u64>,
    /// Per range: more pages were written than `dirty` holds, so the whole
    /// range is dirty until a report covers all of it.
    all_dirty: KVec<bool>,
}

/// A range type1 called back for (the user unmapped it while a device of
/// the container had it pinned), and its fence.
#[derive(Clone, Copy)]
struct Fence {
    start: u64,
    end: u64,
    /// When type1 last called back for the range (`ktime_get()`, ms).
    unmapped_at: i64,
    /// Whether the device pinned into the range since.
    repinned: bool,
    /// Pins into the range are refused until then (ms), if it was fenced.
    until: Option<i64>,
    /// How many times in a row the range was fenced.
    strikes: u32,
}

impl Fence {
    /// Fences the range from `now`: [`FENCE_MS`], doubled for each fence
    /// in a row within a minute of the last.
    fn raise(&mut self, now: i64) {
        self.strikes = match self.until {
            Some(u) if now < u + FENCE_MEMORY_MS => (self.strikes + 1).min(MAX_STRIKES),
            _ => 0,
        };
        self.until = Some(now + (FENCE_MS << self.strikes));
    }

    /// When the entry is forgotten.
    fn forgotten_at(&self) -> i64 {
        self.unmapped_at.max(self.until.unwrap_or(i64::MIN)) + FENCE_MEMORY_MS
    }
}

/// The current time for fences, in ms.
fn now_ms() -> i64 {
    kernel::time::Ktime::ktime_get().to_ms()
}

/// The guest-memory state of one device, under its lock.
struct Inner {
    /// The VFIO device, set before it is registered.
    vdev: *mut bindings::vfio_device,
    /// Between `open_device` and `close_device`: the only time the VFIO
    /// core lets a device pin or copy.
    open: bool,
    slots: KVec<Slot>,
    /// Pages pinned, over all slots, idle ones included.
    pinned: usize,
    /// Pages of idle pins.
    idle_pages: usize,
    /// Counts releases, to find the least recently released idle pin.
    clock: u64,
    log: Option<Log>,
    /// Ranges recently unmapped under a pin.
    fences: KVec<Fence>,
    /// The range the user is unmapping now, `[start, end)`: from before
    /// the vendor is told until its pins there are gone, pins into it are
    /// refused.
    unmapping: Option<(u64, u64)>,
}

/// The guest-memory state of one device, shared by the framework's device
/// and the vendor's [`GuestMemory`] handle.
#[pin_data]
pub(crate) struct DmaState {
    #[pin]
    inner: Mutex<Inner>,
}

// SAFETY: `vdev` is only dereferenced by the VFIO core's functions, under
// the lock, while `open` says the device is open (see `Inner::vdev_open`).
unsafe impl Send for Inner {}

impl Inner {
    /// The VFIO device, if it is open.
    fn vdev_open(&self) -> Result<*mut bindings::vfio_device> {
        if self.open && !self.vdev.is_null() {
            Ok(self.vdev)
        } else {
            Err(ENODEV)
        }
    }

    /// Whether the open device reaches guest memory through iommufd (not a
    /// type1 container).
    fn on_iommufd(&self) -> bool {
        let Ok(vdev) = self.vdev_open() else {
            return false;
        };
        // SAFETY: The device is open (`vdev_open`): the VFIO core keeps it
        // and its IOMMU context.
        unsafe { !(*vdev).iommufd_access.is_null() }
    }

    /// The handle to the pin in slot `slot` (which holds it, in use).
    fn handle(&self, slot: usize) -> Option<Pinned> {
        let s = self.slots.get(slot)?;
        let pin = s.pin.as_ref()?;
        Some(Pinned {
            owner: self as *const Inner as usize,
            slot,
            gen: s.gen,
            iova: pin.iova,
            pages: pin.pages.len(),
            writable: pin.writable,
        })
    }

    /// The pin a handle names, if it is still there.
    fn pin(&self, p: &Pinned) -> Result<&Pin> {
        if p.owner != self as *const Inner as usize {
            // Another device's handle.
            return Err(ENOENT);
        }
        match self.slots.get(p.slot) {
            Some(Slot {
                gen,
                pin: Some(pin),
            }) if *gen == p.gen && pin.idle.is_none() => Ok(pin),
            _ => Err(ENOENT),
        }
    }

    /// Unpins slot `i` (which holds a pin).
    fn unpin_slot(&mut self, i: usize) {
        let Some(pin) = self.slots[i].pin.take() else {
            return;
        };
        self.slots[i].gen = self.slots[i].gen.wrapping_add(1);
        self.pinned -= pin.pages.len();
        if pin.idle.is_some() {
            self.idle_pages -= pin.pages.len();
        }
        if let Some(m) = &pin.mapped {
            // Before the unpin: the function must not reach a page that
            // is no longer held.
            m.unmap(pin.writable);
        }
        if pin.writable {
            // Written through the pin since the last report, maybe: the
            // pages stay dirty for the next report.
            self.mark_dirty(pin.iova, pin.pages.len() as u64 * PAGE_SIZE);
        }
        let Ok(vdev) = self.vdev_open() else {
            // Unreachable: pins exist only while the device is open, and
            // closing unpins them all first.
            return;
        };
        // SAFETY: The device is open (`vdev_open`), and `(iova, npage)` is
        // exactly what `vfio_pin_pages` pinned.
        unsafe { bindings::vfio_unpin_pages(vdev, pin.iova, pin.pages.len() as i32) };
    }

    /// Whether a pin of `[start, end)` must wait: the range is fenced.
    /// Forgets unmaps and fences long past.
    fn fenced(&mut self, start: u64, end: u64) -> bool {
        let now = now_ms();
        if self.fences.iter().any(|f| now >= f.forgotten_at()) {
            let mut kept = KVec::new();
            for f in self.fences.iter() {
                if now < f.forgotten_at() {
                    // On failure the entry is forgotten: a pin that comes
                    // later is then only as safe as without fences.
                    let _ = kept.push(*f, GFP_KERNEL);
                }
            }
            self.fences = kept;
        }
        self.fences
            .iter()
            .any(|f| f.until.is_some_and(|u| now < u) && f.start < end && start < f.end)
    }

    /// The device pinned `[start, end)`: a range type1 called back for
    /// and calls back for again is fenced then.
    fn note_pin(&mut self, start: u64, end: u64) {
        for f in self.fences.iter_mut() {
            if f.start < end && start < f.end {
                f.repinned = true;
            }
        }
    }

    /// type1 called back for `[start, end)`, just unpinned (`held`: the
    /// device had pins there). Fences the range if type1 called back for
    /// it before and the device pinned into it since (type1 may find such
    /// a pin again, and crashes after ten rounds), or if the device held
    /// no pin there: the callback is then for another device's pins in
    /// the same container (or for pins the device let go of before it was
    /// told), and a pin from this device in type1's re-check window would
    /// add a round that no fence of that other device prevents.
    fn note_unmap(&mut self, start: u64, end: u64, held: bool) {
        let now = now_ms();
        if let Some(f) = self
            .fences
            .iter_mut()
            .find(|f| f.start == start && f.end == end)
        {
            if !held || (f.repinned && now < f.unmapped_at + FENCE_MEMORY_MS) {
                f.raise(now);
            }
            f.unmapped_at = now;
            f.repinned = false;
            return;
        }
        let mut new = Fence {
            start,
            end,
            unmapped_at: now,
            repinned: false,
            until: None,
            strikes: 0,
        };
        if !held {
            new.raise(now);
        }
        if self.fences.len() < MAX_FENCES && self.fences.push(new, GFP_KERNEL).is_ok() {
            return;
        }
        // The table is full (a user unmapping ever new ranges under pins):
        // one fence over all of them and this one, in force at once and as
        // long as the longest, refuses more than needed, never less.
        let mut all = Fence {
            until: Some(now + FENCE_MS),
            ..new
        };
        for f in self.fences.iter() {
            all.start = all.start.min(f.start);
            all.end = all.end.max(f.end);
            all.until = all.until.max(f.until);
            all.strikes = all.strikes.max(f.strikes);
        }
        self.fences = KVec::new();
        // Cannot fail: an empty vector's first push allocates a few bytes,
        // and if even that fails, `fenced` refuses nothing new, as before.
        let _ = self.fences.push(all, GFP_KERNEL);
    }

    /// Gives slot `i`'s pin back (its handle goes stale): kept idle for
    /// reuse if it is a read-only pin mapped for a function, unpinned
    /// otherwise. The least recently released idle pins go past
    /// [`CACHE_PAGES`].
    fn release_slot(&mut self, i: usize) {
        let cacheable = self.slots[i].pin.as_ref().is_some_and(|p| {
            !p.writable
                && p.mapped.as_ref().is_some_and(|m| m.reusable)
                && p.idle.is_none()
                && p.pages.len() <= CACHE_PAGES
        });
        if !cacheable {
            self.unpin_slot(i);
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        let slot = &mut self.slots[i];
        slot.gen = slot.gen.wrapping_add(1);
        if let Some(pin) = slot.pin.as_mut() {
            pin.idle = Some(clock);
            self.idle_pages += pin.pages.len();
        }
        while self.idle_pages > CACHE_PAGES && self.evict_idle() {}
    }

    /// Unpins the least recently released idle pin; `false` if there is
    /// none.
    fn evict_idle(&mut self) -> bool {
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.pin.as_ref().and_then(|p| p.idle).map(|at| (at, i)))
            .min();
        match oldest {
            Some((_, i)) => {
                self.unpin_slot(i);
                true
            }
            None => false,
        }
    }

    /// The slot of an idle pin of exactly `pages` pages from `iova`,
    /// mapped for `func`, taken back into use.
    fn reuse_idle(&mut self, func: &Arc<DmaFunction>, iova: u64, pages: usize) -> Option<usize> {
        let i = self.slots.iter().position(|s| {
            s.pin.as_ref().is_some_and(|p| {
                p.idle.is_some()
                    && p.iova == iova
                    && p.pages.len() == pages
                    && p.mapped
                        .as_ref()
                        .is_some_and(|m| ptr::eq::<DmaFunction>(&*m.func, &**func))
            })
        })?;
        if let Some(pin) = self.slots[i].pin.as_mut() {
            pin.idle = None;
        }
        self.idle_pages -= pages;
        Some(i)
    }

    /// Unpins every pin overlapping `[start, end)`; returns how many.
    fn unpin_range(&mut self, start: u64, end: u64) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            if self.slots[i]
                .pin
                .as_ref()
                .is_some_and(|p| p.overlaps(start, end))
            {
                self.unpin_slot(i);
                n += 1;
            }
        }
        n
    }

    /// Notes that pages `[iova, iova + len)` were written.
    fn mark_dirty(&mut self, iova: u64, len: u64) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if len == 0 {
            return;
        }
        let last_byte = iova.saturating_add(len - 1);
        for r in 0..log.ranges.len() {
            let (first, last) = log.ranges[r];
            // Only the part inside a logged range: a write elsewhere (or to
            // nothing mapped) is not the log's business.
            let (from, to) = (iova.max(first), last_byte.min(last));
            if from > to || log.all_dirty[r] {
                continue;
            }
            for page in from / PAGE_SIZE..=to / PAGE_SIZE {
                if let Err(at) = log.dirty.binary_search(&page) {
                    if log.dirty.len() >= MAX_LOGGED_PAGES
                        || log.dirty.push(page, GFP_KERNEL).is_err()
                    {
                        // Every range is dirty until a report covers it:
                        // conservative, and the list is free again.
                        log.all_dirty.as_mut_slice().fill(true);
                        log.dirty = KVec::new();
                        return;
                    }
                    // Into its place: the list stays sorted.
                    log.dirty.as_mut_slice()[at..].rotate_right(1);
                }
            }
        }
    }
}

/// Pages pinned by [`GuestMemory::pin`]. The handle is the only way to the
/// pages; it is consumed by [`GuestMemory::unpin`]. The framework may unpin
/// the pages before that (the user unmapped them, or closed the device):
/// the handle is then stale and every use of it is `-ENOENT`.
#[must_use = "pinned pages stay pinned until unpinned or unmapped"]
pub struct Pinned {
    /// The address of the device's state, which the handle only matches.
    owner: usize,
    slot: usize,
    gen: u32,
    iova: u64,
    pages: usize,
    writable: bool,
}

impl Pinned {
    /// The first pinned IOVA (page aligned).
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The number of pinned pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Whether the pages were pinned for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Whether the pinned pages overlap `[iova, iova + length)` (what
    /// [`Device::guest_unmapped`](super::device::Device::guest_unmapped)
    /// is told).
    pub fn overlaps(&self, iova: u64, length: u64) -> bool {
        pages_overlap(self.iova, self.pages, iova, iova.saturating_add(length))
    }
}

/// A device's guest memory, for its vendor. The framework hands one to
/// [`Driver::create`](super::mdev::Driver::create); it may be cloned and
/// kept in the device. Every call fails with `-ENODEV` while no user has
/// the device open, and may sleep.
#[derive(Clone)]
pub struct GuestMemory(Arc<DmaState>);

impl GuestMemory {
    /// Copies `buf.len()` bytes of guest memory at `iova` into `buf`.
    /// Where the range is not mapped: `-EINVAL` (type1) or `-ENOENT`
    /// (iommufd); not readable: `-EPERM`.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result {
        self.0.rw(iova, buf.as_mut_ptr(), buf.len(), false)
    }

    /// Copies `data` into guest memory at `iova`, and logs the pages as
    /// dirty. Errors as [`GuestMemory::read`]; `-EPERM` where the range is
    /// mapped read-only.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result {
        // `vfio_dma_rw` only reads `data` for a write.
        self.0.rw(iova, data.as_ptr().cast_mut(), data.len(), true)
    }

    /// Pins `pages` pages of guest memory from the page-aligned `iova`,
    /// for reading, and for writing too if `writable` (the mapping must
    /// allow it: `-EPERM` otherwise; unmapped pages as in
    /// [`GuestMemory::read`]). `-EINVAL` for an unaligned IOVA or a
    /// count of 0 or more than [`MAX_PIN_PAGES`]; `-ENOSPC` past
    /// [`MAX_PINNED_PAGES`] pinned by the device; `-EAGAIN` while the user
    /// is unmapping the range, or while it is fenced (the user unmapped it
    /// under a pin twice in a row and the device pinned into it in
    /// between, see [`FENCE_MS`]).
    pub fn pin(&self, iova: u64, pages: usize, writable: bool) -> Result<Pinned> {
        self.0.pin(iova, pages, writable, None)
    }

    /// Like [`GuestMemory::pin`], and maps the pages for `func` (for the
    /// function to read them, and to write them too if `writable`); the
    /// mapping goes just before the unpin, whoever unpins (the vendor, the
    /// user's unmap, close, reset). `-ENODEV` once `func` was unbound.
    pub fn pin_for(
        &self,
        func: &Arc<DmaFunction>,
        iova: u64,
        pages: usize,
        writable: bool,
    ) -> Result<Pinned> {
        self.0.pin(iova, pages, writable, Some(func))
    }

    /// The address at which the function `pinned` was mapped for reaches
    /// byte `offset` (from [`Pinned::iova`]); valid up to the end of that
    /// page (pages need not be contiguous for the device). `-EINVAL` for a
    /// pin made without a function or an offset past the pin; `-ENOENT` for
    /// a stale handle.
    pub fn device_address(&self, pinned: &Pinned, offset: usize) -> Result<u64> {
        let inner = self.0.inner.lock();
        let pin = inner.pin(pinned)?;
        let m = pin.mapped.as_ref().ok_or(EINVAL)?;
        let page = m.addrs.get(offset / PAGE_SIZE as usize).ok_or(EINVAL)?;
        Ok(page + (offset as u64 % PAGE_SIZE))
    }

    /// Unpins `pinned`. `-ENOENT` if the framework unpinned it already
    /// (the user unmapped the memory or closed the device).
    pub fn unpin(&self, pinned: Pinned) -> Result {
        let mut inner = self.0.inner.lock();
        inner.pin(&pinned)?;
        inner.unpin_slot(pinned.slot);
        Ok(())
    }

    /// Gives `pinned` back as [`GuestMemory::unpin`] does, except that a
    /// read-only pin made by [`GuestMemory::pin_for`] stays pinned and
    /// mapped, idle, and the next `pin_for` of the same pages for the same
    /// function gets it back without pinning or mapping again (see the
    /// module's documentation). As for an unpin, the function must no
    /// longer reach the pages: the framework may unpin them at any time
    /// from now on. `-ENOENT` as for [`GuestMemory::unpin`].
    pub fn release(&self, pinned: Pinned) -> Result {
        let mut inner = self.0.inner.lock();
        inner.pin(&pinned)?;
        inner.release_slot(pinned.slot);
        Ok(())
    }

    /// [`GuestMemory::release`] for each of `pins`, under one lock (a
    /// vendor gives a round's pins back at once); those the framework
    /// unpinned already are skipped.
    pub fn release_all(&self, pins: KVec<Pinned>) {
        let mut inner = self.0.inner.lock();
        for p in pins {
            if inner.pin(&p).is_ok() {
                inner.release_slot(p.slot);
            }
        }
    }

    /// Copies from the pinned pages at byte `offset` (from
    /// [`Pinned::iova`]) into `buf`.
    pub fn read_pinned(&self, pinned: &Pinned, offset: usize, buf: &mut [u8]) -> Result {
        self.0
            .pinned_rw(pinned, offset, buf.as_mut_ptr(), buf.len(), false)
    }

    /// Copies `data` into the pinned pages at byte `offset`; `-EPERM` if
    /// they were pinned read-only.
    pub fn write_pinned(&self, pinned: &Pinned, offset: usize, data: &[u8]) -> Result {
        if !pinned.writable {
            return Err(EPERM);
        }
        self.0
            .pinned_rw(pinned, offset, data.as_ptr().cast_mut(), data.len(), true)
    }

    /// The number of pages the device holds pinned (idle pins not
    /// counted).
    pub fn pinned_pages(&self) -> usize {
        let inner = self.0.inner.lock();
        inner.pinned - inner.idle_pages
    }
}

/// Maps pinned `pages` for `func`; all or nothing.
fn map_pages(
    func: &Arc<DmaFunction>,
    pages: &[*mut bindings::page],
    writable: bool,
) -> Result<KVec<u64>> {
    let mut addrs = KVec::with_capacity(pages.len(), GFP_KERNEL)?;
    for p in pages {
        // SAFETY: The caller holds the pages pinned.
        match unsafe { func.map_page(*p, !writable) } {
            // Cannot fail: the capacity was reserved.
            Ok(a) => addrs.push(a, GFP_KERNEL)?,
            Err(e) => {
                for a in addrs.iter() {
                    // SAFETY: Mapped just above, with this direction.
                    unsafe { func.unmap_page(*a, !writable) };
                }
                return Err(e);
            }
        }
    }
    Ok(addrs)
}

impl DmaState {
    /// A device's guest-memory state, not registered yet.
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                inner <- Mutex::new(
                    Inner {
                        vdev: ptr::null_mut(),
                        open: false,
                        slots: KVec::new(),
                        pinned: 0,
                        idle_pages: 0,
                        clock: 0,
                        log: None,
                        fences: KVec::new(),
                        unmapping: None,
                    },
                    lock_name!("guest_memory"),
                    static_lock_class!()
                ),
            }),
            GFP_KERNEL,
        )
    }

    /// The vendor's handle.
    pub(crate) fn handle(self: &Arc<Self>) -> GuestMemory {
        GuestMemory(self.clone())
    }

    /// Records the VFIO device, before it is registered.
    pub(crate) fn set_vdev(&self, vdev: *mut bindings::vfio_device) {
        self.inner.lock().vdev = vdev;
    }

    /// `open_device`: guest memory is reachable from now on.
    pub(crate) fn opened(&self) {
        self.inner.lock().open = true;
    }

    /// `close_device`: unpins everything and stops the log; guest memory
    /// is unreachable from now on.
    pub(crate) fn closed(&self) {
        let mut inner = self.inner.lock();
        // The slots stay, their generations bumped by the unpins: a handle
        // kept from this user never matches a pin of the next.
        inner.unpin_range(0, u64::MAX);
        inner.log = None;
        inner.fences = KVec::new();
        inner.open = false;
    }

    /// `VFIO_DEVICE_RESET`: the device forgot its DMA set-up; unpins
    /// everything (logging goes on).
    pub(crate) fn unpin_all(&self) {
        self.inner.lock().unpin_range(0, u64::MAX);
    }

    /// The `dma_unmap` callback's first part, before the vendor is told:
    /// pins into `[iova, iova + length)` are refused (`-EAGAIN`) until
    /// [`DmaState::unmapped`].
    pub(crate) fn unmapping(&self, iova: u64, length: u64) {
        self.inner.lock().unmapping = Some((iova, iova.saturating_add(length)));
    }

    /// The `dma_unmap` callback's last part (the vendor was told):
    /// unpins every pin in `[iova, iova + length)`.
    pub(crate) fn unmapped(&self, iova: u64, length: u64) {
        let end = iova.saturating_add(length);
        let mut inner = self.inner.lock();
        inner.unmapping = None;
        let held = inner.unpin_range(iova, end) > 0;
        // Only type1 needs fences: iommufd refuses pins into a range while
        // it unmaps it, and its detach (everything unmapped) would
        // otherwise fence the whole address space. type1 calls only for a
        // range something pinned (any device of the container), and again
        // for the same range if it finds a pin made after the callback.
        if !inner.on_iommufd() {
            inner.note_unmap(iova, end, held);
        }
    }

    fn rw(&self, iova: u64, data: *mut u8, len: usize, write: bool) -> Result {
        if len == 0 {
            return Ok(());
        }
        iova.checked_add(len as u64).ok_or(EINVAL)?;
        let mut inner = self.inner.lock();
        let vdev = inner.vdev_open()?;
        if write {
            // Before the copy: a copy that fails may have written a part.
            inner.mark_dirty(iova, len as u64);
        }
        // SAFETY: The device is open (`vdev_open`) and stays so while the
        // lock is held (`closed` takes it); `data` is valid for `len`
        // bytes, and only read for a write.
        let ret = unsafe { bindings::vfio_dma_rw(vdev, iova, data.cast::<c_void>(), len, write) };
        kernel::error::to_result(ret)
    }

    fn pin(
        &self,
        iova: u64,
        pages: usize,
        writable: bool,
        func: Option<&Arc<DmaFunction>>,
    ) -> Result<Pinned> {
        if iova % PAGE_SIZE != 0 || pages == 0 || pages > MAX_PIN_PAGES {
            return Err(EINVAL);
        }
        iova.checked_add(pages as u64 * PAGE_SIZE).ok_or(EINVAL)?;
        let mut inner = self.inner.lock();
        let vdev = inner.vdev_open()?;
        let end = iova + pages as u64 * PAGE_SIZE;
        let unmapping = inner
            .unmapping
            .is_some_and(|(start, stop)| start < end && iova < stop);
        if unmapping || inner.fenced(iova, end) {
            return Err(EAGAIN);
        }
        if let Some(f) = func.filter(|_| !writable) {
            if let Some(slot) = inner.reuse_idle(f, iova, pages) {
                if !f.is_live() {
                    // As a new pin would be: no mapping for a function
                    // that is gone.
                    inner.unpin_slot(slot);
                    return Err(ENODEV);
                }
                return inner.handle(slot).ok_or(EINVAL);
            }
        }
        // After the cache: a pin taken back from it allocates nothing for
        // its pages.
        let mut list = KVec::with_capacity(pages, GFP_KERNEL)?;
        let mut raw = KVec::from_elem(ptr::null_mut::<bindings::page>(), pages, GFP_KERNEL)?;
        while inner.pinned + pages > MAX_PINNED_PAGES && inner.evict_idle() {}
        if inner.pinned + pages > MAX_PINNED_PAGES {
            return Err(ENOSPC);
        }
        let slot = match inner.slots.iter().position(|s| s.pin.is_none()) {
            Some(i) => i,
            None => {
                // Generations from one counter for every device of the
                // module: a handle outliving its device matches no slot
                // of a device allocated where it was.
                let gen = NEXT_GEN.fetch_add(1 << 16, Ordering::Relaxed);
                inner.slots.push(Slot { gen, pin: None }, GFP_KERNEL)?;
                inner.slots.len() - 1
            }
        };
        let prot = IOMMU_READ | if writable { IOMMU_WRITE } else { 0 };
        // SAFETY: Called only below, while this function holds `inner`'s
        // lock, under which the device stays open (`vdev_open` above);
        // `raw` has room for `pages` page pointers; the framework wires
        // `dma_unmap`, which `vfio_pin_pages` requires.
        let mut pin_pages = || unsafe {
            bindings::vfio_pin_pages(vdev, iova, pages as i32, prot, raw.as_mut_ptr())
        };
        let mut ret = pin_pages();
        if ret == ENOMEM.to_errno() && inner.idle_pages > 0 {
            // Idle pins count towards the user's locked memory: they go
            // first, and the pin is tried once more.
            while inner.evict_idle() {}
            ret = pin_pages();
        }
        if ret < 0 {
            return Err(Error::from_errno(ret));
        }
        if ret as usize != pages {
            // All or nothing in 6.12; undo a partial answer all the same.
            if ret > 0 {
                // SAFETY: As above; these are the pages just pinned.
                unsafe { bindings::vfio_unpin_pages(vdev, iova, ret) };
            }
            return Err(EFAULT);
        }
        for p in raw.iter() {
            // Cannot fail: the capacity was reserved.
            list.push(PagePtr(*p), GFP_KERNEL)?;
        }
        let mapped = match func {
            None => None,
            Some(f) => match map_pages(f, &raw, writable) {
                Ok(addrs) => Some(Mapped {
                    reusable: addrs.iter().all(|a| !f.needs_sync(*a)),
                    func: f.clone(),
                    addrs,
                }),
                Err(e) => {
                    // SAFETY: As above; these are the pages just pinned.
                    unsafe { bindings::vfio_unpin_pages(vdev, iova, pages as i32) };
                    return Err(e);
                }
            },
        };
        inner.slots[slot].pin = Some(Pin {
            iova,
            pages: list,
            writable,
            mapped,
            idle: None,
        });
        inner.pinned += pages;
        inner.note_pin(iova, end);
        inner.handle(slot).ok_or(EINVAL)
    }

    fn pinned_rw(
        &self,
        pinned: &Pinned,
        offset: usize,
        data: *mut u8,
        len: usize,
        write: bool,
    ) -> Result {
        let end = offset.checked_add(len).ok_or(EINVAL)?;
        if end > pinned.pages * PAGE_SIZE as usize {
            return Err(EINVAL);
        }
        let inner = self.inner.lock();
        let pin = inner.pin(pinned)?;
        let mut done = 0;
        while done < len {
            let at = offset + done;
            let page = &pin.pages[at / PAGE_SIZE as usize];
            let in_page = at % PAGE_SIZE as usize;
            let n = (len - done).min(PAGE_SIZE as usize - in_page);
            // SAFETY: The page is pinned (its slot still holds it, under
            // the lock, so no unpin runs); `in_page + n` stays inside it;
            // `data + done` is valid for `n` bytes.
            unsafe { bindings::rmdev_page_copy(page.0, in_page, data.add(done).cast(), n, write) };
            done += n;
        }
        Ok(())
    }

    /// `log_start`: logging the ranges of `ranges` starts, with nothing
    /// dirty.
    ///
    /// # Safety
    ///
    /// `ranges` is the VFIO core's interval tree of the ranges to log.
    pub(crate) unsafe fn log_start(&self, ranges: *mut bindings::rb_root_cached) -> Result {
        let mut list = KVec::new();
        // SAFETY: By the contract; the tree lives for this call.
        let mut node = unsafe { bindings::interval_tree_iter_first(ranges, 0, usize::MAX) };
        while !node.is_null() {
            // SAFETY: A node of the tree, valid for this call.
            let (start, last) = unsafe { ((*node).start, (*node).last) };
            // `unsigned long` is 64 bits: rmdev is x86-64 only (rmdev.mk).
            list.push((start as u64, last as u64), GFP_KERNEL)?;
            // SAFETY: As above.
            node = unsafe { bindings::interval_tree_iter_next(node, 0, usize::MAX) };
        }
        let all_dirty = KVec::from_elem(false, list.len(), GFP_KERNEL)?;
        self.inner.lock().log = Some(Log {
            ranges: list,
            dirty: KVec::new(),
            all_dirty,
        });
        Ok(())
    }

    /// `log_stop`.
    pub(crate) fn log_stop(&self) {
        self.inner.lock().log = None;
    }

    /// `log_read_and_clear`: sets the dirty pages of `[iova, iova +
    /// length)` in `bitmap` and forgets the written ones.
    ///
    /// # Safety
    ///
    /// `bitmap` is the VFIO core's bitmap for this call, covering the range.
    pub(crate) unsafe fn log_read(
        &self,
        iova: u64,
        length: u64,
        bitmap: *mut bindings::iova_bitmap,
    ) -> Result {
        if length == 0 {
            return Ok(());
        }
        // Inclusive bounds throughout: the last page of the address space
        // has no end that fits in a `u64`.
        let last = iova.checked_add(length - 1).ok_or(EINVAL)?;
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let log = inner.log.as_mut().ok_or(EINVAL)?;
        let set = |first: u64, final_byte: u64| {
            let (from, to) = (first.max(iova), final_byte.min(last));
            if from <= to {
                // SAFETY: By the contract; the range is inside the bitmap's.
                unsafe {
                    bindings::rmdev_iova_bitmap_set(
                        bitmap,
                        from as usize,
                        (to - from).saturating_add(1) as usize,
                    )
                };
            }
        };
        for (r, &(first, final_byte)) in log.ranges.iter().enumerate() {
            if log.all_dirty[r] {
                set(first, final_byte);
                // Cleared once a report covered the whole range.
                if iova <= first && final_byte <= last {
                    log.all_dirty[r] = false;
                }
            }
        }
        let from = log.dirty.partition_point(|&p| p < iova / PAGE_SIZE);
        let mut to = from;
        while to < log.dirty.len() && log.dirty[to] <= last / PAGE_SIZE {
            let page = log.dirty[to] * PAGE_SIZE;
            set(page, page + (PAGE_SIZE - 1));
            to += 1;
        }
        if to > from {
            let mut kept = KVec::with_capacity(log.dirty.len() - (to - from), GFP_KERNEL)?;
            kept.extend_from_slice(&log.dirty[..from], GFP_KERNEL)?;
            kept.extend_from_slice(&log.dirty[to..], GFP_KERNEL)?;
            log.dirty = kept;
        }
        for slot in inner.slots.iter() {
            if let Some(pin) = slot.pin.as_ref().filter(|p| p.writable) {
                set(
                    pin.iova,
                    pin.iova + (pin.pages.len() as u64 * PAGE_SIZE - 1),
                );
            }
        }
        Ok(())
    }
}
