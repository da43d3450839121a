// SPDX-License-Identifier: GPL-2.0

//! rmdev_sample: a migratable mediated device with no hardware behind it.
//!
//! This is the example a vendor copies (walked through in
//! `Documentation/vendor-guide.rst`). Each mdev is a small PCI-like device:
//!
//! - BAR0 (region 0): 64 bytes of 32-bit registers, see [`reg`]; those
//!   from `DMA_IOVA_LO` on make the device reach its user's memory through
//!   the framework's [`GuestMemory`]: copies between the device memory and
//!   guest memory, and one pin of guest pages;
//! - BAR2 (region 2): the device memory, 16 KiB to 256 MiB by type;
//! - config space (region 7): emulated by the framework from
//!   [`Device::pci_config`], with BAR sizing, command and status.
//!
//! It migrates: the memory tracks which pages changed since they were last
//! saved, so pre-copy sends the whole memory once and then only the dirtied
//! pages, and stop-copy sends what is left plus the registers. The flag set
//! comes from the `migration_flags` module parameter (any of the four the
//! uAPI defines, or 0 for none), the data format's major version from
//! `format_version`. Both are read at load time for the types, and again at
//! each mdev's creation: an mdev created after a change has the new flag set
//! or its own version string (whether mdevs migrate at all is fixed at load;
//! `sample_params.c` refuses a write that would change it).
//!
//! For tests of pre-copy, the `precopy_dirty_pages` parameter (0, the
//! default, turns it off) simulates an engine that keeps writing the device
//! memory while the device runs: each time a pre-copy read of the save file
//! finds nothing left to send, the device writes that many pages and so
//! dirties them (see `Memory::engine_writes` and `SampleSave`). The
//! `CMD_ENGINE_TIMER` command runs the same engine once, from a timer in
//! hard interrupt context, as a device whose state changes on its own: the
//! timer wakes a waiting pre-copy reader through the framework's
//! [`SaveWaker`].
//!
//! Stream records (payloads are little-endian):
//!
//! - [`TAG_MEM`]: `u64` byte offset, then the bytes at that offset;
//! - [`TAG_REGS`]: `u32` SCRATCH, `u32` CHECKSUM, `u32` WRITES; last.

#[path = "../core/rmdev.rs"]
pub mod rmdev;

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{Arc, Mutex};
use kernel::{c_str, new_mutex};

use rmdev::device::{
    region, BarKind, Device, GuestMemory, Identity, Interrupts, PciConfig, Pinned, PrecopyInfo,
    RecordOut, Region, SavePhase, SaveWaker, Saved, StopCopySize,
};
use rmdev::fsm::{FlagSet, StateArc, StepFailure};
use rmdev::mdev::{self, Parent, Registration, TypeInfo};
use rmdev::version::{DefaultRule, VersionBuf, VersionRule};

module! {
    type: SampleModule,
    name: "rmdev_sample",
    author: "rmdev developers",
    description: "rmdev sample: migratable mdevs with device memory",
    license: "GPL",
}

/// Register offsets in BAR0. Every register is 32 bits wide and only
/// aligned 32-bit accesses are accepted.
pub mod reg {
    /// Read-only: `RMDV` in ASCII (0x56444d52).
    pub const ID: u64 = 0x00;
    /// Read-only: the data format's major version.
    pub const FORMAT: u64 = 0x04;
    /// Read-only: memory size in bytes, low 32 bits.
    pub const MEM_SIZE_LO: u64 = 0x08;
    /// Read-only: memory size in bytes, high 32 bits.
    pub const MEM_SIZE_HI: u64 = 0x0c;
    /// Read-write scratch register.
    pub const SCRATCH: u64 = 0x10;
    /// Write-only: writing [`CMD_CHECKSUM`](super::CMD_CHECKSUM) computes the
    /// CRC-32C of the memory into CHECKSUM and raises the device's interrupt
    /// (MSI vector 0, or INTx); writing
    /// [`CMD_LOSE_NEXT_ARC`](super::CMD_LOSE_NEXT_ARC) makes the next
    /// migration arc fail and lose the device state (fault injection, for
    /// testing the ERROR state); writing
    /// [`CMD_FAIL_NEXT_ARC`](super::CMD_FAIL_NEXT_ARC) makes the next arc
    /// fail with `-EBUSY` and leave the device where it was; writing
    /// [`CMD_OVERSIZE_NEXT_RECORD`](super::CMD_OVERSIZE_NEXT_RECORD) makes
    /// the next saved record break the framework's contract; writing
    /// [`CMD_CHECKSUM_TIMER`](super::CMD_CHECKSUM_TIMER) computes the
    /// checksum and raises the interrupt 1 ms later from a timer that
    /// expires in hard interrupt context; writing
    /// [`CMD_ENGINE_TIMER`](super::CMD_ENGINE_TIMER) runs the engine once,
    /// [`ENGINE_DELAY_MS`](super::ENGINE_DELAY_MS) later, from such a timer.
    pub const CMD: u64 = 0x14;
    /// Read-only: result of the last checksum command.
    pub const CHECKSUM: u64 = 0x18;
    /// Read-only: number of writes to the memory through BAR2 since
    /// creation (the device's own writes of `precopy_dirty_pages` do not
    /// count).
    pub const WRITES: u64 = 0x1c;
    /// Read-write: the guest IOVA of the next DMA command, low 32 bits.
    pub const DMA_IOVA_LO: u64 = 0x20;
    /// Read-write: the guest IOVA, high 32 bits.
    pub const DMA_IOVA_HI: u64 = 0x24;
    /// Read-write: the byte count of a copy, the page count of a pin.
    pub const DMA_LEN: u64 = 0x28;
    /// Read-write: the byte offset in the device memory of a copy.
    pub const DMA_OFFSET: u64 = 0x2c;
    /// Write-only: a DMA command, one of the `DMA_*` values
    /// ([`DMA_TO_GUEST`](super::DMA_TO_GUEST) and its siblings). The
    /// write itself succeeds; the command's result is in `DMA_STATUS`.
    pub const DMA_CMD: u64 = 0x30;
    /// Read-only: the result of the last DMA command: 0, or its errno.
    pub const DMA_STATUS: u64 = 0x34;
    /// Read-only: the pages the device has pinned (the framework's count).
    pub const DMA_PINNED: u64 = 0x38;
    /// Read-only: how many times the user unmapped memory under the
    /// device's pin (the framework then unpinned it).
    pub const DMA_UNMAPS: u64 = 0x3c;
    /// Size of the register block.
    pub const SIZE: u64 = 0x40;
}

