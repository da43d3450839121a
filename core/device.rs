// SPDX-License-Identifier: GPL-2.0

//! The VFIO device behind every mdev, and the [`Device`] trait vendors
//! implement for it.
//!
//! C header: [`include/linux/vfio.h`](srctree/include/linux/vfio.h)
//!
//! Each mdev is a VFIO device with an emulated IOMMU. The framework owns the
//! `vfio_device_ops` and the uAPI around them (argument sizes, region offsets,
//! the interrupt table, reset, the release request); the vendor only sees its
//! device's regions as byte ranges and a few lifecycle calls.
//!
//! The devices follow the vfio-pci layout: regions 0 to 8 (BAR0 to BAR5, ROM,
//! config space, VGA) at offset `index << 40` in the device file, and
//! interrupt indexes 0 to 4 ([`super::irq`]): INTx and MSI, which the vendor
//! raises through its [`Interrupts`], and the request channel, which the
//! framework signals when the mdev is being removed while a user holds it
//! open. With [`Device::pci_config`], the framework emulates the
//! configuration space ([`super::pci_config`]).

use core::marker::PhantomData;
use core::mem::size_of;
use core::ptr::{self, addr_of_mut};
use kernel::ffi::{c_char, c_long, c_uint, c_ulong};

use kernel::error::{from_err_ptr, to_result};
use kernel::prelude::*;
use kernel::static_lock_class;
use kernel::sync::{Arc, CondVar, Mutex};
use kernel::uaccess::UserSlice;
use kernel::workqueue::{self, impl_has_work, Work, WorkItem};

use super::bindings;
use super::dma::DmaState;
pub use super::dma::{GuestMemory, Pinned};
use super::fsm::{ArcSet, FlagSet, StepFailure};
pub use super::irq::Interrupts;
pub use super::irq::MAX_MSI_VECTORS;
use super::irq::{self, IrqState};
use super::mdev::Anchor;
use super::migration::{self, MigState};
use super::pci_config::{command, ConfigSpace, CAP_ID_MSIX, CONFIG_SIZE, NUM_BARS};
pub use super::pci_config::{BarKind, Capability, Identity, Msix};
use super::stream::SaveSlot;
pub use super::stream::{RecordOut, SaveWaker};
use super::user;
use super::version::{check_written, DefaultRule, VersionBuf, VersionError, VersionRule};

/// Region indexes of the vfio-pci layout.
pub mod region {
    /// BAR0.
    pub const BAR0: u32 = 0;
    /// BAR2.
    pub const BAR2: u32 = 2;
    /// PCI configuration space.
    pub const CONFIG: u32 = 7;
    /// Number of regions (`VFIO_PCI_NUM_REGIONS`).
    pub const COUNT: u32 = 9;
}

/// Region offsets in the device file: `index << 40` (`VFIO_PCI_OFFSET_SHIFT`).
const OFFSET_SHIFT: u32 = 40;
/// The largest chunk a region read or write copies at once.
const RW_CHUNK: usize = 64 * 1024;

/// What the framework needs to emulate a device's PCI configuration space.
pub struct PciConfig {
    /// Vendor, device, revision, class, subsystem ids and interrupt pin.
    pub identity: Identity,
    /// The kind of the BAR behind each of regions 0 to 5 (`None`: no BAR,
    /// or the upper half of a 64-bit one); its size is the region's, which
    /// must be a power of two.
    pub bars: [Option<BarKind>; 6],
    /// The capability list, laid out from offset 0x40 (after the MSI
    /// capability, if any).
    pub capabilities: &'static [Capability<'static>],
    /// MSI vectors: 0 (no MSI), 1, 2, 4, 8, 16 or 32. The framework adds
    /// the MSI capability and the MSI interrupt index; the device raises
    /// them through its [`Interrupts`]. With an interrupt pin in `identity`,
    /// it also has INTx.
    pub msi_vectors: u8,
    /// MSI-X: the vector count (at most [`MAX_MSI_VECTORS`]) and where the
    /// table and the pending-bit array are in one of the BARs. The
    /// framework adds the MSI-X capability (after MSI's) and the MSI-X
    /// interrupt index, and keeps the table's bytes from the vendor: as on
    /// vfio-pci, the user reads them as all ones and its writes are
    /// dropped (QEMU emulates the table and the PBA itself and masks a
    /// vector by pointing it at an eventfd of its own). The vendor serves
    /// the rest of the BAR, the PBA included.
    pub msix: Option<Msix>,
}

/// What a region offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Size in bytes; 0 for an absent region.
    pub size: u64,
    /// The user may read it.
    pub readable: bool,
    /// The user may write it.
    pub writable: bool,
}

impl Region {
    /// An absent region.
    pub const NONE: Region = Region {
        size: 0,
        readable: false,
        writable: false,
    };

    /// A readable and writable region of `size` bytes.
    pub const fn read_write(size: u64) -> Region {
        Region {
            size,
            readable: true,
            writable: true,
        }
    }
}

/// Which part of a save session the data is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavePhase {
    /// PRE_COPY or PRE_COPY_P2P: the device runs; send what is ready.
    PreCopy,
    /// STOP_COPY: the device is stopped; send everything that is left.
    StopCopy,
}

