// SPDX-License-Identifier: GPL-2.0

//! A PCI driver for a parent on real hardware: registration, probe and
//! remove, memory decoding, mapped BARs and DMA.
//!
//! C header: [`include/linux/pci.h`](srctree/include/linux/pci.h)
//!
//! Linux 6.12 has no PCI abstraction in Rust; this is the part a vendor
//! whose mdevs are carved from a PCI function needs, and no more:
//!
//! - [`Registration`] registers a `pci_driver` whose ID table matches only
//!   devices the operator hands over with `driver_override` (the table's
//!   entries are `override_only`, and [`Driver::probe`] is not even called
//!   for a device whose `driver_override` names another driver, or none: a
//!   dynamic ID added through `new_id` does not bypass that). The driver
//!   never takes a device from another driver by itself.
//! - [`Binding`] is what a probe gets: the device's identity, memory
//!   decoding ([`Binding::enable_mem`]) and BARs ([`Binding::map_bar`]).
//!   Whatever the probe set up is the binding's: the framework undoes it in
//!   remove, after dropping the vendor's data, so nothing outlives the
//!   binding, whoever still holds a [`Bar`].
//! - [`Bar`] is a mapped memory BAR with checked 32-bit accesses; once the
//!   device is unbound it is revoked and every access fails with `ENODEV`.
//! - [`DmaFunction`] ([`Binding::dma`]) is the function's DMA: bus
//!   mastering, [`Coherent`] memory the vendor owns (rings), and the
//!   mappings of pinned guest pages
//!   ([`GuestMemory::pin_for`](super::dma::GuestMemory::pin_for)). Those
//!   are the only addresses a vendor can learn to hand the function.
//! - [`Binding::request_msix`] gives the function's own MSI-X vectors to
//!   an [`IrqHandler`] of the vendor, which runs in the interrupt's kernel
//!   thread; an [`Event`] lets the vendor's other paths wait for it. The
//!   vectors are freed first in remove, before the vendor's data is
//!   dropped: no handler runs once remove goes on.
//!
//! Bus mastering is cleared at probe and stays off until the vendor turns it
//! on through its [`DmaFunction`]; remove turns it off again.

use core::marker::PhantomData;
use core::ptr::{self, addr_of_mut, NonNull};
use kernel::ffi::{c_int, c_void};

use kernel::error::to_result;
use kernel::prelude::*;
use kernel::static_lock_class;
use kernel::sync::{Arc, Mutex, SpinLock};
use kernel::types::Opaque;

use super::bindings;

/// The vendor module's name (`RMDEV_VENDOR`, set by `core/rmdev.mk`): the
/// owner of the BAR regions in `/proc/iomem` and the driver's module name.
const MODULE_NAME: &CStr = kernel::c_str!(env!("RMDEV_VENDOR"));

/// A PCI vendor and device ID the driver can bind to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceId {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
}

/// A PCI driver for mdev parents.
pub trait Driver: Send + Sync + Sized + 'static {
    /// The driver's name: `/sys/bus/pci/drivers/<NAME>`, and what an
    /// operator writes to a device's `driver_override` to hand it over.
    const NAME: &'static CStr;
    /// The devices the driver accepts (only through `driver_override`).
    const IDS: &'static [DeviceId];
    /// What every probe gets, given to [`Registration::new`] (for example
    /// the vendor's mdev driver registration).
    type Context: Send + Sync;
    /// What the driver keeps per bound device; dropped in remove.
    type Data: Send + Sync;

    /// A device was handed to the driver: set it up. The framework already
    /// checked it is one of [`Driver::IDS`] with this driver's name in its
    /// `driver_override`.
    fn probe(ctx: &Self::Context, binding: &mut Binding) -> Result<Self::Data>;
}

/// The identity of a bound function, read at probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code, `0x00BBSSPP`.
    pub class: u32,
    /// For an SR-IOV virtual function, its physical function's device ID.
    pub pf_device: Option<u16>,
}

/// What the driver set up on one bound device.
///
/// # Invariants
///
/// `pdev` is a PCI device bound to the driver from its probe until the end
/// of its remove; this structure lives exactly that long.
pub struct Binding {
    pdev: NonNull<bindings::pci_dev>,
    enabled: bool,
    bars: KVec<(i32, Arc<Bar>)>,
    dma: Option<Arc<DmaFunction>>,
    /// Whether MSI-X vectors were allocated ([`Binding::request_msix`]).
    msix: bool,
    /// The requested vectors; each box is its interrupt's `dev_id`.
    vectors: KVec<KBox<Vector>>,
}