/// The longest copy one DMA command makes (`-EINVAL` past it).
pub const MAX_DMA_LEN: usize = 1 << 20;
/// DMA command: copy `DMA_LEN` bytes of device memory at `DMA_OFFSET` to
/// guest memory at the IOVA (the pages are logged dirty).
pub const DMA_TO_GUEST: u32 = 1;
/// DMA command: copy `DMA_LEN` bytes of guest memory at the IOVA into the
/// device memory at `DMA_OFFSET`.
pub const DMA_FROM_GUEST: u32 = 2;
/// DMA command: pin `DMA_LEN` pages of guest memory at the IOVA (page
/// aligned) for writing; the device holds one pin at a time (`-EBUSY`).
pub const DMA_PIN: u32 = 3;
/// DMA command: unpin the device's pin.
pub const DMA_UNPIN: u32 = 4;
/// DMA command: copy `DMA_LEN` bytes of device memory at `DMA_OFFSET` into
/// the pinned pages, from their start (through the pin, not by IOVA).
pub const DMA_TO_PINNED: u32 = 5;

const ID_VALUE: u32 = u32::from_le_bytes(*b"RMDV");
/// CMD value: checksum the memory.
pub const CMD_CHECKSUM: u32 = 1;
/// CMD value: the next migration arc fails and the device goes to ERROR.
pub const CMD_LOSE_NEXT_ARC: u32 = 2;
/// CMD value: the next migration arc fails and the device stays where it was.
pub const CMD_FAIL_NEXT_ARC: u32 = 3;
/// CMD value: the next saved record claims one byte more than the buffer the
/// framework gave (a vendor bug, for testing that the framework refuses it).
pub const CMD_OVERSIZE_NEXT_RECORD: u32 = 4;
/// CMD value: checksum the memory, and raise the interrupt from a hard
/// interrupt timer 1 ms later (`sample_timer.c`), as a hardware device's
/// interrupt handler would.
pub const CMD_CHECKSUM_TIMER: u32 = 5;
/// CMD value: [`ENGINE_DELAY_MS`] later, from a timer in hard interrupt
/// context, the device's engine writes `precopy_dirty_pages` pages (one if
/// the parameter is 0) as it does in pre-copy, dirtying them, and the
/// device wakes a pre-copy reader waiting in `poll` ([`SaveWaker`]). A
/// second command before the run restarts its delay (one run). The write
/// fails with `-EBUSY` while the device is stopped (STOP, STOP_COPY,
/// RESUMING, ERROR): stopping it cancels a run not yet finished, and a
/// stopped device changes nothing. A reset, an open and a close cancel it
/// too, and leave the device running.
pub const CMD_ENGINE_TIMER: u32 = 6;
/// How long after `CMD_ENGINE_TIMER` the engine runs: long enough for a
/// test to be waiting in `poll` by then.
pub const ENGINE_DELAY_MS: u64 = 200;
const PAGE: usize = 4096;
/// Pages per memory record: records stay at 64 KiB, whatever the memory size.
const RECORD_PAGES: usize = 16;
/// Record tag: a run of memory.
pub const TAG_MEM: u16 = 1;
/// Record tag: the registers (the last record).
pub const TAG_REGS: u16 = 2;
const REGS_LEN: usize = 12;

/// Module parameters (defined in `sample_params.c`).
mod params {
    extern "C" {
        fn rmdev_sample_migration_flags() -> u32;
        fn rmdev_sample_format_version() -> u32;
        fn rmdev_sample_max_record() -> u32;
        fn rmdev_sample_precopy_dirty_pages() -> u32;
    }

    /// The `max_record` parameter (0: the default).
    pub(crate) fn max_record() -> u32 {
        // SAFETY: Reads a module parameter; no precondition.
        unsafe { rmdev_sample_max_record() }
    }

    /// The `migration_flags` parameter.
    pub(crate) fn migration_flags() -> u32 {
        // SAFETY: Reads a module parameter; no precondition.
        unsafe { rmdev_sample_migration_flags() }
    }

    /// For `sample_params.c`, which refuses a write of `migration_flags`
    /// that is not a flag set the uAPI defines.
    #[no_mangle]
    extern "C" fn rmdev_sample_flag_set_valid(bits: u32) -> bool {
        super::FlagSet::from_bits(bits).is_ok()
    }

    /// The `format_version` parameter.
    pub(crate) fn format_version() -> u32 {
        // SAFETY: Reads a module parameter; no precondition.
        unsafe { rmdev_sample_format_version() }
    }

    /// The `precopy_dirty_pages` parameter (0: the device writes nothing).
    pub(crate) fn precopy_dirty_pages() -> u32 {
        // SAFETY: Reads a module parameter; no precondition.
        unsafe { rmdev_sample_precopy_dirty_pages() }
    }
}

/// The memory sizes of the types, in the order of [`Sample::TYPES`].
const SIZES: [usize; 4] = [16 << 10, 4 << 20, 64 << 20, 256 << 20];

/// The parent: the settings the module was loaded with, which its types
/// keep (an mdev reads the parameters again when it is created).
struct Sample {
    flags: Option<FlagSet>,
    format: u16,
}

impl Sample {
    /// The flag set of an mdev created now: the `migration_flags` parameter
    /// as it is, which `sample_params.c` keeps a flag set exactly when the
    /// module was loaded with one (checked again here all the same).
    fn flag_set(&self) -> Result<Option<FlagSet>> {
        match (params::migration_flags(), self.flags) {
            (0, None) => Ok(None),
            (bits, Some(_)) => FlagSet::from_bits(bits).map(Some).map_err(|_| EINVAL),
            (_, None) => Err(EINVAL),
        }
    }
}