/// What [`Device::save`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// A record with this vendor tag whose payload is the first `len` bytes
    /// of the buffer.
    Record {
        /// The vendor's record tag.
        tag: u16,
        /// Payload length, at most the buffer's length.
        len: usize,
    },
    /// Pre-copy only: nothing to send now (the reader gets `-ENOMSG`).
    Later,
    /// Stop-copy only: the whole state has been sent.
    Done,
}

/// What a stop-copy stream still has to carry, as the vendor estimates it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StopCopySize {
    /// Record payload bytes.
    pub bytes: usize,
    /// Records (each costs the envelope 12 bytes); at least as many as the
    /// bytes need at the device's largest record.
    pub records: usize,
}

/// Pre-copy progress, as `VFIO_MIG_GET_PRECOPY_INFO` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrecopyInfo {
    /// Bytes of the initial image not sent yet.
    pub initial_bytes: u64,
    /// Bytes of changes since they were last sent.
    pub dirty_bytes: u64,
}

/// One mdev's device, implemented by the vendor.
///
/// Every method may be called from several threads at once (the device is
/// shared between the VFIO device file and the migration data files), so
/// the device locks its own state. The framework calls the migration methods
/// under the device's migration state lock, and never two of them at once
/// for one device, except [`Device::save`] and [`Device::load`], which the
/// data files call under their own lock.
pub trait Device: Send + Sync + Sized + 'static {
    /// The vendor's state of one save session (for example a cursor).
    type Save: Send;
    /// The vendor's state of one resume session.
    type Load: Send;

    /// Region `index` (see [`region`]); [`Region::NONE`] if absent.
    fn region(&self, index: u32) -> Region;
    /// Reads `buf.len()` bytes of region `index` at `offset`. The framework
    /// has checked the range against [`Device::region`].
    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result;
    /// Writes `data` to region `index` at `offset` (range checked).
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result;
    /// The first user opened the device. The migration state is RUNNING.
    fn open(&self) -> Result {
        Ok(())
    }
    /// The last user closed the device. Data files are already disabled;
    /// when this returns, the framework unpins every page the device still
    /// has pinned ([`GuestMemory`]), so the device must have stopped using
    /// them.
    fn close(&self) {}
    /// The user is unmapping `[iova, iova + length)` from the device's
    /// IOMMU context: the device stops using every page it pinned there
    /// (hardware included) before returning; the framework then unpins
    /// them, and their [`Pinned`] handles go stale. From before the call
    /// until then, new pins into the range fail with `-EAGAIN`, so a pin
    /// made on another thread cannot land after the device stopped using
    /// the range. May be called at any
    /// time, even with nothing pinned there or while [`Device::close`]
    /// runs; `length` may reach the end of the address space (an iommufd
    /// detach unmaps everything). It runs in a worker (process context, it
    /// may sleep), never twice at once for one device, while the user's
    /// unmap waits for it.
    fn guest_unmapped(&self, _iova: u64, _length: u64) {}
    /// `VFIO_DEVICE_RESET`: reset the device function. The framework has
    /// ended any migration session, set the migration state to RUNNING and
    /// reset the emulated configuration space.
    fn reset(&self);
    /// The device's PCI identity, BAR kinds and capabilities: with them the
    /// framework emulates its configuration space (region 7) like a real
    /// function's (see `core/logic/src/pci_config.rs`), sizes its BARs from
    /// [`Device::region`], resets it with the device and migrates it in every
    /// stream; the vendor's `read` and `write` never see region 7. `None`:
    /// the vendor serves region 7 itself. Read once, at creation.
    fn pci_config(&self) -> Option<PciConfig> {
        None
    }

    /// The device's migration flag set, or `None` if it cannot migrate.
    /// Must not change while the device exists.
    fn migration(&self) -> Option<FlagSet> {
        None
    }
    /// The device's own `migration_version` string, when it differs from
    /// its type's ([`super::mdev::Driver::type_version`]), for example to
    /// fold in instance settings. It is the device's sysfs
    /// `migration_version`, goes into every stream header it saves and is
    /// what [`Device::version_rule`] checks sources against.
    fn version(&self) -> Option<&str> {
        None
    }
    /// The rule deciding which sources' state the device can load: the
    /// sysfs `migration_version` write and the stream header both use it.
    fn version_rule(&self) -> &dyn VersionRule {
        &DefaultRule
    }
    /// The single arcs [`Device::step`] handles: the typed set of the
    /// device's flag set ([`StopCopyArc`](super::fsm::StopCopyArc) and its
    /// siblings), [`StateArc`](super::fsm::StateArc) for a flag set chosen
    /// at run time, or [`NoArcs`](super::fsm::NoArcs) for a device that does
    /// not migrate. Registration refuses a device whose [`Device::migration`]
    /// flag set needs an arc this set lacks.
    type Arcs: ArcSet;
    /// Performs one arc of the migration state machine. Session effects
    /// (opening, continuing and ending data files) are the framework's; the
    /// device starts, stops or quiesces its engine. There is no default: an
    /// exhaustive `match` on [`Device::Arcs`] is the compile-time proof that
    /// every arc is handled (a device without migration writes
    /// `match arc {}`).
    fn step(&self, arc: Self::Arcs) -> core::result::Result<(), StepFailure<Error>>;
    /// The largest record payload the device saves or loads: from
    /// [`MIN_RECORD_PAYLOAD`](super::envelope::MIN_RECORD_PAYLOAD) (a target
    /// must fit the END record) to
    /// [`MAX_RECORD_PAYLOAD`](super::envelope::MAX_RECORD_PAYLOAD), checked
    /// at registration, when the framework reads it once for the device's
    /// life. [`Device::save`] gets a buffer of exactly this size.
    fn max_record(&self) -> usize {
        4096
    }
    /// The records still needed to complete stop-copy, for
    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` (the framework adds its envelope).
    /// `session` is the open save session, if any: after pre-copy sent the
    /// initial image, only what changed since and the final records are
    /// left. QEMU compares this with its downtime limit, so an estimate that
    /// ignores the session keeps a pre-copy migration from converging.
    fn stop_copy_size(&self, _session: Option<&Self::Save>) -> StopCopySize {
        StopCopySize::default()
    }
    /// Starts a save session.
    fn save_open(&self) -> Result<Self::Save> {
        Err(ENOTTY)
    }
    /// Produces the next record of a save session into `buf`.
    fn save(&self, _s: &mut Self::Save, _phase: SavePhase, _buf: &mut [u8]) -> Result<Saved> {
        Err(ENOTTY)
    }
    /// Optional, for a device whose state is memory the kernel can read:
    /// produces the next record as [`Device::save`] does, but hands its
    /// payload to [`RecordOut::send`] instead of copying it into a buffer.
    /// The framework checksums it on its way into the reader's buffer, so
    /// the payload is copied once instead of twice. `None` (the default)
    /// means "use `save`". The framework calls it only when the reader has
    /// room for a whole record; `send` copies to user memory with page
    /// faults disabled (it never sleeps: on a missing page the framework
    /// keeps the record, faults the page in with no lock held, then copies
    /// the record), so any lock may be held across it. A record
    /// returned as [`Saved::Record`] must have been sent, with that tag and length,
    /// and what was sent must not change until `send` returned (hold the
    /// lock the device's writers take). `save` is still needed: reads too
    /// short for a whole record use it.
    fn save_to(
        &self,
        _s: &mut Self::Save,
        _phase: SavePhase,
        _out: &mut RecordOut<'_>,
    ) -> Option<Result<Saved>> {
        None
    }
    /// Pre-copy progress of a save session. `poll` on the save file
    /// reports data when either figure is not 0; the framework looks again
    /// after each region write of the user's, and when the device calls its
    /// [`SaveWaker::wake`] (a change it made on its own).
    fn precopy_info(&self, _s: &Self::Save) -> PrecopyInfo {
        PrecopyInfo::default()
    }
    /// Starts a resume session.
    fn load_open(&self) -> Result<Self::Load> {
        Err(ENOTTY)
    }
    /// Loads one record (its checksum already matched).
    fn load(&self, _l: &mut Self::Load, _tag: u16, _payload: &[u8]) -> Result {
        Err(ENOTTY)
    }
    /// The whole stream was loaded (RESUMING to STOP): check it is complete
    /// and consistent. On failure the device goes to ERROR (the stream is
    /// used up and the device half loaded) until a reset.
    fn load_finish(&self, _l: Self::Load) -> Result {
        Err(ENOTTY)
    }
}

/// The framework's state of one mdev's VFIO device.
#[pin_data]
pub(crate) struct Core<D: Device> {
    /// The vendor's device.
    #[pin]
    pub(crate) dev: D,
    /// The migration state; the device's one state lock.
    #[pin]
    pub(crate) mig: Mutex<MigState>,
    /// The open save session, for waking its pollers when the device
    /// changes (the vendor holds [`SaveWaker`]s of it).
    pub(crate) waker: Arc<SaveSlot>,
    /// The interrupts and the request channel.
    irqs: Arc<IrqState>,
    /// The user's memory: pins, copies, the dirty log.
    pub(crate) dma: Arc<DmaState>,
    /// Serialises the `dma_unmap` callbacks, each of which waits for
    /// [`Core::unmap_work`] to finish its request.
    #[pin]
    unmap_gate: Mutex<()>,
    /// The request of the `dma_unmap` callback being served.
    #[pin]
    unmap_request: Mutex<UnmapRequest>,
    /// Signalled when the request is done.
    #[pin]
    unmap_done: CondVar,
    /// Serves a `dma_unmap` request: the vendor's hook, then the unpins.
    #[pin]
    unmap_work: Work<Core<D>>,
    /// The emulated configuration space, if the framework emulates it.
    #[pin]
    pub(crate) config: Mutex<Option<ConfigSpace>>,
    /// The mdev's name (its UUID), for messages.
    name: [u8; 40],
    /// The `migration_version` of the mdev's type, if it migrates.
    type_version: Option<VersionBuf>,
    /// Keeps the vendor's driver (and so the module's exit) waiting until
    /// this device is gone: the VFIO core calls our `release` late.
    _anchor: Arc<dyn Anchor>,
}

/// A `dma_unmap` request, from the callback to the worker that serves it.
#[derive(Default)]
struct UnmapRequest {
    /// `(iova, length)`, taken by the worker.
    range: Option<(u64, u64)>,
    /// The worker finished it.
    done: bool,
}

impl_has_work! {
    impl{D: Device} HasWork<Core<D>> for Core<D> { self.unmap_work }
}

impl<D: Device> WorkItem for Core<D> {
    type Pointer = Arc<Core<D>>;

    fn run(core: Arc<Core<D>>) {
        core.serve_unmap();
        let this: *const Core<D> = &*core;
        // The reference goes before the caller is let go, so the device's
        // last reference is never this worker's: its drop (and the module
        // exit it can let through) never runs on the worker.
        drop(core);
        // SAFETY: The `dma_unmap` caller holds the device (the VFIO core
        // calls it on a registered device) until it saw `done`, which only
        // this sets.
        unsafe { (*this).unmap_finished() };
    }
}

impl<D: Device> Core<D> {
    /// The `dma_unmap` callback: the user unmaps `[iova, iova + length)`.
    /// Before this returns, the vendor has stopped using its pins there
    /// ([`Device::guest_unmapped`]) and the framework has unpinned them, as
    /// the IOMMU backends require.
    ///
    /// The work is done by a worker while this waits. type1 calls
    /// `dma_unmap` holding its `device_list_lock`, which it takes under its
    /// `iommu->lock` (`vfio_notify_dma_unmap()`, and device registration
    /// at open); the unpin takes `iommu->lock` again. Done here, every unmap
    /// under a pin would add the reverse order to lockdep's graph: lockdep
    /// reports that cycle at once and switches itself off for the rest of
    /// the boot, and with it the checking of every other lock. The worker
    /// holds no lock of type1's, so what lockdep records is the framework's
    /// and the vendor's own order. It does not remove type1's own hazard:
    /// an unmap under a pin racing another unmap or a device open on the
    /// same container can still deadlock in type1 (see `core/dma.rs`).
    fn user_unmap(self: &Arc<Self>, iova: u64, length: u64) {
        let _gate = self.unmap_gate.lock();
        *self.unmap_request.lock() = UnmapRequest {
            range: Some((iova, length)),
            done: false,
        };
        if let Err(me) = workqueue::system().enqueue(self.clone()) {
            // Cannot happen: the work is only queued here, under the gate,
            // and the previous request finished before its caller let go
            // of the gate. Serve it here rather than not at all.
            me.serve_unmap();
            me.unmap_finished();
        }
        let mut request = self.unmap_request.lock();
        while !request.done {
            self.unmap_done.wait(&mut request);
        }
    }

    /// Serves the pending `dma_unmap` request (the worker).
    fn serve_unmap(&self) {
        let range = self.unmap_request.lock().range.take();
        if let Some((iova, length)) = range {
            // No new pin into the range from here on: a pin the vendor
            // made after `guest_unmapped` returned would be unpinned
            // under the hardware's feet.
            self.dma.unmapping(iova, length);
            self.dev.guest_unmapped(iova, length);
            self.dma.unmapped(iova, length);
        }
    }

    /// Lets the `dma_unmap` caller go (the worker, after `serve_unmap`).
    fn unmap_finished(&self) {
        let mut request = self.unmap_request.lock();
        request.done = true;
        self.unmap_done.notify_all();
        drop(request);
    }

    /// The mdev's name, for messages.
    pub(crate) fn name(&self) -> &str {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }

    /// The device's `migration_version` string ("" if it does not migrate).
    pub(crate) fn version(&self) -> &str {
        match (self.dev.version(), &self.type_version) {
            (Some(v), _) => v,
            (None, Some(t)) => t.as_str(),
            (None, None) => "",
        }
    }

    /// Whether the device migrates (its migration features exist).
    pub(crate) fn migrates(&self) -> bool {
        self.mig.lock().flags.is_some()
    }

    /// The device-level `migration_version` write: a pure check of `written`
    /// against the device's rule.
    pub(crate) fn check_written(&self, written: &[u8]) -> core::result::Result<(), VersionError> {
        check_written(self.dev.version_rule(), self.version(), written)
    }

    /// Ends any migration session and returns the state to RUNNING.
    fn back_to_running(&self) {
        migration::back_to_running(self, &mut self.mig.lock());
    }

    fn reset(&self) {
        let mut mig = self.mig.lock();
        migration::back_to_running(self, &mut mig);
        // Under the state lock, so no arc runs during the reset; then the
        // configuration space's lock and the interrupts' lock, as any
        // configuration write takes them. VFIO_DEVICE_RESET on an mdev
        // comes from our own ioctl, not from a PCI reset holding other
        // locks, so the deferred-reset dance of vfio-pci drivers is not
        // needed. The pin drops first: nothing raised before the reset
        // fires when the reset clears INTx-disable.
        self.reset_config();
        self.dev.reset();
        // A function after reset has no DMA set up: what the device still
        // had pinned goes.
        self.dma.unpin_all();
    }

    /// Returns the INTx pin and the emulated configuration space to their
    /// reset values.
    fn reset_config(&self) {
        self.irqs.reset_line();
        if let Some(c) = self.config.lock().as_mut() {
            c.reset();
            self.config_changed(c);
        }
    }

    /// The emulated configuration space changed (its lock is held, taken
    /// before the interrupts' lock): the INTx pin follows the command
    /// register's INTx-disable bit.
    pub(crate) fn config_changed(&self, config: &ConfigSpace) {
        self.irqs
            .set_intx_disabled(config.command() & command::INTX_DISABLE != 0);
    }

    /// Wakes pollers of an open pre-copy session: the device changed.
    fn wake_savers(&self) {
        self.waker.wake();
    }

    /// Whether the framework emulates the configuration space.
    pub(crate) fn emulates_config(&self) -> bool {
        self.config.lock().is_some()
    }

    /// Region `index` as the user sees it: the vendor's, or the emulated
    /// configuration space.
    fn region(&self, index: u32) -> Region {
        if index == region::CONFIG && self.emulates_config() {
            Region::read_write(CONFIG_SIZE as u64)
        } else {
            self.dev.region(index)
        }
    }

    /// A read or write of the emulated configuration space (range checked):
    /// a write always consumes its whole count, read-only bits staying.
    fn config_rw(&self, buf: usize, count: usize, offset: u64, write: bool) -> Result<usize> {
        let mut bytes = [0u8; CONFIG_SIZE];
        let bytes = &mut bytes[..count];
        // The user's buffer is copied outside the lock: a copy can wait on a
        // page fault the user controls (userfaultfd), and reset and the
        // migration's config record take this lock.
        if write {
            UserSlice::new(buf, count).reader().read_slice(bytes)?;
            let mut config = self.config.lock();
            let config = config.as_mut().ok_or(EINVAL)?;
            config.write(offset, bytes).map_err(|_| EINVAL)?;
            self.config_changed(config);
        } else {
            {
                let mut config = self.config.lock();
                let config = config.as_mut().ok_or(EINVAL)?;
                // The status register's interrupt bit is the pin's.
                config.set_interrupt_status(self.irqs.intx_asserted());
                config.read(offset, bytes).map_err(|_| EINVAL)?;
            }
            UserSlice::new(buf, count).writer().write_slice(bytes)?;
        }
        Ok(count)
    }

    /// The bytes `[start, end)` of an access of `len` bytes at `offset` of
    /// region `index` that fall in the MSI-X table, if any.
    fn msix_table_part(&self, index: u32, offset: u64, len: usize) -> Option<(usize, usize)> {
        let m = self.irqs.msix()?;
        if index as usize != m.bar || !m.in_table(offset, len as u64) {
            return None;
        }
        let table = u64::from(m.table_offset);
        let start = table.saturating_sub(offset);
        let end = (table + m.table_len()).min(offset + len as u64) - offset;
        Some((start as usize, end as usize))
    }

    /// The vendor's read of a region, the MSI-X table's bytes read as all
    /// ones (vfio-pci's `vfio_pci_core_do_io_rw()` excludes them too).
    fn dev_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result {
        let Some((start, end)) = self.msix_table_part(index, offset, buf.len()) else {
            return self.dev.read(index, offset, buf);
        };
        let (head, rest) = buf.split_at_mut(start);
        let (table, tail) = rest.split_at_mut(end - start);
        if !head.is_empty() {
            self.dev.read(index, offset, head)?;
        }
        table.fill(0xff);
        if !tail.is_empty() {
            self.dev.read(index, offset + end as u64, tail)?;
        }
        Ok(())
    }

    /// The vendor's write of a region, what falls in the MSI-X table
    /// dropped.
    fn dev_write(&self, index: u32, offset: u64, data: &[u8]) -> Result {
        let Some((start, end)) = self.msix_table_part(index, offset, data.len()) else {
            return self.dev.write(index, offset, data);
        };
        if start > 0 {
            self.dev.write(index, offset, &data[..start])?;
        }
        if end < data.len() {
            self.dev.write(index, offset + end as u64, &data[end..])?;
        }
        Ok(())
    }

    fn rw(&self, buf: usize, count: usize, pos: i64, write: bool) -> Result<usize> {
        let pos = u64::try_from(pos).map_err(|_| EINVAL)?;
        let index = (pos >> OFFSET_SHIFT) as u32;
        let offset = pos & ((1u64 << OFFSET_SHIFT) - 1);
        if index >= region::COUNT {
            return Err(EINVAL);
        }
        let r = self.region(index);
        if (write && !r.writable) || (!write && !r.readable) {
            return Err(EINVAL);
        }
        let end = offset.checked_add(count as u64).ok_or(EINVAL)?;
        if end > r.size {
            return Err(EINVAL);
        }
        if index == region::CONFIG && self.emulates_config() {
            return self.config_rw(buf, count, offset, write);
        }
        let mut chunk = KVec::from_elem(0u8, count.min(RW_CHUNK), GFP_KERNEL)?;
        let slice = UserSlice::new(buf, count);
        let mut done = 0;
        if write {
            let mut reader = slice.reader();
            while done < count {
                let n = (count - done).min(chunk.len());
                reader.read_slice(&mut chunk[..n])?;
                self.dev_write(index, offset + done as u64, &chunk[..n])?;
                done += n;
            }
            self.wake_savers();
        } else {
            let mut writer = slice.writer();
            while done < count {
                let n = (count - done).min(chunk.len());
                self.dev_read(index, offset + done as u64, &mut chunk[..n])?;
                writer.write_slice(&chunk[..n])?;
                done += n;
            }
        }
        Ok(done)
    }

    fn ioctl(&self, cmd: c_uint, arg: usize) -> Result<c_long> {
        match cmd {
            bindings::RMDEV_VFIO_DEVICE_GET_INFO => {
                const MINSZ: usize = 16;
                let mut info: bindings::vfio_device_info = user::copy_in(arg, MINSZ)?;
                if (info.argsz as usize) < MINSZ {
                    return Err(EINVAL);
                }
                info.flags = bindings::VFIO_DEVICE_FLAGS_PCI | bindings::VFIO_DEVICE_FLAGS_RESET;
                info.num_regions = region::COUNT;
                info.num_irqs = irq::NUM_IRQS;
                user::copy_out(arg, &info, MINSZ)?;
            }
            bindings::RMDEV_VFIO_DEVICE_GET_REGION_INFO => {
                const MINSZ: usize = size_of::<bindings::vfio_region_info>();
                let mut info: bindings::vfio_region_info = user::copy_in(arg, MINSZ)?;
                if (info.argsz as usize) < MINSZ || info.index >= region::COUNT {
                    return Err(EINVAL);
                }
                let r = self.region(info.index);
                info.flags = 0;
                if r.readable {
                    info.flags |= bindings::VFIO_REGION_INFO_FLAG_READ;
                }
                if r.writable {
                    info.flags |= bindings::VFIO_REGION_INFO_FLAG_WRITE;
                }
                info.cap_offset = 0;
                info.size = r.size;
                info.offset = u64::from(info.index) << OFFSET_SHIFT;
                user::copy_out(arg, &info, MINSZ)?;
            }
            bindings::RMDEV_VFIO_DEVICE_GET_IRQ_INFO => {
                const MINSZ: usize = size_of::<bindings::vfio_irq_info>();
                let mut info: bindings::vfio_irq_info = user::copy_in(arg, MINSZ)?;
                if (info.argsz as usize) < MINSZ {
                    return Err(EINVAL);
                }
                (info.flags, info.count) = self.irqs.info(info.index)?;
                user::copy_out(arg, &info, MINSZ)?;
            }
            bindings::RMDEV_VFIO_DEVICE_SET_IRQS => self.irqs.set_irqs(arg)?,
            bindings::RMDEV_VFIO_DEVICE_RESET => self.reset(),
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }

    fn request(&self, count: c_uint) {
        let signalled = self.irqs.request();
        if count == 0 {
            if signalled {
                pr_notice!(
                    "{}: relaying the removal request to the user\n",
                    self.name()
                );
            } else {
                pr_notice!(
                    "{}: in use and no request channel registered; removal waits until the user closes it\n",
                    self.name()
                );
            }
        }
    }
}

/// The C `vfio_device` and the framework's state: what `_vfio_alloc_device`
/// allocates for an mdev.
///
/// # Invariants
///
/// `vdev` is first (the VFIO core requires offset 0); `core` is initialised
/// right after allocation and dropped only by [`Ops::release`].
#[repr(C)]
struct VfioDevice<D: Device> {
    vdev: bindings::vfio_device,
    core: Arc<Core<D>>,
}

/// The `vfio_device_ops` trampolines for `D`.
struct Ops<D>(PhantomData<D>);

impl<D: Device> Ops<D> {
    const VTABLE: bindings::vfio_device_ops = bindings::vfio_device_ops {
        name: c"rmdev".as_ptr() as *mut c_char,
        init: None,
        release: Some(Self::release),
        bind_iommufd: Some(bindings::vfio_iommufd_emulated_bind),
        unbind_iommufd: Some(bindings::vfio_iommufd_emulated_unbind),
        attach_ioas: Some(bindings::vfio_iommufd_emulated_attach_ioas),
        detach_ioas: Some(bindings::vfio_iommufd_emulated_detach_ioas),
        open_device: Some(Self::open_device),
        close_device: Some(Self::close_device),
        read: Some(Self::read),
        write: Some(Self::write),
        ioctl: Some(Self::ioctl),
        mmap: None,
        request: Some(Self::request),
        match_: None,
        dma_unmap: Some(Self::dma_unmap),
        device_feature: None,
    };

    /// The framework state of `vdev`.
    ///
    /// # Safety
    ///
    /// `vdev` must be a VFIO device registered by [`register::<D>`], not yet
    /// released.
    unsafe fn core<'a>(vdev: *mut bindings::vfio_device) -> &'a Core<D> {
        // SAFETY: By the contract.
        unsafe { core_of::<D>(vdev) }
    }

    /// The `release` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn release(vdev: *mut bindings::vfio_device) {
        // SAFETY: The VFIO core calls release once, when the last reference
        // is gone; `core` was initialised at allocation (type invariant). The
        // core frees the memory after we return.
        unsafe { ptr::drop_in_place(addr_of_mut!((*vdev.cast::<VfioDevice<D>>()).core)) };
    }

    /// The `open_device` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn open_device(vdev: *mut bindings::vfio_device) -> i32 {
        // SAFETY: Called by the VFIO core on a registered device.
        let core = unsafe { Self::core(vdev) };
        core.back_to_running();
        // A new user meets the function as after a reset, as vfio-pci's
        // users do: nothing of the previous user's configuration (BARs,
        // command, MSI) stays.
        core.reset_config();
        core.dma.opened();
        match core.dev.open() {
            Ok(()) => 0,
            Err(e) => {
                core.dma.closed();
                e.to_errno()
            }
        }
    }

    /// The `close_device` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn close_device(vdev: *mut bindings::vfio_device) {
        // SAFETY: Called by the VFIO core on a registered device.
        let core = unsafe { Self::core(vdev) };
        // The uAPI: data files reach their end before close_device returns.
        core.back_to_running();
        core.irqs.release_all();
        core.dev.close();
        core.dma.closed();
    }

    /// The `dma_unmap` callback (see [`Core::user_unmap`]).
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn dma_unmap(vdev: *mut bindings::vfio_device, iova: u64, length: u64) {
        // SAFETY: Called by the VFIO core on a registered device.
        unsafe { core_of::<D>(vdev) }.user_unmap(iova, length);
    }

    /// A region access at the device file position `*ppos`, which advances.
    ///
    /// # Safety
    ///
    /// `vdev` must be a registered device of ours and `ppos` the VFIO core's
    /// file position for this call.
    unsafe fn rw_at(
        vdev: *mut bindings::vfio_device,
        buf: usize,
        count: usize,
        ppos: *mut bindings::loff_t,
        write: bool,
    ) -> isize {
        // SAFETY: By the function's contract.
        let (core, pos) = unsafe { (Self::core(vdev), *ppos) };
        match core.rw(buf, count, pos, write) {
            Ok(n) => {
                // SAFETY: As above.
                unsafe { *ppos += n as i64 };
                n as isize
            }
            Err(e) => e.to_errno() as isize,
        }
    }

    /// The `read` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn read(
        vdev: *mut bindings::vfio_device,
        buf: *mut c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: Called by the VFIO core on a registered device with the
        // file position it owns.
        unsafe { Self::rw_at(vdev, buf as usize, count, ppos, false) }
    }

    /// The `write` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn write(
        vdev: *mut bindings::vfio_device,
        buf: *const c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: As in `read`.
        unsafe { Self::rw_at(vdev, buf as usize, count, ppos, true) }
    }

    /// The `ioctl` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn ioctl(
        vdev: *mut bindings::vfio_device,
        cmd: c_uint,
        arg: c_ulong,
    ) -> c_long {
        // SAFETY: Called by the VFIO core on a registered device.
        let core = unsafe { Self::core(vdev) };
        match core.ioctl(cmd, arg) {
            Ok(r) => r,
            Err(e) => e.to_errno() as c_long,
        }
    }

    /// The `request` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn request(vdev: *mut bindings::vfio_device, count: c_uint) {
        // SAFETY: Called by the VFIO core on a registered device.
        unsafe { Self::core(vdev) }.request(count);
    }
}

/// The framework state of a VFIO device.
///
/// # Safety
///
/// `vdev` must be a VFIO device registered by [`register::<D>`], not yet
/// released.
pub(crate) unsafe fn core_of<'a, D: Device>(vdev: *mut bindings::vfio_device) -> &'a Arc<Core<D>> {
    // SAFETY: By the contract, `vdev` is the first field of a live
    // `VfioDevice<D>` whose `core` is initialised (type invariant).
    unsafe { &(*vdev.cast::<VfioDevice<D>>()).core }
}

/// What a device's PCI configuration declares: the space the framework
/// emulates and the interrupts.
struct Declared {
    config: Option<ConfigSpace>,
    irqs: irq::Declared,
}

/// The emulated configuration space of a new device, if its vendor asks
/// for one, and the interrupts it declares (INTx pin, MSI vectors, MSI-X):
/// the BARs take the sizes of their regions; MSI gets its capability,
/// first in the list, then MSI-X.
fn config_space<D: Device>(core: &Core<D>) -> Result<Declared> {
    let Some(pci) = core.dev.pci_config() else {
        return Ok(Declared {
            config: None,
            irqs: irq::Declared::default(),
        });
    };
    let mut bars = [super::pci_config::Bar {
        index: 0,
        size: 0,
        kind: BarKind::Mem32,
    }; NUM_BARS];
    let mut n = 0;
    for (index, kind) in pci.bars.iter().enumerate() {
        let size = core.dev.region(index as u32).size;
        match kind {
            Some(kind) => {
                bars[n] = super::pci_config::Bar {
                    index,
                    size,
                    kind: *kind,
                };
                n += 1;
            }
            None if size != 0 => {
                pr_err!(
                    "{}: region {} has no BAR in the device's PCI configuration\n",
                    core.name(),
                    index
                );
                return Err(EINVAL);
            }
            None => {}
        }
    }
    let vectors = u32::from(pci.msi_vectors);
    if vectors > irq::MAX_MSI_VECTORS as u32 || (vectors != 0 && !vectors.is_power_of_two()) {
        pr_err!(
            "{}: {} MSI vectors; a function has 0, 1, 2, 4, 8, 16 or 32\n",
            core.name(),
            vectors
        );
        return Err(EINVAL);
    }
    // The MSI capability (64-bit addresses, no per-vector masking): message
    // control (enable and multiple message enable writable, multiple
    // message capable read-only), address, upper address, data.
    let control = ((vectors.max(1).trailing_zeros() as u8) << 1) | 0x80;
    let msi_body = [control, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let msi_wmask = [
        0x71, 0, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let msix_body = pci.msix.map(|m| m.body()).unwrap_or_default();
    let mut caps = KVec::with_capacity(pci.capabilities.len() + 2, GFP_KERNEL)?;
    if vectors > 0 {
        caps.push(
            Capability {
                id: PCI_CAP_ID_MSI,
                body: &msi_body,
                wmask: &msi_wmask,
            },
            GFP_KERNEL,
        )?;
    }
    if let Some(msix) = pci.msix {
        let fits = msix.check(&bars[..n]).is_ok();
        if !fits || usize::from(msix.vectors) > irq::MAX_MSI_VECTORS {
            pr_err!(
                "{}: MSI-X layout {:?} refused: 1 to {} vectors, the table and the PBA 8-byte aligned, apart, inside one memory BAR\n",
                core.name(),
                msix,
                irq::MAX_MSI_VECTORS
            );
            return Err(EINVAL);
        }
        caps.push(
            Capability {
                id: CAP_ID_MSIX,
                body: &msix_body,
                wmask: &Msix::WMASK,
            },
            GFP_KERNEL,
        )?;
    }
    for cap in pci.capabilities {
        caps.push(*cap, GFP_KERNEL)?;
    }
    let config = ConfigSpace::new(&pci.identity, &bars[..n], &caps).map_err(|e| {
        pr_err!("{}: unusable PCI configuration: {}\n", core.name(), e);
        EINVAL
    })?;
    Ok(Declared {
        config: Some(config),
        irqs: irq::Declared {
            has_intx: pci.identity.interrupt_pin != 0,
            msi_vectors: vectors,
            msix: pci.msix,
        },
    })
}

/// The MSI capability's ID (`PCI_CAP_ID_MSI`).
const PCI_CAP_ID_MSI: u8 = 0x05;

/// Creates the VFIO device of a new mdev and registers it.
///
/// # Safety
///
/// `mdev` must be an mdev being probed by the mdev core; [`unregister`] must
/// be called for it before it goes away.
pub(crate) unsafe fn register<D: Device, I: PinInit<D, Error>>(
    mdev: *mut bindings::mdev_device,
    create: impl FnOnce(Interrupts, GuestMemory, SaveWaker) -> I,
    type_version: Option<VersionBuf>,
    anchor: Arc<dyn Anchor>,
) -> Result {
    let irqs = IrqState::new()?;
    let dma = DmaState::new()?;
    let waker = SaveSlot::new()?;
    let init = create(irqs.handle(), dma.handle(), waker.handle());
    let mut name = [0u8; 40];
    // SAFETY: `mdev` is valid (contract); its name is a NUL-terminated
    // string set by the mdev core (the UUID).
    let src = unsafe { CStr::from_char_ptr((*mdev).dev.kobj.name) };
    let n = src.len().min(name.len() - 1);
    name[..n].copy_from_slice(&src.as_bytes()[..n]);
    let core = Arc::pin_init(
        try_pin_init!(Core {
            dev <- init,
            mig <- Mutex::new(MigState::new(), lock_name!("state"), static_lock_class!()),
            waker,
            irqs,
            dma,
            unmap_gate <- Mutex::new((), lock_name!("unmap_gate"), static_lock_class!()),
            unmap_request <- Mutex::new(
                UnmapRequest::default(),
                lock_name!("unmap_request"),
                static_lock_class!()
            ),
            unmap_done <- CondVar::new(lock_name!("unmap_done"), static_lock_class!()),
            unmap_work <- Work::new(lock_name!("unmap_work"), static_lock_class!()),
            config <- Mutex::new(None, lock_name!("config"), static_lock_class!()),
            _anchor: anchor,
            name,
            type_version,
        }),
        GFP_KERNEL,
    )?;
    let declared = config_space(&core)?;
    *core.config.lock() = declared.config;
    core.irqs.declare(declared.irqs);
    let setup = migration::check_device(&core)?;
    let flags = setup.map(|(f, _)| f);
    {
        let mut mig = core.mig.lock();
        mig.flags = flags;
        mig.max_record = setup.map_or(0, |(_, m)| m);
    }

    // SAFETY: `mdev` is valid; the VFIO core allocates a zeroed structure of
    // the given size with the `vfio_device` at offset 0 and records the
    // mdev's device as its parent. It takes no reference on it: the mdev
    // stays alive because the mdev core keeps it until our `remove`, which
    // unregisters the VFIO device before returning (see `unregister`).
    let vdev = from_err_ptr(unsafe {
        bindings::_vfio_alloc_device(
            size_of::<VfioDevice<D>>(),
            addr_of_mut!((*mdev).dev),
            &Ops::<D>::VTABLE,
        )
    })?;
    let this = vdev.cast::<VfioDevice<D>>();
    core.dma.set_vdev(vdev);
    // SAFETY: `this` was just allocated with room for `VfioDevice<D>`; no
    // callback can run before registration.
    // INVARIANT: `core` is initialised before anything can release it.
    unsafe { ptr::write(addr_of_mut!((*this).core), core) };
    if let Some(f) = flags {
        // SAFETY: Not registered yet: nothing else reads these fields.
        unsafe {
            (*vdev).migration_flags = f.bits();
            (*vdev).mig_ops = migration::mig_ops::<D>();
            (*vdev).log_ops = migration::log_ops::<D>();
        }
    }
    // SAFETY: The mdev core allows the bound driver to set drvdata.
    unsafe { (*mdev).dev.driver_data = vdev.cast() };
    // SAFETY: `vdev` is a fully set up, allocated VFIO device.
    let ret = to_result(unsafe { bindings::vfio_register_emulated_iommu_dev(vdev) });
    if ret.is_err() {
        // SAFETY: Drops the allocation reference; `release` drops `core`.
        unsafe { bindings::rmdev_vfio_put_device(vdev) };
    }
    ret
}

/// Unregisters and releases the VFIO device of an mdev.
///
/// If a user holds the device open, the VFIO core calls [`Ops::request`]
/// until the user closes it; this blocks until then.
///
/// # Safety
///
/// `mdev` must have been registered by [`register`] and not unregistered.
pub(crate) unsafe fn unregister(mdev: *mut bindings::mdev_device) {
    // SAFETY: `register` stored the VFIO device as drvdata.
    let vdev = unsafe { (*mdev).dev.driver_data }.cast::<bindings::vfio_device>();
    // SAFETY: Registered by `register` (contract).
    unsafe {
        bindings::vfio_unregister_group_dev(vdev);
        bindings::rmdev_vfio_put_device(vdev);
    }
}
