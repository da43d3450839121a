// SPDX-License-Identifier: GPL-2.0

//! The interrupts of an mdev, as vfio-pci defines them for a conventional
//! PCI function, and the handle its vendor raises them with.
//!
//! C header: [`include/uapi/linux/vfio.h`](srctree/include/uapi/linux/vfio.h)
//!
//! The user (a VMM) registers eventfds with `VFIO_DEVICE_SET_IRQS`:
//!
//! - INTx (index 0, one interrupt if the device has an interrupt pin): level
//!   and auto-masked. When the device raises it and it is unmasked, the
//!   eventfd is signalled and the line masks itself until the user unmasks
//!   it (`VFIO_IRQ_SET_ACTION_UNMASK`, after the guest handled it); raised
//!   while masked, it stays pending and fires at the unmask. The unmask can
//!   also come through an eventfd the user registers (KVM's resampling
//!   irqfd signals it at the guest's end of interrupt), through vfio's own
//!   `virqfd` as on vfio-pci; masking through an eventfd is `-ETIMEDOUT`,
//!   as there.
//! - MSI (index 1, as many vectors as the device declares): each vector has
//!   its own eventfd.
//! - MSI-X (index 2, as many vectors as the device's MSI-X capability
//!   declares): each vector has its own eventfd, as for MSI. The table and
//!   the pending-bit array are the user's to emulate, as on vfio-pci (QEMU
//!   does, and points a vector its guest masked at an eventfd of its own,
//!   setting the pending bit when it fires): the framework hides the
//!   table's bytes of the BAR from the vendor. A vector registered with
//!   fd -1 drops what the device raises on it. Masking through
//!   `VFIO_IRQ_SET_ACTION_MASK` is `-ENOTTY`, as on vfio-pci. Unlike
//!   vfio-pci on a host that allocates MSI-X vectors dynamically, the index
//!   is always `NORESIZE` (QEMU then re-enables the whole block when its
//!   guest uses another vector).
//! - The request channel (index 4): signalled when the mdev is removed
//!   while the user holds it open.
//!
//! INTx, MSI and MSI-X exclude each other: enabling one while another is
//! enabled is `-EINVAL`, as on vfio-pci.
//!
//! Every check and result follows Linux 6.12's vfio-pci
//! (`vfio_set_irqs_validate_and_prepare()`, `vfio_pci_set_irqs_ioctl()` and
//! the handlers it dispatches to), so a VMM sees no difference. One
//! deliberate difference: a block of MSI eventfds that cannot all be taken
//! changes nothing, where vfio-pci disables the vectors it had set. The
//! error index (3) does not exist on a conventional PCI function.

use core::ptr;

use kernel::error::to_result;
use kernel::ffi::c_void;
use kernel::prelude::*;
use kernel::static_lock_class;
use kernel::sync::{Arc, Mutex};

use super::sync::IrqSafeSpinLock;
use kernel::types::Opaque;
use kernel::uaccess::UserSlice;

use super::bindings;
use super::pci_config::Msix;
use super::user::{self, EventFd};

/// Interrupt indexes of the vfio-pci layout (`VFIO_PCI_NUM_IRQS`).
pub(crate) const NUM_IRQS: u32 = 5;
/// INTx (`VFIO_PCI_INTX_IRQ_INDEX`).
const INTX: u32 = 0;
/// MSI (`VFIO_PCI_MSI_IRQ_INDEX`).
const MSI: u32 = 1;
/// MSI-X (`VFIO_PCI_MSIX_IRQ_INDEX`).
const MSIX: u32 = 2;
/// The error index (`VFIO_PCI_ERR_IRQ_INDEX`), PCIe only.
const ERR: u32 = 3;
/// The request channel (`VFIO_PCI_REQ_IRQ_INDEX`).
const REQ: u32 = 4;
/// The most MSI vectors a function has, and the most MSI-X vectors an
/// rmdev device may declare.
pub const MAX_MSI_VECTORS: usize = 32;

/// Which interrupts the user enabled (vfio-pci's `irq_type`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Intx,
    Msi,
    Msix,
}