impl mdev::Driver for Sample {
    const NAME: &'static CStr = c_str!("rmdev_sample");
    const DEVICE_API: &'static CStr = c_str!("vfio-pci");
    const TYPES: &'static [TypeInfo] = &[
        TypeInfo {
            sysfs_name: c_str!("16k"),
            name: c_str!("sample-16k"),
            description: c_str!("rmdev sample device with 16 KiB of memory"),
            max_instances: 8,
        },
        TypeInfo {
            sysfs_name: c_str!("4m"),
            name: c_str!("sample-4m"),
            description: c_str!("rmdev sample device with 4 MiB of memory"),
            max_instances: 4,
        },
        TypeInfo {
            sysfs_name: c_str!("64m"),
            name: c_str!("sample-64m"),
            description: c_str!("rmdev sample device with 64 MiB of memory"),
            max_instances: 2,
        },
        TypeInfo {
            sysfs_name: c_str!("256m"),
            name: c_str!("sample-256m"),
            description: c_str!("rmdev sample device with 256 MiB of memory"),
            max_instances: 2,
        },
    ];
    type Device = SampleDevice;

    fn create(
        &self,
        type_index: usize,
        irqs: Interrupts,
        guest: GuestMemory,
        waker: SaveWaker,
    ) -> impl PinInit<SampleDevice, Error> {
        let size = SIZES[type_index];
        let memory = Memory::new(size);
        let flags = self.flag_set();
        let max_record = params::max_record() as usize;
        // The format of new mdevs follows the `format_version` parameter,
        // which may have changed since the module was loaded (for tests of
        // incompatible targets); the device then has its own version string.
        let format = u16::try_from(params::format_version())
            .ok()
            .filter(|&f| f > 0)
            .ok_or(EINVAL);
        let version = format.and_then(|f| {
            if f == self.format {
                return Ok(None);
            }
            let ty = Self::TYPES[type_index]
                .sysfs_name
                .to_str()
                .map_err(|_| EINVAL)?;
            VersionBuf::new("rmdev_sample", ty, f, 0)
                .map(Some)
                .map_err(|_| EINVAL)
        });
        let timer = SampleTimer::new(irqs.clone());
        let engine_timer = SampleTimer::new(EngineRuns {
            finished: AtomicU32::new(0),
            running: AtomicBool::new(true),
            armed: AtomicBool::new(false),
            waker,
        });
        try_pin_init!(SampleDevice {
            size,
            max_record,
            timer: timer?,
            engine_timer: engine_timer?,
            irqs,
            flags: flags?,
            format: format?,
            version: version?,
            next_arc: AtomicU8::new(ArcFault::None as u8),
            mem <- new_mutex!(memory?, "rmdev_sample:mem"),
            guest,
            dma <- new_mutex!(SampleDma::default(), "rmdev_sample:dma"),
        })
    }

    fn migration_format(&self, _type_index: usize) -> Option<(u16, u16)> {
        // Every type migrates when the module has a flag set; the framework
        // builds the version strings from this in the default format:
        // "rmdev_sample:<type>:<format>.0".
        self.flags.map(|_| (self.format, 0))
    }
}

/// The device's mutable state.
struct Memory {
    bytes: VVec<u8>,
    /// One bit per page: written since it was last saved.
    dirty: KVec<u64>,
    /// The bits set in `dirty`, so that a clean device answers
    /// `precopy_info` without a scan (the framework asks once per record).
    dirty_pages: usize,
    scratch: u32,
    checksum: u32,
    writes: u32,
    /// Fault injection: the next saved record lies about its length.
    oversize_next: bool,
    /// The simulated engine's next page to write (`precopy_dirty_pages`).
    engine_page: usize,
    /// The simulated engine's writes so far: the first word it writes.
    engine_generation: u64,
}

/// Fault injection for the next migration arc, kept in an atomic
/// ([`SampleDevice::next_arc`]) rather than under the memory lock: every
/// arc reads it, and a SET should cost no lock beyond the framework's own.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum ArcFault {
    None = 0,
    /// The arc fails and the device state is lost (ERROR).
    Lose = 1,
    /// The arc fails and the device stays where it was.
    Fail = 2,
}

impl ArcFault {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Lose,
            2 => Self::Fail,
            _ => Self::None,
        }
    }
}

impl Memory {
    fn new(size: usize) -> Result<Self> {
        let pages = size / PAGE;
        Ok(Self {
            bytes: VVec::from_elem(0u8, size, GFP_KERNEL)?,
            dirty: KVec::from_elem(0u64, pages.div_ceil(64), GFP_KERNEL)?,
            dirty_pages: 0,
            scratch: 0,
            checksum: 0,
            writes: 0,
            oversize_next: false,
            engine_page: 0,
            engine_generation: 0,
        })
    }

    fn pages(&self) -> usize {
        self.bytes.len() / PAGE
    }

    fn mark_dirty(&mut self, offset: usize, len: usize) {
        let first = offset / PAGE;
        let last = (offset + len - 1) / PAGE;
        for p in first..=last {
            let (word, bit) = (&mut self.dirty[p / 64], 1 << (p % 64));
            if *word & bit == 0 {
                *word |= bit;
                self.dirty_pages += 1;
            }
        }
    }