// SAFETY: The device pointer is only used for calls the PCI core allows from
// any thread while the driver is bound.
unsafe impl Send for Binding {}
// SAFETY: `&Binding` reads identity fields that do not change while the
// driver is bound, and hands out the function's `struct device` to parent
// new devices on, which the driver core allows from any thread.
unsafe impl Sync for Binding {}

impl Binding {
    fn raw(&self) -> *mut bindings::pci_dev {
        self.pdev.as_ptr()
    }

    /// The device's name, its PCI address (`0000:01:10.0`).
    pub fn name(&self) -> &CStr {
        // SAFETY: The device is registered (type invariant), so its kobject
        // name is set, NUL-terminated and lives as long as the device.
        unsafe { CStr::from_char_ptr((*self.raw()).dev.kobj.name) }
    }

    /// The function's IDs.
    pub fn ids(&self) -> Ids {
        let p = self.raw();
        // SAFETY: The device is bound (type invariant); these fields are set
        // at enumeration and never change; the physical function of a VF
        // outlives the VF.
        unsafe {
            let pf = bindings::rmdev_pci_physfn(p);
            Ids {
                vendor: (*p).vendor,
                device: (*p).device,
                subsystem_vendor: (*p).subsystem_vendor,
                subsystem: (*p).subsystem_device,
                revision: (*p).revision,
                class: (*p).class,
                pf_device: (pf != p).then(|| (*pf).device),
            }
        }
    }

    /// The `struct device` of the function, to parent other devices on.
    pub(crate) fn as_dev(&self) -> *mut bindings::device {
        // SAFETY: The device is bound (type invariant).
        unsafe { addr_of_mut!((*self.raw()).dev) }
    }

    /// Enables memory decoding (`pci_enable_device_mem()`); the framework
    /// disables the device again in remove. Bus mastering stays off.
    pub fn enable_mem(&mut self) -> Result {
        if self.enabled {
            return Ok(());
        }
        // SAFETY: The device is bound (type invariant) and this is its
        // driver's probe or a method of its binding.
        to_result(unsafe { bindings::pci_enable_device_mem(self.raw()) })?;
        self.enabled = true;
        // SAFETY: As above; the device is enabled.
        unsafe { bindings::pci_clear_master(self.raw()) };
        Ok(())
    }