/// The interrupts a device declares in its PCI configuration.
#[derive(Clone, Copy, Default)]
pub(crate) struct Declared {
    /// An INTx pin.
    pub(crate) has_intx: bool,
    /// MSI vectors.
    pub(crate) msi_vectors: u32,
    /// MSI-X, its vectors and table (checked: at most
    /// [`MAX_MSI_VECTORS`]).
    pub(crate) msix: Option<Msix>,
}

/// The interrupt state of one device, under its lock.
struct Irqs {
    /// Whether the device has an INTx pin.
    has_intx: bool,
    /// The device's MSI vectors.
    msi_vectors: u32,
    /// The device's MSI-X vectors and table.
    msix: Option<Msix>,
    mode: Mode,
    /// INTx: the eventfd (`None`: enabled but not signalling), masked, and
    /// raised while masked or disabled.
    intx: Option<EventFd>,
    intx_masked: bool,
    intx_pending: bool,
    /// The emulated command register's INTx-disable bit: the function does
    /// not assert its pin (what is raised meanwhile waits).
    intx_disabled: bool,
    /// The pin as the status register's interrupt bit shows it: raised and
    /// not yet serviced (the user's unmask), whether delivered or not.
    intx_asserted: bool,
    /// MSI or MSI-X (whichever `mode` says): one eventfd per vector.
    msi: [Option<EventFd>; MAX_MSI_VECTORS],
    /// The request channel's eventfd.
    req: Option<EventFd>,
}

impl Irqs {
    fn count(&self, index: u32) -> u32 {
        match index {
            INTX => u32::from(self.has_intx),
            MSI => self.msi_vectors,
            MSIX => self.msix.map_or(0, |m| u32::from(m.vectors)),
            REQ => 1,
            _ => 0,
        }
    }

    /// INTx fires: signal and auto-mask, or stay pending while masked or
    /// disabled by the command register.
    fn fire_intx(&mut self) {
        self.intx_asserted = true;
        if self.intx_masked || self.intx_disabled {
            self.intx_pending = true;
            return;
        }
        if let Some(efd) = &self.intx {
            efd.signal();
        }
        self.intx_masked = true;
        self.intx_pending = false;
    }

    /// The user serviced the interrupt: what was raised meanwhile fires,
    /// else the pin is no longer asserted.
    fn intx_unmask(&mut self) {
        self.intx_masked = false;
        if self.intx_pending {
            self.fire_intx();
        } else {
            self.intx_asserted = false;
        }
    }

    fn disable_intx(&mut self) {
        self.mode = Mode::None;
        self.intx = None;
        self.intx_masked = false;
        self.intx_pending = false;
        self.intx_asserted = false;
    }

    fn disable_msi(&mut self) {
        self.mode = Mode::None;
        for v in self.msi.iter_mut() {
            *v = None;
        }
    }
}

/// The interrupt state of one device, shared by the framework's device and
/// the vendor's [`Interrupts`] handle.
#[pin_data(PinnedDrop)]
pub(crate) struct IrqState {
    /// Serialises `VFIO_DEVICE_SET_IRQS` and the release (vfio-pci's
    /// `igate`); taken before `inner`. The unmask eventfd's thread takes
    /// only `inner`, so its virqfd is enabled and disabled (which waits for
    /// the thread) under this lock with `inner` released.
    #[pin]
    gate: Mutex<()>,
    /// Taken with local interrupts disabled: the vendor raises interrupts
    /// from any context, hardware interrupt handlers included. Nothing
    /// under it sleeps.
    #[pin]
    inner: IrqSafeSpinLock<Irqs>,
    /// vfio's virqfd of the INTx unmask eventfd, or null: vfio's
    /// `vfio_virqfd_enable()` and `vfio_virqfd_disable()` set and clear it
    /// under their own lock, and nothing else touches it.
    #[pin]
    unmask: Opaque<*mut bindings::virqfd>,
}

// SAFETY: The locks are made for use from any thread; `unmask` is only
// used by vfio's virqfd functions, which serialise on their own lock.
unsafe impl Send for IrqState {}
// SAFETY: As above.
unsafe impl Sync for IrqState {}

#[pinned_drop]
impl PinnedDrop for IrqState {
    fn drop(self: Pin<&mut Self>) {
        // Normally done already by `release_all`: no virqfd may outlive
        // the state its thread uses.
        self.unmask_fd_disable();
    }
}