    /// Forgets every write: the next save sends every page anyway.
    fn clear_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|w| *w = 0);
        self.dirty_pages = 0;
    }

    /// The dirty pages below `end`, a word of the bitmap at a time.
    fn dirty_below(&self, end: usize) -> usize {
        if self.dirty_pages == 0 {
            return 0;
        }
        let full = end / 64;
        let whole: u32 = self.dirty[..full].iter().map(|w| w.count_ones()).sum();
        let part = match end % 64 {
            0 => 0,
            bits => (self.dirty[full] & ((1u64 << bits) - 1)).count_ones(),
        };
        (whole + part) as usize
    }

    fn is_dirty(&self, page: usize) -> bool {
        self.dirty[page / 64] & (1 << (page % 64)) != 0
    }

    /// The dirty pages below `end` and the records the save sends them in
    /// (runs of at most `per_record` pages).
    fn dirty_runs(&self, end: usize, per_record: usize) -> (usize, usize) {
        let (mut pages, mut records, mut run) = (0, 0, 0);
        if self.dirty_pages == 0 {
            return (0, 0);
        }
        let mut p = 0;
        while p < end {
            if p % 64 == 0 && self.dirty[p / 64] == 0 {
                // A clean word: 64 clean pages end any run.
                run = 0;
                p += 64;
                continue;
            }
            if self.is_dirty(p) {
                if run == 0 || run == per_record {
                    records += 1;
                    run = 0;
                }
                run += 1;
                pages += 1;
            } else {
                run = 0;
            }
            p += 1;
        }
        (pages, records)
    }

    /// The device writes its own memory, as an engine running on it would
    /// (the `precopy_dirty_pages` parameter): `n` pages, at most all of
    /// them, from the page after the ones it wrote last, wrapping around.
    /// Each gets the new generation (a `u64` that grows by one per call,
    /// starting at 1) and then its page index (a `u64`) in its first 16
    /// bytes; the rest of the page stays. The pages become dirty, so the
    /// next pre-copy round and stop-copy send them again.
    fn engine_writes(&mut self, n: usize) {
        let pages = self.pages();
        let n = n.min(pages);
        if n == 0 {
            return;
        }
        self.engine_generation = self.engine_generation.wrapping_add(1);
        let generation = self.engine_generation.to_le_bytes();
        for i in 0..n {
            let page = (self.engine_page + i) % pages;
            let at = page * PAGE;
            self.bytes[at..at + 8].copy_from_slice(&generation);
            self.bytes[at + 8..at + 16].copy_from_slice(&(page as u64).to_le_bytes());
            self.mark_dirty(at, PAGE);
        }
        self.engine_page = (self.engine_page + n) % pages;
    }

    /// The first run of dirty pages (at most `max` pages).
    fn dirty_run(&self, max: usize) -> Option<(usize, usize)> {
        let word = self.dirty.iter().position(|&w| w != 0)?;
        let start = word * 64 + self.dirty[word].trailing_zeros() as usize;
        let mut n = 1;
        while n < max && start + n < self.pages() && self.is_dirty(start + n) {
            n += 1;
        }
        Some((start, n))
    }

    /// Writes a memory record for pages `start..start + n` into `buf` and
    /// clears their dirty bits. Returns the payload length.
    fn save_pages(&mut self, start: usize, n: usize, buf: &mut [u8]) -> usize {
        let (from, len) = (start * PAGE, n * PAGE);
        buf[..8].copy_from_slice(&(from as u64).to_le_bytes());
        buf[8..8 + len].copy_from_slice(&self.bytes[from..from + len]);
        self.clean_pages(start, n);
        8 + len
    }

    /// The registers record's payload.
    fn regs(&self) -> [u8; REGS_LEN] {
        let mut r = [0u8; REGS_LEN];
        r[0..4].copy_from_slice(&self.scratch.to_le_bytes());
        r[4..8].copy_from_slice(&self.checksum.to_le_bytes());
        r[8..12].copy_from_slice(&self.writes.to_le_bytes());
        r
    }

    /// Clears the dirty bits of pages `start..start + n`: they were saved.
    fn clean_pages(&mut self, start: usize, n: usize) {
        for p in start..start + n {
            let (word, bit) = (&mut self.dirty[p / 64], 1 << (p % 64));
            if *word & bit != 0 {
                *word &= !bit;
                self.dirty_pages -= 1;
            }
        }
    }
}

/// The next record of a save session, as [`next_record`] decides it.
enum NextRecord {
    /// Fault injection: a record longer than allowed.
    Oversize,
    /// A memory record of pages `start..start + n`.
    Pages(usize, usize),
    /// The registers, stop-copy's last record.
    Regs,
    /// No record: [`Saved::Later`] or [`Saved::Done`].
    Nothing(Saved),
}

/// Decides the next record of save session `s` whose payloads are at most
/// `max` bytes, and moves the session past it.
fn next_record(
    m: &mut Memory,
    s: &mut SampleSave,
    phase: SavePhase,
    max: usize,
) -> Result<NextRecord> {
    if core::mem::take(&mut m.oversize_next) {
        return Ok(NextRecord::Oversize);
    }
    // As many pages as fit after the 8-byte offset.
    let fit = max.saturating_sub(8) / PAGE;
    if fit == 0 {
        return Err(EINVAL);
    }
    let pages = m.pages();
    if s.cursor < pages {
        let n = fit.min(RECORD_PAGES).min(pages - s.cursor);
        let start = s.cursor;
        s.cursor += n;
        s.idle = false;
        return Ok(NextRecord::Pages(start, n));
    }
    if let Some((start, n)) = m.dirty_run(fit.min(RECORD_PAGES)) {
        s.idle = false;
        return Ok(NextRecord::Pages(start, n));
    }
    Ok(match phase {
        // PRE_COPY or PRE_COPY_P2P (the phase does not tell them apart): the
        // device runs in both, so the engine may write. Only on the second
        // call in a row with nothing left, whose read fails with `-ENOMSG`
        // (see `SampleSave`); what it writes is sent from the next read on.
        SavePhase::PreCopy => {
            if core::mem::replace(&mut s.idle, true) {
                m.engine_writes(params::precopy_dirty_pages() as usize);
            }
            NextRecord::Nothing(Saved::Later)
        }
        SavePhase::StopCopy if !s.regs_sent => {
            s.regs_sent = true;
            NextRecord::Regs
        }
        SavePhase::StopCopy => NextRecord::Nothing(Saved::Done),
    })
}

/// The C side of the sample's timers (`sample_timer.c`).
mod timer {
    use core::ffi::c_void;

    /// `struct rmdev_sample_timer`.
    #[repr(C)]
    pub(crate) struct RawTimer {
        _opaque: [u8; 0],
    }

    extern "C" {
        pub(crate) fn rmdev_sample_timer_new(
            fired: unsafe extern "C" fn(*const c_void),
            ctx: *const c_void,
        ) -> *mut RawTimer;
        pub(crate) fn rmdev_sample_timer_start(t: *mut RawTimer, ns: core::ffi::c_ulong);
        pub(crate) fn rmdev_sample_timer_cancel(t: *mut RawTimer);
        pub(crate) fn rmdev_sample_timer_free(t: *mut RawTimer);
    }
}

/// What a [`SampleTimer`] does when it expires, in hard interrupt context:
/// it must not sleep.
trait TimerTarget: Send + Sync {
    fn fired(&self);
}

impl TimerTarget for Interrupts {
    fn fired(&self) {
        self.raise();
    }
}

/// The engine runs `CMD_ENGINE_TIMER` started and its timer finished: the
/// timer cannot take the memory's mutex, so it counts the run here and
/// [`SampleDevice::mem`] writes the pages before anyone looks at the
/// memory. To every observer (the user's reads, `precopy_info`, the
/// stream), the pages changed when the timer expired.
struct EngineRuns {
    finished: AtomicU32,
    /// The device runs (RUNNING, RUNNING_P2P or a pre-copy state): only
    /// then may it change its own state.
    running: AtomicBool,
    /// A command 6 may have started the timer since the device last
    /// stopped: stopping must cancel it. Set under the memory lock, cleared
    /// under it after the cancel.
    armed: AtomicBool,
    waker: SaveWaker,
}

impl TimerTarget for EngineRuns {
    fn fired(&self) {
        // Counted first: the woken reader's `precopy_info` must see it.
        self.finished.fetch_add(1, Ordering::Release);
        self.waker.wake();
    }
}