    /// Requests memory BAR `index` for the driver and maps it. Needs
    /// [`Binding::enable_mem`] first. The mapping is the binding's: it is
    /// unmapped and released in remove, and the returned handle is revoked.
    pub fn map_bar(&mut self, index: i32) -> Result<Arc<Bar>> {
        if !self.enabled || !(0..6).contains(&index) {
            return Err(EINVAL);
        }
        let p = self.raw();
        // SAFETY: The device is bound and `index` is a standard BAR.
        let (flags, len) = unsafe {
            let r = &(*p).resource[index as usize];
            let len = if r.end > r.start {
                r.end - r.start + 1
            } else {
                0
            };
            (r.flags, len)
        };
        if flags & bindings::IORESOURCE_MEM as usize == 0 || len == 0 {
            return Err(ENODEV);
        }
        let len = usize::try_from(len).map_err(|_| EINVAL)?;
        self.bars.reserve(1, GFP_KERNEL)?;
        // SAFETY: The device is bound and enabled; the name is `'static` (the
        // resource keeps the pointer until it is released).
        to_result(unsafe { bindings::pci_request_region(p, index, MODULE_NAME.as_char_ptr()) })?;
        // SAFETY: The region is ours; `pci_iomap` maps it whole (len 0).
        let addr = unsafe { bindings::pci_iomap(p, index, 0) };
        let Some(addr) = NonNull::new(addr) else {
            // SAFETY: Requested just above.
            unsafe { bindings::pci_release_region(p, index) };
            return Err(ENOMEM);
        };
        let bar = Arc::pin_init(
            pin_init!(Bar {
                map <- SpinLock::new(
                    Some(Mapping { addr }),
                    lock_name!("bar"),
                    static_lock_class!()
                ),
                len,
            }),
            GFP_KERNEL,
        );
        let bar = match bar {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: Mapped and requested just above; nothing else
                // knows the mapping.
                unsafe {
                    bindings::pci_iounmap(p, addr.as_ptr());
                    bindings::pci_release_region(p, index);
                }
                return Err(e);
            }
        };
        // Capacity was reserved above.
        self.bars.push((index, bar.clone()), GFP_KERNEL)?;
        Ok(bar)
    }

    /// The function's DMA, with a 64-bit DMA mask. Needs
    /// [`Binding::enable_mem`] first. Bus mastering stays off until
    /// [`DmaFunction::set_bus_master`]; remove turns it off and revokes the
    /// handle.
    pub fn dma(&mut self) -> Result<Arc<DmaFunction>> {
        if !self.enabled {
            return Err(EINVAL);
        }
        if let Some(d) = &self.dma {
            return Ok(d.clone());
        }
        let dev = self.as_dev();
        // SAFETY: The device is bound (type invariant).
        to_result(unsafe { bindings::rmdev_dma_set_mask64(dev) })?;
        // SAFETY: As above; the reference is the handle's, put in its drop.
        let dev = unsafe { bindings::get_device(dev) };
        let dev = NonNull::new(dev).ok_or(ENODEV)?;
        let pdev = self.pdev;
        let d = Arc::pin_init(
            pin_init!(DmaFunction {
                dev,
                pdev,
                live <- Mutex::new(true, lock_name!("dma_function"), static_lock_class!()),
            }),
            GFP_KERNEL,
        )
        .inspect_err(|_| {
            // SAFETY: The reference taken just above, which no handle
            // holds.
            unsafe { bindings::put_device(dev.as_ptr()) };
        })?;
        self.dma = Some(d.clone());
        Ok(d)
    }

    /// Allocates `count` MSI-X vectors of the function and requests each
    /// of them for `handler`, which then runs in the interrupt's kernel
    /// thread (it may sleep) whenever the function signals the vector.
    /// Calls for one vector never overlap: signals during a call make one
    /// more call after it (the vector is not masked meanwhile; MSI-X is
    /// "one-shot safe"); different vectors may run at once. Needs
    /// [`Binding::enable_mem`] first; once per binding (`EBUSY` again).
    /// The function only signals with bus mastering on
    /// ([`DmaFunction::set_bus_master`]). Remove frees the vectors first,
    /// before the vendor's data is dropped, waiting for a running handler.
    pub fn request_msix(&mut self, count: u32, handler: Arc<dyn IrqHandler>) -> Result {
        if !self.enabled || count == 0 {
            return Err(EINVAL);
        }
        if self.msix {
            return Err(EBUSY);
        }
        self.vectors.reserve(count as usize, GFP_KERNEL)?;
        let p = self.raw();
        // SAFETY: The device is bound and enabled (type invariant, checked
        // above); this is its driver's probe or a method of its binding.
        let n = unsafe {
            bindings::pci_alloc_irq_vectors(p, count, count, bindings::RMDEV_PCI_IRQ_MSIX)
        };
        if n < 0 {
            return Err(Error::from_errno(n));
        }
        self.msix = true;
        for index in 0..count {
            if let Err(e) = self.request_vector(index, handler.clone()) {
                self.free_vectors();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Requests vector `index` of the allocated ones for `handler`.
    fn request_vector(&mut self, index: u32, handler: Arc<dyn IrqHandler>) -> Result {
        // SAFETY: The vectors were allocated (`request_msix`) and `index`
        // is one of them.
        let irq = unsafe { bindings::pci_irq_vector(self.raw(), index) };
        let irq = u32::try_from(irq).map_err(|_| Error::from_errno(irq))?;
        // The push below must not fail once the interrupt is requested: a
        // failed push would drop the box its handler reads.
        if self.vectors.len() == self.vectors.capacity() {
            return Err(ENOMEM);
        }
        let v = KBox::new(
            Vector {
                irq,
                index,
                handler,
            },
            GFP_KERNEL,
        )?;
        let dev_id = v.dev_id();
        // SAFETY: `irq` is one of the function's vectors; the name is
        // `'static`; `dev_id` points to the boxed `Vector`, which the
        // binding keeps (the box does not move its contents) until
        // `free_vectors` freed the interrupt, and `irq_thread` only reads
        // it.
        to_result(unsafe {
            bindings::request_threaded_irq(
                irq,
                None,
                Some(irq_thread),
                bindings::RMDEV_IRQF_ONESHOT,
                MODULE_NAME.as_char_ptr(),
                dev_id,
            )
        })?;
        // Cannot fail: there is room (checked above), so nothing is
        // allocated.
        self.vectors.push(v, GFP_KERNEL)?;
        Ok(())
    }

    /// Frees the requested vectors, each once its handler no longer runs,
    /// then the allocation.
    fn free_vectors(&mut self) {
        for v in core::mem::replace(&mut self.vectors, KVec::new()) {
            let dev_id = v.dev_id();
            // SAFETY: Requested in `request_vector` with this `dev_id`;
            // `free_irq` returns once no handler runs, and none starts.
            unsafe { bindings::free_irq(v.irq, dev_id) };
        }
        if core::mem::take(&mut self.msix) {
            // SAFETY: Allocated in `request_msix` on this bound device; no
            // vector is requested any more.
            unsafe { bindings::pci_free_irq_vectors(self.raw()) };
        }
    }

    /// Undoes what the probe set up: frees the interrupt vectors (no
    /// handler runs after), revokes the DMA handle (bus mastering off),
    /// revokes and unmaps the BARs, releases them and disables the device.
    fn teardown(&mut self) {
        self.free_vectors();
        let p = self.raw();
        if let Some(d) = self.dma.take() {
            d.revoke();
        }
        for (index, bar) in core::mem::replace(&mut self.bars, KVec::new()) {
            // Revoked under the lock: no access is running or can start
            // (the guard goes at the end of the statement: unmapping
            // sleeps).
            let revoked = bar.map.lock().take();
            if let Some(m) = revoked {
                // SAFETY: Mapped and requested in `map_bar` for this bound
                // device; nothing can access the mapping any more.
                unsafe {
                    bindings::pci_iounmap(p, m.addr.as_ptr());
                    bindings::pci_release_region(p, index);
                }
            }
        }
        if self.enabled {
            self.enabled = false;
            // SAFETY: Enabled by `enable_mem` on this bound device.
            unsafe { bindings::pci_disable_device(p) };
        }
    }
}

/// What runs when one of a function's MSI-X vectors fires
/// ([`Binding::request_msix`]).
pub trait IrqHandler: Send + Sync {
    /// Vector `vector` (0 to the count requested - 1) fired. Runs in the
    /// interrupt's kernel thread: it may sleep; a signal of the same vector
    /// meanwhile makes one more call once it returns.
    fn handle(&self, vector: u32);
}

/// One requested vector, its interrupt's `dev_id`.
struct Vector {
    irq: u32,
    index: u32,
    handler: Arc<dyn IrqHandler>,
}

impl Vector {
    /// The `dev_id` its interrupt is requested and freed with: its own
    /// address (boxed, it does not move).
    fn dev_id(&self) -> *mut c_void {
        ptr::from_ref(self).cast_mut().cast()
    }
}

/// The thread function of every requested vector.
///
/// # Safety
///
/// `dev_id` is the `Vector` given to `request_threaded_irq`, alive until
/// `free_irq` returned (which waits for this function).
unsafe extern "C" fn irq_thread(_irq: c_int, dev_id: *mut c_void) -> bindings::irqreturn_t {
    // SAFETY: The function's contract.
    let v = unsafe { &*dev_id.cast::<Vector>() };
    v.handler.handle(v.index);
    bindings::irqreturn_IRQ_HANDLED
}

/// An event one context signals and another waits for: an interrupt
/// handler's "the function did something", awaited by a path that kicked
/// the function. A count of signals, so that a signal between a waiter's
/// check of the function and its sleep is not lost: the waiter reads
/// [`Event::count`] before it checks, then waits for the count to change.
///
/// # Invariants
///
/// `raw` was initialised by `rmdev_event_init` and is pinned.
#[pin_data]
pub struct Event {
    #[pin]
    raw: Opaque<bindings::rmdev_event>,
}

// SAFETY: The C event is made for concurrent use: an atomic count and a
// wait queue with its own lock.
unsafe impl Send for Event {}
// SAFETY: As above.
unsafe impl Sync for Event {}

impl Event {
    /// A new event, never signalled.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            raw <- Opaque::ffi_init(|e| {
                // SAFETY: `e` is valid for writes and pinned (pin-init
                // contract); the name is `'static`.
                unsafe { bindings::rmdev_event_init(e, lock_name!("event").as_char_ptr()) }
            }),
        })
    }

    /// Signals the event and wakes its waiters. Any context.
    pub fn signal(&self) {
        // SAFETY: Initialised (type invariant).
        unsafe { bindings::rmdev_event_signal(self.raw.get()) };
    }

    /// How many times the event was signalled (wrapping).
    pub fn count(&self) -> u32 {
        // SAFETY: Initialised (type invariant).
        unsafe { bindings::rmdev_event_count(self.raw.get()) as u32 }
    }

    /// Waits up to `ms` milliseconds (rounded up to the scheduler's tick)
    /// until the count differs from `seen`; whether it does. It sleeps:
    /// process context only (elsewhere the kernel reports the bug).
    pub fn wait(&self, seen: u32, ms: u32) -> bool {
        // SAFETY: Initialised (type invariant).
        unsafe { bindings::rmdev_event_wait(self.raw.get(), seen as c_int, ms) }
    }
}