/// The INTx unmask eventfd was signalled (vfio's virqfd thread, in process
/// context).
///
/// # Safety
///
/// `opaque` is the `IrqState` that enabled the virqfd; it disables the
/// virqfd, which waits for this function to return, before it is dropped.
unsafe extern "C" fn unmask_thread(opaque: *mut c_void, _data: *mut c_void) {
    // SAFETY: By the function's contract, `opaque` points to a live
    // `IrqState`, only used here through shared references.
    let state = unsafe { &*opaque.cast::<IrqState>() };
    let mut irqs = state.inner.lock();
    if irqs.mode == Mode::Intx {
        irqs.intx_unmask();
    }
}

/// A device's interrupts, for its vendor to raise. The framework hands one
/// to [`Driver::create`](super::mdev::Driver::create); it may be cloned and
/// kept in the device, and raising is a no-op until the user enables the
/// interrupt.
#[derive(Clone)]
pub struct Interrupts(Arc<IrqState>);

impl Interrupts {
    /// Raises the device's interrupt: vector 0 when the user enabled MSI or
    /// MSI-X, else INTx. From any context: process, softirq (timers) or a
    /// hardware interrupt handler; it never sleeps.
    pub fn raise(&self) {
        self.raise_vector(0);
    }

    /// Raises MSI or MSI-X vector `vector`, whichever the user enabled
    /// (INTx for any vector otherwise, as a function that falls back to its
    /// pin does). A vector the user registered without an eventfd (fd -1)
    /// drops it; QEMU masks a vector by pointing it at an eventfd of its
    /// own, which sets the pending bit it emulates.
    pub fn raise_vector(&self, vector: u32) {
        let mut irqs = self.0.inner.lock();
        match irqs.mode {
            Mode::Msi | Mode::Msix => {
                if let Some(Some(efd)) = irqs.msi.get(vector as usize) {
                    efd.signal();
                }
            }
            Mode::Intx => irqs.fire_intx(),
            Mode::None => {}
        }
    }
}