/// A one-shot hrtimer that calls its target's [`TimerTarget::fired`] in
/// hard interrupt context.
///
/// # Invariants
///
/// `raw` is a timer from `rmdev_sample_timer_new` that passes `target`, a
/// pointer from `KBox::into_raw`, to [`timer_fired::<T>`]; both live until
/// `drop`, which cancels the timer first.
struct SampleTimer<T: TimerTarget> {
    raw: *mut timer::RawTimer,
    target: *mut T,
}

// SAFETY: The C timer may be started and cancelled from any thread, and
// `T` is `Send` and `Sync`.
unsafe impl<T: TimerTarget> Send for SampleTimer<T> {}
// SAFETY: As above; `start` and `cancel` take `&self` and the hrtimer API
// serialises.
unsafe impl<T: TimerTarget> Sync for SampleTimer<T> {}

impl<T: TimerTarget> SampleTimer<T> {
    fn new(target: T) -> Result<Self> {
        let target = KBox::into_raw(KBox::new(target, GFP_KERNEL)?);
        // SAFETY: `target` is a valid pointer the timer only passes back to
        // `timer_fired::<T>`, which takes it as a `T`.
        let raw =
            unsafe { timer::rmdev_sample_timer_new(timer_fired::<T>, target.cast_const().cast()) };
        if raw.is_null() {
            // SAFETY: From `KBox::into_raw` just above, not shared.
            drop(unsafe { KBox::from_raw(target) });
            return Err(ENOMEM);
        }
        Ok(Self { raw, target })
    }

    /// (Re)starts the timer to expire in `ns` nanoseconds.
    fn start(&self, ns: u64) {
        // SAFETY: `raw` is live (type invariant).
        unsafe { timer::rmdev_sample_timer_start(self.raw, ns as core::ffi::c_ulong) };
    }

    /// What the timer calls.
    fn target(&self) -> &T {
        // SAFETY: `target` lives until `drop` (type invariant); the timer
        // only takes shared references to it too, and `T` is `Sync`.
        unsafe { &*self.target }
    }

    /// Stops the timer; a callback under way has finished on return.
    fn cancel(&self) {
        // SAFETY: `raw` is live (type invariant).
        unsafe { timer::rmdev_sample_timer_cancel(self.raw) };
    }
}

impl<T: TimerTarget> Drop for SampleTimer<T> {
    fn drop(&mut self) {
        // SAFETY: `raw` is live (type invariant); this cancels the timer,
        // waiting for a running callback, and frees it.
        unsafe { timer::rmdev_sample_timer_free(self.raw) };
        // SAFETY: From `KBox::into_raw` in `new`; the timer that used it is
        // gone.
        drop(unsafe { KBox::from_raw(self.target) });
    }
}

/// A sample timer expired (hard interrupt context).
///
/// # Safety
///
/// `target` is the pointer a live [`SampleTimer<T>`] gave its C timer.
unsafe extern "C" fn timer_fired<T: TimerTarget>(target: *const core::ffi::c_void) {
    // SAFETY: By the function's contract, a live `T`.
    unsafe { &*target.cast::<T>() }.fired();
}

/// One sample mdev.
#[pin_data]
struct SampleDevice {
    size: usize,
    /// The device's own `migration_version`, if its format is not the
    /// type's.
    version: Option<VersionBuf>,
    /// Raised when a checksum command completes.
    irqs: Interrupts,
    /// Raises `irqs` from hard interrupt context (`CMD_CHECKSUM_TIMER`).
    timer: SampleTimer<Interrupts>,
    /// Finishes an engine run in hard interrupt context
    /// (`CMD_ENGINE_TIMER`); started and cancelled under `mem`'s lock. Its
    /// target holds the finished runs, which [`SampleDevice::mem`] applies.
    engine_timer: SampleTimer<EngineRuns>,
    /// The `max_record` parameter (0: the default).
    max_record: usize,
    flags: Option<FlagSet>,
    format: u16,
    /// Fault injection: how the next arc fails, an [`ArcFault`]. Set by a
    /// register write, cleared by a reset, taken by the next arc; relaxed
    /// ordering is enough, as the user's write and SET are two system calls
    /// in order (and reset and SET both run under the state lock).
    next_arc: AtomicU8,
    /// Taken through [`SampleDevice::mem`] only, which applies the engine's
    /// finished runs first.
    #[pin]
    mem: Mutex<Memory>,
    /// The user's memory, for the DMA commands.
    guest: GuestMemory,
    /// The DMA registers and pin; taken before `mem`, and held across the
    /// `GuestMemory` calls of a command (the framework's lock comes after
    /// it; `guest_unmapped` takes it with none of the framework's held).
    #[pin]
    dma: Mutex<SampleDma>,
}

/// The DMA registers and the device's pin. Not migrated: they are the
/// arguments of the next command, and a pin is the user's memory, not the
/// device's state (a migrated device has none).
#[derive(Default)]
struct SampleDma {
    iova: u64,
    len: u32,
    offset: u32,
    status: u32,
    pin: Option<Pinned>,
    unmaps: u32,
}

/// A save session: how far the first pass over the memory got.
///
/// `idle` drives the `precopy_dirty_pages` engine. The device cannot see
/// the user's reads, only the framework's calls of [`Device::save`] or
/// [`Device::save_to`] (both go through [`next_record`]): a call
/// answered [`Saved::Later`] ends the read it serves (short, or `-ENOMSG`
/// if it copied nothing), so the call after it is always the first of a new
/// read. When that call finds nothing left either, its read certainly fails
/// with `-ENOMSG`: only then does the engine write, once, and the next read
/// sends what it wrote. Writing at the first `Later` instead could keep a
/// loop that reads until `-ENOMSG` from ever seeing it.
struct SampleSave {
    cursor: usize,
    regs_sent: bool,
    /// The last call in pre-copy found nothing to send.
    idle: bool,
}

/// A resume session: whether the registers (the last record) arrived.
struct SampleLoad {
    regs_seen: bool,
}

fn reg_value(buf: &[u8]) -> Result<u32> {
    let b: [u8; 4] = buf.try_into().map_err(|_| EINVAL)?;
    Ok(u32::from_le_bytes(b))
}