/// A live mapping of a BAR.
struct Mapping {
    addr: NonNull<c_void>,
}

// SAFETY: An `__iomem` mapping may be accessed from any thread.
unsafe impl Send for Mapping {}

/// A memory BAR mapped by [`Binding::map_bar`].
///
/// Accesses are 32-bit and aligned; they fail with `ENODEV` once the device
/// was unbound (the mapping is then gone), so a handle kept past the remove
/// of its device is harmless.
#[pin_data]
pub struct Bar {
    /// `None` once revoked; the lock makes revocation wait for accesses.
    #[pin]
    map: SpinLock<Option<Mapping>>,
    len: usize,
}

impl Bar {
    /// The BAR's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the BAR is empty (never: a zero-sized BAR is not mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize) -> Result {
        match offset.checked_add(4) {
            Some(end) if offset % 4 == 0 && end <= self.len => Ok(()),
            _ => Err(EINVAL),
        }
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read32(&self, offset: usize) -> Result<u32> {
        self.check(offset)?;
        let map = self.map.lock();
        let m = map.as_ref().ok_or(ENODEV)?;
        // SAFETY: The mapping is live while the lock is held (it is revoked
        // under it) and `offset + 4 <= len`, the mapping's size.
        Ok(unsafe { bindings::ioread32(m.addr.as_ptr().cast::<u8>().add(offset).cast()) })
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write32(&self, offset: usize, value: u32) -> Result {
        self.check(offset)?;
        let map = self.map.lock();
        let m = map.as_ref().ok_or(ENODEV)?;
        // SAFETY: As in `read32`.
        unsafe { bindings::iowrite32(value, m.addr.as_ptr().cast::<u8>().add(offset).cast()) };
        Ok(())
    }
}

/// DMA by a bound PCI function (see [`Binding::dma`]): the addresses the
/// function may reach are the vendor's [`Coherent`] memory and the guest
/// pages it pinned and mapped through
/// [`GuestMemory::pin_for`](super::dma::GuestMemory::pin_for).
///
/// Revoked in the function's remove: bus mastering goes off and no new
/// allocation or mapping is made; freeing and unmapping still work (the
/// handle holds a reference on the function's `struct device`).
///
/// # Invariants
///
/// `dev` is `pdev`'s `struct device`, on which the handle holds a
/// reference; while `live` says so, the function is bound and enabled.
#[pin_data(PinnedDrop)]
pub struct DmaFunction {
    dev: NonNull<bindings::device>,
    pdev: NonNull<bindings::pci_dev>,
    #[pin]
    live: Mutex<bool>,
}

// SAFETY: The device is only used for calls the DMA API and the PCI core
// allow from any thread; bus mastering changes under `live`'s lock.
unsafe impl Send for DmaFunction {}
// SAFETY: As above.
unsafe impl Sync for DmaFunction {}

impl DmaFunction {
    /// Turns the function's bus mastering on or off. `ENODEV` once the
    /// function was unbound.
    pub fn set_bus_master(&self, on: bool) -> Result {
        let live = self.live.lock();
        if !*live {
            return Err(ENODEV);
        }
        // SAFETY: The function is bound and enabled while `live` (type
        // invariant), and stays so under the lock.
        unsafe {
            if on {
                bindings::pci_set_master(self.pdev.as_ptr());
            } else {
                bindings::pci_clear_master(self.pdev.as_ptr());
            }
        }
        Ok(())
    }