impl IrqState {
    /// A device's interrupts, none declared yet.
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                gate <- Mutex::new((), lock_name!("irq_gate"), static_lock_class!()),
                unmask: Opaque::new(ptr::null_mut()),
                inner <- IrqSafeSpinLock::new(
                    Irqs {
                        has_intx: false,
                        msi_vectors: 0,
                        msix: None,
                        mode: Mode::None,
                        intx: None,
                        intx_masked: false,
                        intx_pending: false,
                        intx_disabled: false,
                        intx_asserted: false,
                        msi: [const { None }; MAX_MSI_VECTORS],
                        req: None,
                    },
                    lock_name!("irq"),
                    static_lock_class!()
                ),
            }),
            GFP_KERNEL,
        )
    }

    /// The vendor's handle.
    pub(crate) fn handle(self: &Arc<Self>) -> Interrupts {
        Interrupts(self.clone())
    }

    /// Declares the device's interrupts (before it is registered).
    pub(crate) fn declare(&self, d: Declared) {
        let mut irqs = self.inner.lock();
        irqs.has_intx = d.has_intx;
        irqs.msi_vectors = d.msi_vectors.min(MAX_MSI_VECTORS as u32);
        irqs.msix = d.msix.filter(|m| usize::from(m.vectors) <= MAX_MSI_VECTORS);
    }

    /// The device's MSI-X layout, if it has MSI-X.
    pub(crate) fn msix(&self) -> Option<Msix> {
        self.inner.lock().msix
    }

    /// The emulated command register's INTx-disable bit is now `disabled`
    /// (a configuration write, a reset, a loaded state). Clearing it lets
    /// what was raised meanwhile fire, as a function asserts its pin again.
    pub(crate) fn set_intx_disabled(&self, disabled: bool) {
        let mut irqs = self.inner.lock();
        irqs.intx_disabled = disabled;
        if !disabled && irqs.mode == Mode::Intx && irqs.intx_pending && !irqs.intx_masked {
            irqs.fire_intx();
        }
    }

    /// A function reset: the pin is no longer asserted and what was raised
    /// and not delivered is dropped (the user's eventfds and mask stay).
    pub(crate) fn reset_line(&self) {
        let mut irqs = self.inner.lock();
        irqs.intx_pending = false;
        irqs.intx_asserted = false;
    }

    /// Whether the INTx pin is asserted, for the status register's
    /// interrupt bit.
    pub(crate) fn intx_asserted(&self) -> bool {
        self.inner.lock().intx_asserted
    }

    /// The last user closed the device: every interrupt is released.
    pub(crate) fn release_all(&self) {
        let _gate = self.gate.lock();
        {
            let mut irqs = self.inner.lock();
            irqs.disable_intx();
            irqs.disable_msi();
            irqs.req = None;
        }
        self.unmask_fd_disable();
    }

    /// Has vfio call [`unmask_thread`] whenever the eventfd `fd` is
    /// signalled (`-EBUSY` if one is registered already). Called under
    /// `gate`.
    fn unmask_fd_enable(&self, fd: i32) -> Result {
        // SAFETY: `self` is pinned in its `Arc` and disables the virqfd
        // before it is dropped (`PinnedDrop`), which is `unmask_thread`'s
        // contract; `unmask` is only used by vfio's virqfd functions; `fd`
        // is checked by vfio.
        let ret = unsafe {
            bindings::vfio_virqfd_enable(
                ptr::from_ref(self).cast_mut().cast(),
                None,
                Some(unmask_thread),
                ptr::null_mut(),
                self.unmask.get(),
                fd,
            )
        };
        to_result(ret)
    }

    /// Unregisters the unmask eventfd, if any, and waits for its thread to
    /// finish. Never called with `inner` held: the thread takes it.
    fn unmask_fd_disable(&self) {
        // SAFETY: `unmask` is a virqfd pointer slot only vfio's functions
        // use (null when there is none, which is a no-op for them).
        unsafe { bindings::vfio_virqfd_disable(self.unmask.get()) };
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO`: (flags, count) as vfio-pci answers for a
    /// conventional PCI function, or `-EINVAL` for the error index (PCIe
    /// only), which QEMU reads as "no error reporting" without a warning.
    pub(crate) fn info(&self, index: u32) -> Result<(u32, u32)> {
        if index >= NUM_IRQS || index == ERR {
            return Err(EINVAL);
        }
        let flags = bindings::VFIO_IRQ_INFO_EVENTFD
            | if index == INTX {
                bindings::VFIO_IRQ_INFO_MASKABLE | bindings::VFIO_IRQ_INFO_AUTOMASKED
            } else {
                bindings::VFIO_IRQ_INFO_NORESIZE
            };
        Ok((flags, self.inner.lock().count(index)))
    }

    /// Signals the request channel; whether one is registered.
    pub(crate) fn request(&self) -> bool {
        match &self.inner.lock().req {
            Some(efd) => {
                efd.signal();
                true
            }
            None => false,
        }
    }

    /// `VFIO_DEVICE_SET_IRQS` with the user's argument at `arg`.
    pub(crate) fn set_irqs(&self, arg: usize) -> Result {
        const MINSZ: usize = 20;
        let hdr: bindings::vfio_irq_set = user::copy_in(arg, MINSZ)?;
        let known = bindings::VFIO_IRQ_SET_DATA_TYPE_MASK | bindings::VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if (hdr.argsz as usize) < MINSZ
            || hdr.index >= NUM_IRQS
            || hdr.count >= u32::MAX - hdr.start
            || hdr.flags & !known != 0
        {
            return Err(EINVAL);
        }
        let num = self.inner.lock().count(hdr.index);
        if hdr.start >= num || hdr.start + hdr.count > num {
            return Err(EINVAL);
        }
        let data = hdr.flags & bindings::VFIO_IRQ_SET_DATA_TYPE_MASK;
        let elem = match data {
            bindings::VFIO_IRQ_SET_DATA_NONE => 0,
            bindings::VFIO_IRQ_SET_DATA_BOOL => 1,
            bindings::VFIO_IRQ_SET_DATA_EVENTFD => 4,
            _ => return Err(EINVAL),
        };
        // At most 32 vectors of 4 bytes: `count <= num <= 32`.
        let len = hdr.count as usize * elem;
        if hdr.argsz as usize - MINSZ < len {
            return Err(EINVAL);
        }
        // The data is copied before a handler is chosen, as vfio-pci does.
        let mut payload = [0u8; 4 * MAX_MSI_VECTORS];
        let payload = &mut payload[..len];
        if len > 0 {
            UserSlice::new(arg + MINSZ, len)
                .reader()
                .read_slice(payload)?;
        }
        let set = Set {
            start: hdr.start as usize,
            count: hdr.count as usize,
            data,
            payload,
        };
        let action = hdr.flags & bindings::VFIO_IRQ_SET_ACTION_TYPE_MASK;
        let _gate = self.gate.lock();
        match (hdr.index, action) {
            (INTX, bindings::VFIO_IRQ_SET_ACTION_MASK) => self.intx_mask(&set, true),
            (INTX, bindings::VFIO_IRQ_SET_ACTION_UNMASK) => self.intx_mask(&set, false),
            (INTX, bindings::VFIO_IRQ_SET_ACTION_TRIGGER) => self.intx_trigger(&set),
            (MSI, bindings::VFIO_IRQ_SET_ACTION_TRIGGER) => self.msi_trigger(&set, Mode::Msi),
            (MSIX, bindings::VFIO_IRQ_SET_ACTION_TRIGGER) => self.msi_trigger(&set, Mode::Msix),
            (REQ, bindings::VFIO_IRQ_SET_ACTION_TRIGGER) => self.req_trigger(&set),
            // No handler for this index and action (vfio-pci: `-ENOTTY`).
            _ => Err(ENOTTY),
        }
    }

    /// `vfio_pci_set_intx_mask()` and `vfio_pci_set_intx_unmask()`.
    fn intx_mask(&self, set: &Set<'_>, mask: bool) -> Result {
        let mut irqs = self.inner.lock();
        if irqs.mode != Mode::Intx || set.start != 0 || set.count != 1 {
            return Err(EINVAL);
        }
        let act = match set.data {
            bindings::VFIO_IRQ_SET_DATA_NONE => true,
            bindings::VFIO_IRQ_SET_DATA_BOOL => set.payload[0] != 0,
            // Masking through an eventfd: vfio-pci answers `-ETIMEDOUT`
            // (not implemented there either).
            _ if mask => return Err(bindings::error(bindings::ETIMEDOUT)),
            // Unmasking through an eventfd (KVM's resampling irqfd): a
            // negative number unregisters it. Under `gate`, without
            // `inner`, which the virqfd's thread takes.
            _ => {
                drop(irqs);
                let fd = set.fd(0);
                if fd >= 0 {
                    return self.unmask_fd_enable(fd);
                }
                self.unmask_fd_disable();
                return Ok(());
            }
        };
        if act {
            if mask {
                irqs.intx_masked = true;
            } else {
                irqs.intx_unmask();
            }
        }
        Ok(())
    }

    /// `vfio_pci_set_intx_trigger()`.
    fn intx_trigger(&self, set: &Set<'_>) -> Result {
        let mut irqs = self.inner.lock();
        if irqs.mode == Mode::Intx && set.count == 0 && set.data == bindings::VFIO_IRQ_SET_DATA_NONE
        {
            // `vfio_intx_disable()`: the unmask eventfd goes too.
            irqs.disable_intx();
            drop(irqs);
            self.unmask_fd_disable();
            return Ok(());
        }
        if !matches!(irqs.mode, Mode::Intx | Mode::None) || set.start != 0 || set.count != 1 {
            return Err(EINVAL);
        }
        if set.data == bindings::VFIO_IRQ_SET_DATA_EVENTFD {
            let efd = eventfd_arg(set.fd(0))?;
            if irqs.mode == Mode::None {
                irqs.mode = Mode::Intx;
                irqs.intx_masked = false;
                irqs.intx_pending = false;
            }
            irqs.intx = efd;
            return Ok(());
        }
        if irqs.mode != Mode::Intx {
            return Err(EINVAL);
        }
        // Loopback: the user's test of its own handling.
        if set.data == bindings::VFIO_IRQ_SET_DATA_NONE || set.payload[0] != 0 {
            irqs.fire_intx();
        }
        Ok(())
    }

    /// `vfio_pci_set_msi_trigger()`, for MSI or MSI-X (`mode`): the two,
    /// and INTx, exclude each other.
    fn msi_trigger(&self, set: &Set<'_>, mode: Mode) -> Result {
        let mut irqs = self.inner.lock();
        if irqs.mode == mode && set.count == 0 && set.data == bindings::VFIO_IRQ_SET_DATA_NONE {
            irqs.disable_msi();
            return Ok(());
        }
        if irqs.mode != mode && irqs.mode != Mode::None {
            return Err(EINVAL);
        }
        if set.data == bindings::VFIO_IRQ_SET_DATA_EVENTFD {
            // Enabling no vector: vfio-pci's `pci_alloc_irq_vectors(1, 0)`
            // answers `-ERANGE`.
            if irqs.mode == Mode::None && set.count == 0 {
                return Err(ERANGE);
            }
            // Take every eventfd first: a bad one changes nothing.
            let mut new: [Option<EventFd>; MAX_MSI_VECTORS] = [const { None }; MAX_MSI_VECTORS];
            for (i, slot) in new.iter_mut().enumerate().take(set.count) {
                *slot = eventfd_arg(set.fd(i))?;
            }
            irqs.mode = mode;
            for (i, efd) in new.into_iter().enumerate().take(set.count) {
                irqs.msi[set.start + i] = efd;
            }
            return Ok(());
        }
        if irqs.mode != mode {
            return Err(EINVAL);
        }
        for i in 0..set.count {
            let fire = set.data == bindings::VFIO_IRQ_SET_DATA_NONE || set.payload[i] != 0;
            if let (true, Some(efd)) = (fire, &irqs.msi[set.start + i]) {
                efd.signal();
            }
        }
        Ok(())
    }

    /// `vfio_pci_set_req_trigger()` and `vfio_pci_set_ctx_trigger_single()`.
    fn req_trigger(&self, set: &Set<'_>) -> Result {
        let mut irqs = self.inner.lock();
        match set.data {
            // Loopback (count 1) signals the registered eventfd; count 0
            // unregisters it. With nothing registered both are `-EINVAL`.
            bindings::VFIO_IRQ_SET_DATA_NONE => match &irqs.req {
                None => return Err(EINVAL),
                Some(efd) if set.count == 1 => efd.signal(),
                Some(_) => irqs.req = None,
            },
            bindings::VFIO_IRQ_SET_DATA_BOOL => {
                if set.count == 0 {
                    return Err(EINVAL);
                }
                if let (true, Some(efd)) = (set.payload[0] != 0, &irqs.req) {
                    efd.signal();
                }
            }
            _ => {
                if set.count == 0 {
                    return Err(EINVAL);
                }
                irqs.req = eventfd_arg_strict(set.fd(0))?;
            }
        }
        Ok(())
    }
}

/// One `VFIO_DEVICE_SET_IRQS` call, checked: `start + count` is within the
/// index's interrupts and `payload` holds `count` elements of `data`'s type.
struct Set<'a> {
    start: usize,
    count: usize,
    data: u32,
    payload: &'a [u8],
}

impl Set<'_> {
    /// The `i`th eventfd number of a `DATA_EVENTFD` call.
    fn fd(&self, i: usize) -> i32 {
        let at = 4 * i;
        match self.payload.get(at..at + 4) {
            Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            None => -1,
        }
    }
}

/// The eventfd a `DATA_EVENTFD` element names for INTx and MSI: any
/// negative number is none (`vfio_intx_set_signal()`,
/// `vfio_msi_set_vector_signal()`).
fn eventfd_arg(fd: i32) -> Result<Option<EventFd>> {
    if fd < 0 {
        Ok(None)
    } else {
        Ok(Some(EventFd::get(fd)?))
    }
}

/// The eventfd a `DATA_EVENTFD` element names for the request channel:
/// `-1` is none, another negative number `-EINVAL`
/// (`vfio_pci_set_ctx_trigger_single()`).
fn eventfd_arg_strict(fd: i32) -> Result<Option<EventFd>> {
    match fd {
        -1 => Ok(None),
        fd if fd >= 0 => Ok(Some(EventFd::get(fd)?)),
        _ => Err(EINVAL),
    }
}