impl SampleDevice {
    /// The memory, locked, with the engine's finished runs written first.
    fn mem(&self) -> Guard<'_, Memory, MutexBackend> {
        let mut m = self.mem.lock();
        self.write_finished_runs(&mut m);
        m
    }

    /// The engine's runs and state.
    fn engine(&self) -> &EngineRuns {
        self.engine_timer.target()
    }

    /// Writes the pages of the engine runs whose timer expired.
    fn write_finished_runs(&self, m: &mut Memory) {
        for _ in 0..self.engine().finished.swap(0, Ordering::Acquire) {
            m.engine_writes(params::precopy_dirty_pages().max(1) as usize);
        }
    }

    /// The engine stopped (a run not finished cancelled) and the device
    /// running: its state after a reset, an open or a close.
    fn restart_engine(&self) {
        self.set_running(false);
        self.set_running(true);
    }

    /// The device stops (`running` false) or runs again. A stopped device
    /// changes nothing: a run whose timer has not expired is cancelled (the
    /// finished ones happened before the stop, and are written at the next
    /// look at the memory, as always). Every migration arc comes here, so
    /// the common case takes no lock: the command sets `armed` before it
    /// checks `running`, this clears `running` before it checks `armed`
    /// (both sequentially consistent), so either the command sees the
    /// device stopped or this sees the timer possibly started, and then
    /// cancels it under the lock the command holds while it starts it.
    fn set_running(&self, running: bool) {
        let e = self.engine();
        e.running.store(running, Ordering::SeqCst);
        if !running && e.armed.load(Ordering::SeqCst) {
            let _m = self.mem.lock();
            self.engine_timer.cancel();
            e.armed.store(false, Ordering::SeqCst);
        }
    }

    fn read_reg(&self, offset: u64) -> Result<u32> {
        if offset >= reg::DMA_IOVA_LO {
            let d = self.dma.lock();
            return Ok(match offset {
                reg::DMA_IOVA_LO => d.iova as u32,
                reg::DMA_IOVA_HI => (d.iova >> 32) as u32,
                reg::DMA_LEN => d.len,
                reg::DMA_OFFSET => d.offset,
                reg::DMA_STATUS => d.status,
                reg::DMA_PINNED => self.guest.pinned_pages() as u32,
                reg::DMA_UNMAPS => d.unmaps,
                _ => return Err(EINVAL),
            });
        }
        let m = self.mem();
        Ok(match offset {
            reg::ID => ID_VALUE,
            reg::FORMAT => u32::from(self.format),
            reg::MEM_SIZE_LO => self.size as u32,
            reg::MEM_SIZE_HI => ((self.size as u64) >> 32) as u32,
            reg::SCRATCH => m.scratch,
            reg::CHECKSUM => m.checksum,
            reg::WRITES => m.writes,
            _ => return Err(EINVAL),
        })
    }

    fn write_reg(&self, offset: u64, value: u32) -> Result {
        if offset >= reg::DMA_IOVA_LO {
            let mut d = self.dma.lock();
            match offset {
                reg::DMA_IOVA_LO => d.iova = (d.iova & !0xffff_ffff) | u64::from(value),
                reg::DMA_IOVA_HI => d.iova = (d.iova & 0xffff_ffff) | (u64::from(value) << 32),
                reg::DMA_LEN => d.len = value,
                reg::DMA_OFFSET => d.offset = value,
                reg::DMA_CMD => {
                    let result = self.dma_command(&mut d, value);
                    d.status = result.err().map_or(0, |e| e.to_errno().unsigned_abs());
                }
                _ => return Err(EINVAL),
            }
            return Ok(());
        }
        let mut m = self.mem();
        match offset {
            reg::SCRATCH => m.scratch = value,
            reg::CMD if value == CMD_CHECKSUM => {
                m.checksum = rmdev::crc32c::Crc32c::new().update(&m.bytes).value();
                // The command completed: tell the driver (MSI or INTx,
                // whichever the user enabled).
                self.irqs.raise();
            }
            reg::CMD if value == CMD_LOSE_NEXT_ARC => {
                self.next_arc.store(ArcFault::Lose as u8, Ordering::Relaxed)
            }
            reg::CMD if value == CMD_FAIL_NEXT_ARC => {
                self.next_arc.store(ArcFault::Fail as u8, Ordering::Relaxed)
            }
            reg::CMD if value == CMD_OVERSIZE_NEXT_RECORD => m.oversize_next = true,
            reg::CMD if value == CMD_CHECKSUM_TIMER => {
                m.checksum = rmdev::crc32c::Crc32c::new().update(&m.bytes).value();
                self.timer.start(1_000_000);
            }
            // Under the memory lock, which `set_running` takes to cancel:
            // no run starts after the device stopped (see `set_running`).
            reg::CMD if value == CMD_ENGINE_TIMER => {
                self.engine().armed.store(true, Ordering::SeqCst);
                if !self.engine().running.load(Ordering::SeqCst) {
                    return Err(EBUSY);
                }
                self.engine_timer.start(ENGINE_DELAY_MS * 1_000_000);
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }
}

impl SampleDevice {
    /// Clears the DMA registers and drops the pin's handle (the framework
    /// unpins it); the count of unmaps that hit a pin stays.
    fn clear_dma(&self) {
        let mut d = self.dma.lock();
        *d = SampleDma {
            unmaps: d.unmaps,
            ..SampleDma::default()
        };
    }

    /// The device memory range `[DMA_OFFSET, DMA_OFFSET + DMA_LEN)`.
    fn dma_span(&self, d: &SampleDma) -> Result<core::ops::Range<usize>> {
        let start = d.offset as usize;
        let end = start.checked_add(d.len as usize).ok_or(EINVAL)?;
        // The copy goes through a kernel buffer: at most `MAX_DMA_LEN`, so
        // the user cannot ask for an allocation the page allocator warns
        // about.
        if end > self.size || d.len as usize > MAX_DMA_LEN {
            return Err(EINVAL);
        }
        Ok(start..end)
    }

    /// Runs DMA command `cmd` with the registers in `d` (locked).
    fn dma_command(&self, d: &mut SampleDma, cmd: u32) -> Result {
        match cmd {
            DMA_TO_GUEST | DMA_TO_PINNED => {
                let span = self.dma_span(d)?;
                let mut buf = KVec::with_capacity(span.len(), GFP_KERNEL)?;
                buf.extend_from_slice(&self.mem().bytes[span], GFP_KERNEL)?;
                if cmd == DMA_TO_GUEST {
                    self.guest.write(d.iova, &buf)
                } else {
                    let pin = d.pin.as_ref().ok_or(ENOENT)?;
                    self.guest.write_pinned(pin, 0, &buf)
                }
            }
            DMA_FROM_GUEST => {
                let span = self.dma_span(d)?;
                let mut buf = KVec::from_elem(0u8, span.len(), GFP_KERNEL)?;
                self.guest.read(d.iova, &mut buf)?;
                let mut m = self.mem();
                m.mark_dirty(span.start, span.len());
                m.bytes[span].copy_from_slice(&buf);
                Ok(())
            }
            DMA_PIN => {
                if d.pin.is_some() {
                    return Err(EBUSY);
                }
                d.pin = Some(self.guest.pin(d.iova, d.len as usize, true)?);
                Ok(())
            }
            DMA_UNPIN => self.guest.unpin(d.pin.take().ok_or(ENOENT)?),
            _ => Err(EINVAL),
        }
    }
}

impl Device for SampleDevice {
    type Save = SampleSave;
    type Load = SampleLoad;
    // The flag set is a module parameter, so the sample handles every arc;
    // a device with a fixed flag set names its typed set (`StopCopyP2pArc`
    // and so on), and its `match` then has exactly the arcs it needs.
    type Arcs = StateArc;

    fn region(&self, index: u32) -> Region {
        match index {
            region::BAR0 => Region::read_write(reg::SIZE),
            region::BAR2 => Region::read_write(self.size as u64),
            _ => Region::NONE,
        }
    }

    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result {
        match index {
            region::BAR0 if buf.len() == 4 && offset % 4 == 0 => {
                buf.copy_from_slice(&self.read_reg(offset)?.to_le_bytes());
                Ok(())
            }
            region::BAR2 => {
                let at = offset as usize;
                buf.copy_from_slice(&self.mem().bytes[at..at + buf.len()]);
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result {
        match index {
            region::BAR0 if data.len() == 4 && offset % 4 == 0 => {
                self.write_reg(offset, reg_value(data)?)
            }
            region::BAR2 if !data.is_empty() => {
                let at = offset as usize;
                let mut m = self.mem();
                m.bytes[at..at + data.len()].copy_from_slice(data);
                m.mark_dirty(at, data.len());
                m.writes = m.writes.wrapping_add(1);
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    fn pci_config(&self) -> Option<PciConfig> {
        // The framework emulates the configuration space from this: a
        // vendor-specific ("other") function with the registers as a 32-bit
        // BAR0 and the memory as a 64-bit prefetchable BAR2 (regions 0 and
        // 2; their sizes come from `region`), INTA# and one MSI vector.
        Some(PciConfig {
            identity: Identity {
                vendor: 0x1b36,
                device: 0x10f0,
                revision: 1,
                class: 0xff_0000,
                subsystem_vendor: 0x1b36,
                subsystem: 0x0001,
                interrupt_pin: 1,
            },
            bars: [
                Some(BarKind::Mem32),
                None,
                Some(BarKind::Mem64 { prefetchable: true }),
                None,
                None,
                None,
            ],
            capabilities: &[],
            msi_vectors: 1,
            msix: None,
        })
    }

    fn open(&self) -> Result {
        // Nothing to power up: the memory exists from creation on. A device
        // with hardware behind it would enable it here. The device runs,
        // whatever state its last user left it in.
        self.restart_engine();
        Ok(())
    }

    fn close(&self) {
        // The contents stay for the next user, as a real device's would;
        // the DMA registers do not, and the framework unpins the pin. A
        // run the user started and did not see finish is cancelled.
        self.clear_dma();
        self.restart_engine();
    }

    fn guest_unmapped(&self, iova: u64, length: u64) {
        // The device stops using its pin if the range covers any of it; the
        // framework unpins it once this returns.
        let mut d = self.dma.lock();
        if d.pin.as_ref().is_some_and(|p| p.overlaps(iova, length)) {
            d.pin = None;
            d.unmaps = d.unmaps.wrapping_add(1);
        }
    }

    fn reset(&self) {
        // A function reset clears the registers and stops the engine
        // (finished runs have written their pages); like a GPU's memory,
        // the device memory keeps its contents. The device runs after it.
        self.restart_engine();
        let mut m = self.mem();
        m.scratch = 0;
        m.checksum = 0;
        m.oversize_next = false;
        self.next_arc.store(ArcFault::None as u8, Ordering::Relaxed);
        drop(m);
        // The framework unpins the pin after the reset.
        self.clear_dma();
    }

    fn migration(&self) -> Option<FlagSet> {
        self.flags
    }

    fn version(&self) -> Option<&str> {
        // The type's string (from `migration_format`), unless the format
        // parameter changed before this mdev was created.
        self.version.as_ref().map(|v| v.as_str())
    }

    fn version_rule(&self) -> &dyn VersionRule {
        // The default rule (same vendor and type, same major, target minor
        // not older) is exactly the sample's: its format only ever adds.
        &DefaultRule
    }

    fn step(&self, arc: StateArc) -> core::result::Result<(), StepFailure<Error>> {
        // A load first: an arc with no fault pending writes nothing.
        if self.next_arc.load(Ordering::Relaxed) != ArcFault::None as u8 {
            match ArcFault::from_u8(self.next_arc.swap(ArcFault::None as u8, Ordering::Relaxed)) {
                ArcFault::None => {}
                ArcFault::Lose => {
                    // The device goes to ERROR, where it does not run.
                    self.set_running(false);
                    return Err(StepFailure::lost(EIO));
                }
                ArcFault::Fail => return Err(StepFailure::recoverable(EBUSY)),
            }
        }
        // The sample's only work of its own is the engine of
        // `CMD_ENGINE_TIMER`; it never does DMA on its own, so peer-to-peer
        // arcs have nothing to quiesce, and the framework handles the data
        // sessions. Every arc is named, with no wildcard, so that the
        // compiler checks none is forgotten.
        match arc {
            // The device stops: stop the engine.
            StateArc::RunningToStop
            | StateArc::RunningP2pToStop
            | StateArc::PreCopyToStopCopy
            | StateArc::PreCopyP2pToStopCopy => {
                self.set_running(false);
                Ok(())
            }
            // The device runs again: the engine may be started.
            StateArc::StopToRunning | StateArc::StopToRunningP2p => {
                self.set_running(true);
                Ok(())
            }
            // Peer-to-peer DMA stops or resumes.
            StateArc::RunningToRunningP2p
            | StateArc::RunningP2pToRunning
            | StateArc::PreCopyToPreCopyP2p
            | StateArc::PreCopyP2pToPreCopy => Ok(()),
            // Data sessions open or end (the framework's files); nothing
            // for the device to do.
            StateArc::StopToStopCopy
            | StateArc::StopCopyToStop
            | StateArc::StopToResuming
            | StateArc::ResumingToStop
            | StateArc::RunningToPreCopy
            | StateArc::PreCopyToRunning
            | StateArc::PreCopyP2pToRunningP2p
            | StateArc::RunningP2pToPreCopyP2p => Ok(()),
        }
    }

    fn max_record(&self) -> usize {
        // The framework refuses a device whose value breaks the envelope;
        // the `max_record` parameter lets the tests try.
        match self.max_record {
            0 => 8 + RECORD_PAGES * PAGE,
            n => n,
        }
    }

    fn stop_copy_size(&self, session: Option<&SampleSave>) -> StopCopySize {
        let m = self.mem();
        let pages = m.pages();
        let per_record = (self.max_record().saturating_sub(8) / PAGE).clamp(1, RECORD_PAGES);
        // Without a session, everything; with one, the pages the first pass
        // has not reached, the runs dirtied behind it, and the registers.
        let (cursor, regs) = match session {
            None => (0, true),
            Some(s) => (s.cursor.min(pages), !s.regs_sent),
        };
        let (dirty, dirty_records) = m.dirty_runs(cursor, per_record);
        let first = pages - cursor;
        let left = first + dirty;
        let records = first.div_ceil(per_record) + dirty_records + usize::from(regs);
        StopCopySize {
            bytes: left * PAGE
                + (records - usize::from(regs)) * 8
                + if regs { REGS_LEN } else { 0 },
            records,
        }
    }

    fn save_open(&self) -> Result<SampleSave> {
        // The first pass sends every page, so earlier writes need no bit.
        let mut m = self.mem();
        m.clear_dirty();
        Ok(SampleSave {
            cursor: 0,
            regs_sent: false,
            idle: false,
        })
    }

    fn save(&self, s: &mut SampleSave, phase: SavePhase, buf: &mut [u8]) -> Result<Saved> {
        let mut m = self.mem();
        Ok(match next_record(&mut m, s, phase, buf.len())? {
            NextRecord::Oversize => Saved::Record {
                tag: TAG_MEM,
                len: buf.len() + 1,
            },
            NextRecord::Pages(start, n) => Saved::Record {
                tag: TAG_MEM,
                len: m.save_pages(start, n, buf),
            },
            NextRecord::Regs => {
                buf[..REGS_LEN].copy_from_slice(&m.regs());
                Saved::Record {
                    tag: TAG_REGS,
                    len: REGS_LEN,
                }
            }
            NextRecord::Nothing(saved) => saved,
        })
    }

    fn save_to(
        &self,
        s: &mut SampleSave,
        phase: SavePhase,
        out: &mut RecordOut<'_>,
    ) -> Option<Result<Saved>> {
        // The memory goes from `bytes` to the reader with no copy here.
        let mut m = self.mem();
        let max = out.max_payload();
        let saved = next_record(&mut m, s, phase, max).and_then(|next| match next {
            // Not sent: the framework refuses the record (fault injection).
            NextRecord::Oversize => Ok(Saved::Record {
                tag: TAG_MEM,
                len: max + 1,
            }),
            NextRecord::Pages(start, n) => {
                let (from, len) = (start * PAGE, n * PAGE);
                let at = (from as u64).to_le_bytes();
                out.send(TAG_MEM, &[&at, &m.bytes[from..from + len]])?;
                m.clean_pages(start, n);
                Ok(Saved::Record {
                    tag: TAG_MEM,
                    len: 8 + len,
                })
            }
            NextRecord::Regs => {
                out.send(TAG_REGS, &[&m.regs()])?;
                Ok(Saved::Record {
                    tag: TAG_REGS,
                    len: REGS_LEN,
                })
            }
            NextRecord::Nothing(saved) => Ok(saved),
        });
        Some(saved)
    }

    fn precopy_info(&self, s: &SampleSave) -> PrecopyInfo {
        let m = self.mem();
        PrecopyInfo {
            initial_bytes: ((m.pages() - s.cursor) * PAGE) as u64,
            dirty_bytes: (m.dirty_below(s.cursor.min(m.pages())) * PAGE) as u64,
        }
    }

    fn load_open(&self) -> Result<SampleLoad> {
        Ok(SampleLoad { regs_seen: false })
    }

    fn load(&self, l: &mut SampleLoad, tag: u16, payload: &[u8]) -> Result {
        let mut m = self.mem();
        match tag {
            TAG_MEM if payload.len() > 8 && !l.regs_seen => {
                let at = u64::from_le_bytes(payload[..8].try_into().map_err(|_| EINVAL)?);
                let data = &payload[8..];
                let end = at.checked_add(data.len() as u64).ok_or(EINVAL)?;
                if end > self.size as u64 {
                    return Err(EINVAL);
                }
                m.bytes[at as usize..end as usize].copy_from_slice(data);
                Ok(())
            }
            TAG_REGS if payload.len() == REGS_LEN && !l.regs_seen => {
                m.scratch = reg_value(&payload[0..4])?;
                m.checksum = reg_value(&payload[4..8])?;
                m.writes = reg_value(&payload[8..12])?;
                l.regs_seen = true;
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    fn load_finish(&self, l: SampleLoad) -> Result {
        // The registers come last: without them the stream was cut short.
        if l.regs_seen {
            Ok(())
        } else {
            Err(EINVAL)
        }
    }
}

struct SampleModule {
    // Dropping the parent removes the mdevs and types. The parent holds the
    // registration too, which drops after it and waits until the C side
    // released everything of the driver.
    _parent: Parent<Sample>,
    _driver: Arc<Registration<Sample>>,
}

impl kernel::Module for SampleModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let bits = params::migration_flags();
        let flags = match bits {
            0 => None,
            _ => Some(FlagSet::from_bits(bits).map_err(|e| {
                pr_err!("migration_flags={:#x} refused: {}\n", bits, e);
                EINVAL
            })?),
        };
        let format = params::format_version();
        let format = u16::try_from(format)
            .ok()
            .filter(|&f| f > 0)
            .ok_or_else(|| {
                pr_err!("format_version={} refused: must be 1 to 65535\n", format);
                EINVAL
            })?;
        let driver = Arc::new(Registration::<Sample>::new(module)?, GFP_KERNEL)?;
        let parent =
            Parent::new_virtual(&driver, c_str!("rmdev_sample"), Sample { flags, format })?;
        pr_info!(
            "ready: migration flags {:#x}, data format {}\n",
            flags.map_or(0, |f| f.bits()),
            format
        );
        Ok(Self {
            _parent: parent,
            _driver: driver,
        })
    }
}