    /// `len` bytes of coherent memory the function may read and write,
    /// zeroed. `ENODEV` once the function was unbound.
    pub fn alloc_coherent(self: &Arc<Self>, len: usize) -> Result<Coherent> {
        if len == 0 || len % 4 != 0 {
            return Err(EINVAL);
        }
        let live = self.live.lock();
        if !*live {
            return Err(ENODEV);
        }
        let mut addr: bindings::dma_addr_t = 0;
        // SAFETY: `dev` is valid (type invariant); `addr` is writable.
        let cpu = unsafe { bindings::rmdev_dma_alloc_coherent(self.dev.as_ptr(), len, &mut addr) };
        let cpu = NonNull::new(cpu.cast::<u8>()).ok_or(ENOMEM)?;
        drop(live);
        Ok(Coherent {
            func: self.clone(),
            cpu,
            addr,
            len,
        })
    }

    /// Maps one pinned page for the function; returns its DMA address.
    ///
    /// # Safety
    ///
    /// `page` is a page the caller holds pinned until it unmaps it.
    pub(crate) unsafe fn map_page(
        &self,
        page: *mut bindings::page,
        to_device_only: bool,
    ) -> Result<u64> {
        let live = self.live.lock();
        if !*live {
            return Err(ENODEV);
        }
        let mut addr: bindings::dma_addr_t = 0;
        // SAFETY: `dev` is valid (type invariant); the page is pinned (the
        // function's contract); `addr` is writable.
        to_result(unsafe {
            bindings::rmdev_dma_map_page(self.dev.as_ptr(), page, to_device_only, &mut addr)
        })?;
        Ok(addr)
    }

    /// Unmaps what [`DmaFunction::map_page`] returned, with the same
    /// direction.
    ///
    /// # Safety
    ///
    /// `addr` is a mapping `map_page` made on this function with
    /// `to_device_only`, not unmapped yet.
    pub(crate) unsafe fn unmap_page(&self, addr: u64, to_device_only: bool) {
        // SAFETY: `dev` is valid (type invariant); the mapping is live and
        // this function's (the function's contract).
        unsafe { bindings::rmdev_dma_unmap_page(self.dev.as_ptr(), addr, to_device_only) };
    }

    /// Whether the function is still bound (not revoked).
    pub(crate) fn is_live(&self) -> bool {
        *self.live.lock()
    }

    /// Whether the mapping at `addr` needs a sync before the function
    /// reads the page again after the CPU wrote it (a bounce buffer, a
    /// device that is not DMA-coherent).
    pub(crate) fn needs_sync(&self, addr: u64) -> bool {
        // SAFETY: `dev` is valid (type invariant); the call only reads the
        // device's DMA set-up and, for a bounce buffer, its pool.
        unsafe { bindings::rmdev_dma_need_sync(self.dev.as_ptr(), addr) }
    }

    /// The function's remove: bus mastering off, nothing new from now on.
    fn revoke(&self) {
        let mut live = self.live.lock();
        if *live {
            // SAFETY: Still bound and enabled (remove is running).
            unsafe { bindings::pci_clear_master(self.pdev.as_ptr()) };
            *live = false;
        }
    }
}

#[pinned_drop]
impl PinnedDrop for DmaFunction {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: The reference taken in `Binding::dma` (type invariant).
        unsafe { bindings::put_device(self.dev.as_ptr()) };
    }
}

/// Coherent memory a PCI function reads and writes by DMA
/// ([`DmaFunction::alloc_coherent`]), freed on drop. Accesses are
/// volatile, in bounds and 32-bit aligned where they are words.
///
/// # Invariants
///
/// `cpu` and `addr` are the CPU and DMA addresses of `len` bytes allocated
/// with `dma_alloc_coherent` on `func`'s device.
pub struct Coherent {
    func: Arc<DmaFunction>,
    cpu: NonNull<u8>,
    addr: bindings::dma_addr_t,
    len: usize,
}

// SAFETY: The memory is the handle's; writes need `&mut`, reads are
// volatile (the device writes it concurrently, as hardware does).
unsafe impl Send for Coherent {}
// SAFETY: As above.
unsafe impl Sync for Coherent {}

impl Coherent {
    /// The address the function reaches the memory at.
    pub fn dma_addr(&self) -> u64 {
        self.addr
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the size is 0 (never: an empty allocation is refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn word(&self, offset: usize) -> Result<*mut u32> {
        match offset.checked_add(4) {
            Some(end) if offset % 4 == 0 && end <= self.len => {
                // SAFETY: In bounds of the allocation (type invariant).
                Ok(unsafe { self.cpu.as_ptr().add(offset) }.cast::<u32>())
            }
            _ => Err(EINVAL),
        }
    }

    /// Reads the little-endian word at `offset`.
    pub fn read32(&self, offset: usize) -> Result<u32> {
        let p = self.word(offset)?;
        // SAFETY: Aligned and in bounds (`word`); the memory is allocated.
        Ok(u32::from_le(unsafe { ptr::read_volatile(p) }))
    }

    /// Copies `out.len()` bytes from the 4-byte aligned `offset` into
    /// `out`, a word at a time (volatile, as [`Coherent::read32`]).
    pub fn read_into(&self, offset: usize, out: &mut [u8]) -> Result {
        match offset.checked_add(out.len()) {
            Some(end) if offset % 4 == 0 && end <= self.len => {}
            _ => return Err(EINVAL),
        }
        for (i, chunk) in out.chunks_mut(4).enumerate() {
            // SAFETY: `offset + 4 * i` is aligned; the whole word is in
            // bounds: the allocation's length is a multiple of 4
            // (`alloc_coherent`) and the chunk starts inside it.
            let w =
                unsafe { ptr::read_volatile(self.cpu.as_ptr().add(offset + 4 * i).cast::<u32>()) };
            chunk.copy_from_slice(&w.to_ne_bytes()[..chunk.len()]);
        }
        Ok(())
    }

    /// Writes the little-endian word at `offset`.
    pub fn write32(&mut self, offset: usize, value: u32) -> Result {
        let p = self.word(offset)?;
        // SAFETY: As in `read32`; `&mut self` excludes other CPU accesses.
        unsafe { ptr::write_volatile(p, value.to_le()) };
        Ok(())
    }
}

impl Drop for Coherent {
    fn drop(&mut self) {
        // SAFETY: Allocated on this device with these addresses and size
        // (type invariant); the device reference is held by `func`.
        unsafe {
            bindings::rmdev_dma_free_coherent(
                self.func.dev.as_ptr(),
                self.len,
                self.cpu.as_ptr().cast(),
                self.addr,
            )
        };
    }
}

/// `-ETIMEDOUT` (6.12's `kernel::error::code` has no name for it), for a
/// driver whose function did not answer in time.
pub fn timed_out() -> Error {
    bindings::error(bindings::ETIMEDOUT)
}

/// Sleeps `ms` milliseconds (`msleep()`), for a driver waiting for its
/// function. Process context only.
pub fn sleep_ms(ms: u32) {
    // SAFETY: No precondition beyond process context, which the callers'
    // (probe, device callbacks) is.
    unsafe { bindings::rmdev_msleep(ms) };
}

/// The C driver, its ID table and the probes' context.
#[repr(C)]
struct RawDriver<C> {
    drv: bindings::pci_driver,
    ids: KVec<bindings::pci_device_id>,
    ctx: C,
}

/// The registration of a [`Driver`] with the PCI core.
///
/// Dropping it unregisters the driver, which removes it from every device
/// (the PCI core calls remove for each, synchronously).
///
/// # Invariants
///
/// `raw` holds a `pci_driver` registered with this module's trampolines for
/// `T`, until `drop`.
pub struct Registration<T: Driver> {
    raw: Pin<KBox<Opaque<RawDriver<T::Context>>>>,
    _t: PhantomData<T>,
}

// SAFETY: The C side only reads the registered structure, from any thread.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: `&Registration` gives no access to the C structure.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers the driver; every probe gets `ctx`.
    pub fn new(module: &'static ThisModule, ctx: T::Context) -> Result<Self> {
        let mut ids = KVec::with_capacity(T::IDS.len() + 1, GFP_KERNEL)?;
        for id in T::IDS {
            ids.push(
                bindings::pci_device_id {
                    vendor: id.vendor.into(),
                    device: id.device.into(),
                    subvendor: !0,
                    subdevice: !0,
                    // Matched only when the device's driver_override names
                    // this driver (`pci_match_device()`).
                    override_only: 1,
                    ..Default::default()
                },
                GFP_KERNEL,
            )?;
        }
        // The all-zero terminator.
        ids.push(bindings::pci_device_id::default(), GFP_KERNEL)?;
        let raw = KBox::pin(Opaque::<RawDriver<T::Context>>::uninit(), GFP_KERNEL)?;
        let slot = raw.get();
        // SAFETY: `slot` is valid for writes and pinned; the all-zero
        // `pci_driver` is valid and is then filled in; the strings, the
        // module, the context and the ID table (moved into the same pinned
        // allocation, its heap buffer does not move) live until `drop`
        // unregisters.
        unsafe {
            ptr::write(addr_of_mut!((*slot).ids), ids);
            ptr::write(addr_of_mut!((*slot).ctx), ctx);
            let drv = addr_of_mut!((*slot).drv);
            ptr::write_bytes(drv, 0, 1);
            (*drv).name = T::NAME.as_char_ptr();
            (*drv).id_table = (*slot).ids.as_ptr();
            (*drv).probe = Some(Self::probe);
            (*drv).remove = Some(Self::remove);
            let ret = bindings::__pci_register_driver(
                drv,
                module.as_ptr().cast(),
                MODULE_NAME.as_char_ptr(),
            );
            if ret != 0 {
                ptr::drop_in_place(addr_of_mut!((*slot).ids));
                ptr::drop_in_place(addr_of_mut!((*slot).ctx));
                return Err(Error::from_errno(ret));
            }
        }
        Ok(Self {
            raw,
            _t: PhantomData,
        })
    }

    /// The `probe` callback.
    ///
    /// # Safety
    ///
    /// Only called by the PCI core, with a valid device under its lock.
    unsafe extern "C" fn probe(
        pdev: *mut bindings::pci_dev,
        _id: *const bindings::pci_device_id,
    ) -> c_int {
        // SAFETY: The PCI core passes a valid device and holds its lock; the
        // driver core set `dev.driver` to this driver before calling probe.
        let (vendor, device, ours) = unsafe {
            let dev = addr_of_mut!((*pdev).dev);
            (
                (*pdev).vendor,
                (*pdev).device,
                bindings::rmdev_driver_override_is(dev, (*dev).driver),
            )
        };
        // A driver_override for this driver also reaches us for devices not
        // in the table (`pci_match_device()` then sends a catch-all ID).
        if !ours
            || !T::IDS
                .iter()
                .any(|i| i.vendor == vendor && i.device == device)
        {
            return ENODEV.to_errno();
        }
        // SAFETY: The driver core set `dev.driver` to this driver before
        // calling probe; it is the `driver` field of our `pci_driver`, the
        // first field of a registered `RawDriver`, whose context lives until
        // the driver is unregistered, after this probe.
        let ctx = unsafe {
            let drv = (*pdev).dev.driver.cast::<u8>();
            let raw = drv
                .sub(core::mem::offset_of!(bindings::pci_driver, driver))
                .cast::<RawDriver<T::Context>>();
            &(*raw).ctx
        };
        // SAFETY: The PCI core never calls probe with a null device.
        let pdev_nn = unsafe { NonNull::new_unchecked(pdev) };
        // INVARIANT: the device is bound to us from now until remove, or
        // until this probe fails.
        let mut binding = Binding {
            pdev: pdev_nn,
            enabled: false,
            bars: KVec::new(),
            dma: None,
            msix: false,
            vectors: KVec::new(),
        };
        let data = match T::probe(ctx, &mut binding) {
            Ok(d) => d,
            Err(e) => {
                binding.teardown();
                return e.to_errno();
            }
        };
        let bound = KBox::new(
            Bound::<T> {
                data: Some(data),
                binding,
            },
            GFP_KERNEL,
        );
        match bound {
            Ok(b) => {
                // SAFETY: The device is ours; remove takes the pointer back.
                unsafe { (*pdev).dev.driver_data = KBox::into_raw(b).cast() };
                0
            }
            Err(_) => ENOMEM.to_errno(),
        }
    }

    /// The `remove` callback.
    ///
    /// # Safety
    ///
    /// Only called by the PCI core for a device whose probe succeeded.
    unsafe extern "C" fn remove(pdev: *mut bindings::pci_dev) {
        // SAFETY: Probe stored a `KBox<Bound<T>>` there and nothing else
        // writes it while the driver is bound; it is taken back once.
        let bound = unsafe {
            let raw = (*pdev).dev.driver_data.cast::<Bound<T>>();
            (*pdev).dev.driver_data = ptr::null_mut();
            KBox::from_raw(raw)
        };
        drop(bound);
    }
}

/// A bound device: the vendor's data, then what the framework set up for
/// it. Dropping it drops the data first, then undoes the set-up.
struct Bound<T: Driver> {
    data: Option<T::Data>,
    binding: Binding,
}

impl<T: Driver> Drop for Bound<T> {
    fn drop(&mut self) {
        // No handler runs while the vendor's data goes.
        self.binding.free_vectors();
        drop(self.data.take());
        self.binding.teardown();
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // Already done on every path (remove, a failed probe); this makes
        // sure no interrupt outlives its `dev_id` whatever a path forgot.
        self.teardown();
    }
}

impl<T: Driver> Drop for Registration<T> {
    fn drop(&mut self) {
        let slot = self.raw.get();
        // SAFETY: Registered in `new` (type invariant); this removes the
        // driver from every device, running their removes, and returns when
        // none is bound. Then the ID table and the context are dropped, once.
        unsafe {
            bindings::pci_unregister_driver(addr_of_mut!((*slot).drv));
            ptr::drop_in_place(addr_of_mut!((*slot).ids));
            ptr::drop_in_place(addr_of_mut!((*slot).ctx));
        }
    }
}
