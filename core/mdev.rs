// SPDX-License-Identifier: GPL-2.0

//! mdev registration: the driver that creates mdevs, parent devices and their
//! types.
//!
//! C header: [`include/linux/mdev.h`](srctree/include/linux/mdev.h)
//!
//! A vendor implements [`Driver`] for its parent (the object that owns the
//! resources mdevs are carved from), registers the driver once per module
//! with [`Registration`], and each parent device with [`Parent`]. Parents
//! are dropped before the registration, whose drop waits for the C side to
//! release every object of the driver (see [`Registration`]). The mdev
//! core then creates the standard sysfs tree under the parent:
//! `mdev_supported_types/<driver>-<type>/{create,name,description,device_api,
//! available_instances,devices/}`, and `/sys/class/mdev_bus/<parent>`.
//!
//! A parent is always a device of the framework's own, in the driver's
//! class (`/sys/class/<driver>/<parent>`): a virtual one
//! ([`Parent::new_virtual`]) or a child of a PCI function bound through
//! [`super::pci`] and named after it ([`Parent::new_pci`]). The mdev core
//! keeps references into a parent's memory (its types) until releases that
//! may run after the parent was unregistered, and it tells only the parent
//! device: being the parent device's owner is what lets the framework free
//! that memory exactly when the last one ran, never before. (The PCI
//! function's own `struct device` cannot be that owner: its release belongs
//! to the PCI core and runs at hot-unplug, not when the mdev core is done.)
//!
//! A PCI parent's types also appear in the function's own directory,
//! `/sys/bus/pci/devices/<function>/mdev_supported_types`, a link to the
//! one tree under the child: that is where libvirt's node-device driver
//! looks for a PCI device's mdev types, as it does for every other PCI mdev
//! parent. The link goes before the parent is unregistered.
//!
//! Writing a UUID to `create` calls the driver's probe: the framework checks
//! the type's instance budget, asks the vendor for the device state
//! ([`Driver::create`]) and registers a VFIO device for it
//! ([`super::device`]). Writing `1` to the mdev's `remove` unregisters it; if a
//! user holds the VFIO device open, the framework relays the request to that
//! user and the removal completes when the device is closed.

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::{self, addr_of_mut, NonNull};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use kernel::ffi::{c_char, c_uint};

use kernel::error::{from_err_ptr, to_result};
use kernel::init::pin_init_from_closure;
use kernel::prelude::*;
use kernel::static_lock_class;
use kernel::sync::{Arc, CondVar, Mutex};
use kernel::types::Opaque;

use super::bindings;
use super::device::{self, Device, GuestMemory, Interrupts, SaveWaker};
use super::sysfs::{self, DeviceAttrs, TypeVersion};
use super::version::{check_written, DefaultRule, VersionBuf, VersionError, VersionRule};

/// One mdev type a parent offers.
pub struct TypeInfo {
    /// The type's sysfs name; the directory is `<driver>-<sysfs_name>`.
    pub sysfs_name: &'static CStr,
    /// Human-readable name (the `name` attribute).
    pub name: &'static CStr,
    /// One-line description (the `description` attribute).
    pub description: &'static CStr,
    /// How many mdevs of this type the parent can hold at once.
    pub max_instances: usize,
}

/// A vendor's mdev driver, implemented by the vendor's parent object.
pub trait Driver: Send + Sync + Sized + 'static {
    /// The driver's name: `/sys/bus/mdev/drivers/<NAME>`, the class of its
    /// parent devices (`/sys/class/<NAME>`) and the prefix of their type
    /// directories (`<NAME>-<sysfs_name>`).
    const NAME: &'static CStr;
    /// The VFIO device API the mdevs offer (`device_api`), e.g. `vfio-pci`.
    const DEVICE_API: &'static CStr;
    /// The types every parent of this driver offers, in order; a type's index
    /// in this slice is what [`Driver::create`] receives.
    const TYPES: &'static [TypeInfo];
    /// The state of one mdev.
    type Device: Device;

    /// Creates the state of a new mdev of type `TYPES[type_index]`. The
    /// framework has already reserved one of the type's instances; `irqs`
    /// is the new device's interrupts, for it to keep and raise, `memory`
    /// its user's memory, for it to keep and reach (see [`GuestMemory`]),
    /// `waker` wakes its pre-copy reader when its state changes on its own
    /// (see [`SaveWaker`]; a device whose state only the user changes drops
    /// it).
    fn create(
        &self,
        type_index: usize,
        irqs: Interrupts,
        memory: GuestMemory,
        waker: SaveWaker,
    ) -> impl PinInit<Self::Device, Error>;

    /// The version of type `TYPES[type_index]`'s migration data format,
    /// `(major, minor)`, or `None` if its mdevs do not migrate (then the type
    /// has no `migration_version` attribute).
    fn migration_format(&self, _type_index: usize) -> Option<(u16, u16)> {
        None
    }

    /// The type's `migration_version` string, and the default of its mdevs'.
    /// By default it is in the default format,
    /// `<NAME>:<sysfs_name>:<major>.<minor>` from
    /// [`Driver::migration_format`].
    fn type_version(&self, type_index: usize) -> Option<Result<VersionBuf>> {
        let (major, minor) = self.migration_format(type_index)?;
        let name = Self::NAME.to_str().map_err(|_| EINVAL);
        let ty = Self::TYPES[type_index]
            .sysfs_name
            .to_str()
            .map_err(|_| EINVAL);
        Some(name.and_then(|n| VersionBuf::new(n, ty?, major, minor).map_err(|_| EINVAL)))
    }

    /// The rule the type's `migration_version` write applies (the devices'
    /// rule is [`Device::version_rule`]).
    fn type_version_rule(&self, _type_index: usize) -> &dyn VersionRule {
        &DefaultRule
    }
}

/// Objects that keep a vendor's driver registration, and so its module's
/// exit, waiting: parents and VFIO devices, whose memory and callbacks the
/// C side uses until their release.
pub(crate) trait Anchor: Send + Sync {}

/// Tells a [`Registration`] being dropped that everything anchored on its
/// driver is gone.
#[pin_data]
struct Drain {
    #[pin]
    done: Mutex<bool>,
    #[pin]
    cv: CondVar,
}

/// The C driver's memory, kept alive by the [`Registration`], every parent
/// and every VFIO device of the driver: the mdev core reads it until the
/// last mdev is released (`mdev_device_release()` reads `get_available`).
///
/// # Invariants
///
/// `drv` is a `struct mdev_driver` whose callbacks are this module's
/// trampolines for `T`, registered until [`Registration`] is dropped.
#[pin_data(PinnedDrop)]
struct DriverInner<T: Driver> {
    #[pin]
    drv: Opaque<RawDriver>,
    drain: Arc<Drain>,
    _t: PhantomData<T>,
}

impl<T: Driver> Anchor for DriverInner<T> {}

/// The C driver and the device attribute group its `dev_groups` points to.
#[repr(C)]
struct RawDriver {
    drv: bindings::mdev_driver,
    attrs: DeviceAttrs,
}

// SAFETY: The C side only reads the registered structure; it is used from any
// thread, as the mdev core does.
unsafe impl<T: Driver> Send for DriverInner<T> {}
// SAFETY: As above: `&DriverInner` gives no access to the C structure.
unsafe impl<T: Driver> Sync for DriverInner<T> {}

#[pinned_drop]
impl<T: Driver> PinnedDrop for DriverInner<T> {
    fn drop(self: Pin<&mut Self>) {
        // The driver was unregistered by `Registration::drop`, before its
        // last reference went; what is left is memory. Notify under the
        // lock, so the waiter returns only after this thread let go of it.
        let mut done = self.drain.done.lock();
        *done = true;
        self.drain.cv.notify_all();
        drop(done);
    }
}

impl<T: Driver> DriverInner<T> {
    fn as_raw(&self) -> *mut bindings::mdev_driver {
        // SAFETY: `drv` is the first field of the `RawDriver`.
        unsafe { addr_of_mut!((*self.drv.get()).drv) }
    }
}

/// The registration of a [`Driver`] with the mdev core.
///
/// Create it once in the module's `init`, in an [`Arc`], before any
/// [`Parent`]. Each parent holds a reference, so the registration is dropped
/// after the last parent whatever order the module drops its fields in.
///
/// Dropping it unregisters the driver, then waits until the C side has
/// released every object of the driver (parents, types, mdevs and their VFIO
/// devices). Their release
/// callbacks may run after the objects were unregistered, and are this
/// module's code reading this module's memory: without the wait, a module
/// unloaded in between would be called after it is gone (kernels with
/// `CONFIG_DEBUG_KOBJECT_RELEASE` delay every release by seconds to show
/// exactly that).
pub struct Registration<T: Driver> {
    inner: Option<Arc<DriverInner<T>>>,
    drain: Arc<Drain>,
    /// The class of the driver's parent devices, destroyed in `drop` after
    /// every parent is gone.
    class: *mut bindings::class,
}

// SAFETY: The class pointer never changes and is destroyed once, in `drop`.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: Through `&Registration`, parents only add devices to the class,
// which the driver core allows from several threads at once.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers the driver with the mdev core.
    pub fn new(module: &'static ThisModule) -> Result<Self> {
        let drain = Arc::pin_init(
            pin_init!(Drain {
                done <- Mutex::new(false, lock_name!("drain"), static_lock_class!()),
                cv <- CondVar::new(lock_name!("drain_cv"), static_lock_class!()),
            }),
            GFP_KERNEL,
        )?;
        let init = move |raw: *mut Opaque<RawDriver>| -> Result {
            let raw = Opaque::raw_get(raw);
            // SAFETY: `raw` is valid for writes and pinned (pin-init
            // contract); the all-zero `mdev_driver` is valid and is then
            // filled in; the strings and the module are `'static`.
            unsafe {
                let slot = addr_of_mut!((*raw).drv);
                ptr::write_bytes(slot, 0, 1);
                (*slot).driver.dev_groups =
                    DeviceAttrs::init::<T::Device>(addr_of_mut!((*raw).attrs));
                (*slot).device_api = T::DEVICE_API.as_char_ptr();
                (*slot).probe = Some(Self::probe);
                (*slot).remove = Some(Self::remove);
                (*slot).get_available = Some(Self::get_available);
                (*slot).show_description = Some(Self::show_description);
                (*slot).driver.name = T::NAME.as_char_ptr();
                (*slot).driver.owner = module.as_ptr().cast();
                to_result(bindings::mdev_register_driver(slot))
            }
        };
        // SAFETY: On success the closure has initialised and registered the
        // driver; on failure nothing was registered and nothing needs
        // cleaning up.
        let drv = unsafe { pin_init_from_closure(init) };
        // SAFETY: `class_create` copies nothing but the name pointer, which
        // is `'static`.
        let class = from_err_ptr(unsafe { bindings::class_create(T::NAME.as_char_ptr()) })?;
        let inner_drain = drain.clone();
        let inner = Arc::pin_init(
            try_pin_init!(DriverInner {
                drv <- drv,
                drain: inner_drain,
                _t: PhantomData,
            }),
            GFP_KERNEL,
        );
        match inner {
            Ok(inner) => Ok(Self {
                inner: Some(inner),
                drain,
                class,
            }),
            Err(e) => {
                // SAFETY: Created above; no device uses it.
                unsafe { bindings::class_destroy(class) };
                Err(e)
            }
        }
    }

    fn inner(&self) -> Result<&Arc<DriverInner<T>>> {
        self.inner.as_ref().ok_or(ENODEV)
    }

    /// The type slot of `mtype`.
    ///
    /// # Safety
    ///
    /// `mtype` must be a type of a registered [`Parent<T>`].
    unsafe fn slot<'a>(mtype: *mut bindings::mdev_type) -> &'a TypeSlot<T> {
        // SAFETY: Every type a `Parent<T>` registers is the first field of a
        // `#[repr(C)]` `TypeSlot<T>`, which lives until the parent device's
        // release, after the mdev core's last use of the type.
        unsafe { &*mtype.cast::<TypeSlot<T>>() }
    }

    /// The `probe` callback.
    ///
    /// # Safety
    ///
    /// Only called by the mdev core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn probe(mdev: *mut bindings::mdev_device) -> i32 {
        // SAFETY: The mdev core calls probe with a valid mdev of one of our
        // types; its parent is registered until every mdev is removed.
        let slot = unsafe { Self::slot((*mdev).type_) };
        // SAFETY: `slot.parent` points to the parent that registered it; the
        // vendor data lives until the parent is unregistered, and probe
        // cannot run after that.
        let parent = unsafe { &*slot.parent };
        let info = &T::TYPES[slot.index];
        // The mdev core does not count instances when the driver reports
        // them, so reserve one here, atomically.
        let reserved = slot
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < info.max_instances).then_some(n + 1)
            });
        if reserved.is_err() {
            return bindings::error(bindings::EUSERS).to_errno();
        }
        let anchor: Arc<dyn Anchor> = parent.driver.clone();
        // SAFETY: `mdev` is valid (see above) and stays bound to us until
        // `remove`, which unregisters the device before it returns.
        let res = unsafe {
            device::register::<T::Device, _>(
                mdev,
                |irqs, memory, waker| parent.data.create(slot.index, irqs, memory, waker),
                slot.version.clone(),
                anchor,
            )
        };
        match res {
            Ok(()) => 0,
            Err(e) => {
                slot.live.fetch_sub(1, Ordering::AcqRel);
                e.to_errno()
            }
        }
    }

    /// The `remove` callback.
    ///
    /// # Safety
    ///
    /// Only called by the mdev core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn remove(mdev: *mut bindings::mdev_device) {
        // SAFETY: Called by the mdev core for an mdev whose probe succeeded.
        unsafe { device::unregister(mdev) };
        // SAFETY: As in `probe`.
        let slot = unsafe { Self::slot((*mdev).type_) };
        slot.live.fetch_sub(1, Ordering::AcqRel);
    }

    /// The `get_available` callback.
    ///
    /// # Safety
    ///
    /// Only called by the mdev core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn get_available(mtype: *mut bindings::mdev_type) -> c_uint {
        // SAFETY: The core passes one of our registered types.
        let slot = unsafe { Self::slot(mtype) };
        let max = T::TYPES[slot.index].max_instances;
        let free = max.saturating_sub(slot.live.load(Ordering::Acquire));
        c_uint::try_from(free).unwrap_or(c_uint::MAX)
    }

    /// The `show_description` callback.
    ///
    /// # Safety
    ///
    /// Only called by the mdev core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn show_description(
        mtype: *mut bindings::mdev_type,
        buf: *mut c_char,
    ) -> isize {
        // SAFETY: The core passes one of our registered types.
        let slot = unsafe { Self::slot(mtype) };
        let text = T::TYPES[slot.index].description.as_bytes();
        // A sysfs show buffer is one page; keep room for the newline.
        let n = text.len().min(bindings::RMDEV_PAGE_SIZE - 1);
        // SAFETY: `buf` is a sysfs buffer of `PAGE_SIZE` bytes and `n + 1`
        // does not exceed it; `text` does not overlap it.
        unsafe {
            ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = b'\n' as c_char;
        }
        (n + 1) as isize
    }
}

impl<T: Driver> Drop for Registration<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // No parent is left: each holds the registration
            // (`Parent::_registration`), so this runs after the last one's
            // teardown.
            // SAFETY: Registered by `new` (type invariant), unregistered only
            // here. No parent is left, so no mdev is bound and none can be
            // created; this runs in the module's exit, holding no lock.
            unsafe { bindings::mdev_unregister_driver(inner.as_raw()) };
        }
        // Every parent and VFIO device still holds the driver's memory; the
        // last release drops it and says so. Releases take no lock this
        // thread holds (it holds none), so this wait ends once they ran.
        // What cannot be waited for from module code is the releasing
        // thread's return from `DriverInner::drop` into the C caller: a
        // few instructions, the same window every module has at unload.
        let mut done = self.drain.done.lock();
        while !*done {
            self.drain.cv.wait(&mut done);
        }
        drop(done);
        // SAFETY: Created in `new`; every parent device was deleted (the
        // drain waited for them), and a deleted device's release does not
        // read its class.
        unsafe { bindings::class_destroy(self.class) };
    }
}

/// The name of the link to a PCI parent's types in the function's directory.
const TYPES_LINK: &CStr = kernel::c_str!("mdev_supported_types");

/// One registered type: the C `mdev_type` and what the framework knows of it.
///
/// Never mutated after the parent is registered: the mdev core's callbacks
/// and sysfs hold shared references from then on (the C-owned parts are
/// `Opaque`, the instance count is atomic).
#[repr(C)]
struct TypeSlot<T: Driver> {
    /// Must stay the first field: the C side hands back pointers to it.
    mtype: Opaque<bindings::mdev_type>,
    index: usize,
    live: AtomicUsize,
    parent: *const ParentInner<T>,
    /// The type's `migration_version`, if its mdevs migrate.
    version: Option<VersionBuf>,
    /// The type's `migration_version` file, if it migrates.
    attr: Opaque<bindings::bin_attribute>,
    /// Whether the file was created.
    attr_added: AtomicBool,
}

impl<T: Driver> TypeVersion for TypeSlot<T> {
    fn version(&self) -> &str {
        self.version.as_ref().map_or("", |v| v.as_str())
    }

    fn check_written(&self, written: &[u8]) -> core::result::Result<(), VersionError> {
        // SAFETY: `parent` points to the parent that registered the slot,
        // whose vendor data outlives the type's files.
        let parent = unsafe { &*self.parent };
        let rule = parent.data.type_version_rule(self.index);
        check_written(rule, self.version(), written)
    }
}

/// A parent's memory, shared with the C side: the parent device, the mdev
/// parent and its types.
///
/// The mdev core holds the parent device from each type (`mdev_type_release`
/// drops it) and each type from each mdev (`mdev_device_release`), and
/// those releases can run after `mdev_unregister_parent()` returned. So this
/// memory is freed by the parent device's own `release`, after the last of
/// them, never before. The vendor data goes earlier, when the parent is
/// unregistered: no C callback reaches it after that.
///
/// # Invariants
///
/// `dev` is first (its `release` casts back); once the device is
/// initialised, the allocation is freed only by [`release_parent`]; `data`
/// is initialised until [`Parent`]'s `drop` drops it.
#[repr(C)]
struct ParentInner<T: Driver> {
    dev: Opaque<bindings::device>,
    parent: Opaque<bindings::mdev_parent>,
    types: KVec<TypeSlot<T>>,
    type_ptrs: KVec<*mut bindings::mdev_type>,
    data: ManuallyDrop<T>,
    /// Keeps the driver registered while the parent or its memory is in use.
    driver: Arc<DriverInner<T>>,
}

/// The parent device's `release`: the last reference is gone.
///
/// # Safety
///
/// Only called by the driver core, once, for a device initialised by
/// [`Parent::new`].
unsafe extern "C" fn release_parent<T: Driver>(dev: *mut bindings::device) {
    // SAFETY: `dev` is the first field of a `ParentInner<T>` that
    // `Parent::new` leaked from a `KBox` (type invariant); this is the one
    // place it is freed. The vendor data was dropped by `Parent::drop`, and
    // `ManuallyDrop` does not drop it again. Dropping `driver` may drop the
    // driver's last reference, which only frees memory and wakes the
    // waiting `Registration::drop` (the driver is unregistered there).
    drop(unsafe { KBox::from_raw(dev.cast::<ParentInner<T>>()) });
}

/// A parent device offering the driver's mdev types.
///
/// Dropping it removes every mdev of the parent (the mdev core unregisters
/// them, relaying a release request to any user holding one open), then the
/// types and the parent device, and drops the vendor data. The memory the C
/// side may still reference goes with the parent device's last reference.
///
/// # Invariants
///
/// `inner` points to a live `ParentInner<T>` whose device is initialised and
/// on which this handle holds a reference; `added` and `registered` say
/// whether `device_add()` and `mdev_register_parent()` succeeded on it.
pub struct Parent<T: Driver> {
    inner: NonNull<ParentInner<T>>,
    /// The driver's registration, dropped only after this parent's
    /// teardown (fields drop after `Drop::drop`): a vendor cannot drop the
    /// registration before its parents, whose wait would then never end.
    _registration: Arc<Registration<T>>,
    added: bool,
    registered: bool,
    /// Whether `mdev_supported_types` was linked into the parent device's
    /// parent (the PCI function's directory).
    linked: bool,
}

// SAFETY: The handle only tears the parent down; `T` is `Send + Sync`.
unsafe impl<T: Driver> Send for Parent<T> {}
// SAFETY: `&Parent` only reads the vendor data, which is `Sync`.
unsafe impl<T: Driver> Sync for Parent<T> {}

impl<T: Driver> Parent<T> {
    /// Registers a parent that is a virtual device,
    /// `/sys/devices/virtual/<Driver::NAME>/<name>` (for software-only
    /// vendors), offering [`Driver::TYPES`].
    pub fn new_virtual(driver: &Arc<Registration<T>>, name: &CStr, data: T) -> Result<Self> {
        Self::new(driver, name, ptr::null_mut(), data)
    }

    /// Registers a parent for the PCI function of `binding`, offering
    /// [`Driver::TYPES`]: a child of the function named like it, so that
    /// `/sys/class/mdev_bus/<function>` (what mdevctl calls the parent) is
    /// the function's address, and its types are under
    /// `/sys/bus/pci/devices/<function>/<Driver::NAME>/<function>/`.
    ///
    /// Drop it in the PCI driver's remove (it is part of the data
    /// [`super::pci::Driver::probe`] returns): that removes the function's
    /// mdevs before the framework unmaps its BARs.
    pub fn new_pci(
        driver: &Arc<Registration<T>>,
        binding: &super::pci::Binding,
        data: T,
    ) -> Result<Self> {
        Self::new(driver, binding.name(), binding.as_dev(), data)
    }

    /// Registers a parent device named `name`, a child of `parent_dev` (or
    /// virtual, if null), in the driver's class.
    fn new(
        registration: &Arc<Registration<T>>,
        name: &CStr,
        parent_dev: *mut bindings::device,
        data: T,
    ) -> Result<Self> {
        let class = registration.class;
        let driver = registration.inner()?;
        let mut types = KVec::with_capacity(T::TYPES.len(), GFP_KERNEL)?;
        let mut type_ptrs = KVec::with_capacity(T::TYPES.len(), GFP_KERNEL)?;
        for index in 0..T::TYPES.len() {
            let version = match data.type_version(index) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    pr_err!(
                        "{}: type {} has no usable migration_version string\n",
                        T::NAME.to_str().unwrap_or("?"),
                        index
                    );
                    return Err(e);
                }
            };
            types.push(
                TypeSlot {
                    mtype: Opaque::uninit(),
                    index,
                    live: AtomicUsize::new(0),
                    parent: ptr::null(),
                    version,
                    attr: Opaque::uninit(),
                    attr_added: AtomicBool::new(false),
                },
                GFP_KERNEL,
            )?;
        }
        for slot in types.iter() {
            // Capacity was reserved above: this cannot fail.
            type_ptrs.push(slot.mtype.get(), GFP_KERNEL)?;
        }
        // Allocated before `data` moves in, so a failure drops `data` (and
        // runs its `Drop`) instead of leaking it inside a `ManuallyDrop`.
        let slot = KBox::<ParentInner<T>>::new_uninit(GFP_KERNEL)?;
        let boxed = KBox::write(
            slot,
            ParentInner {
                dev: Opaque::uninit(),
                parent: Opaque::uninit(),
                types,
                type_ptrs,
                data: ManuallyDrop::new(data),
                driver: driver.clone(),
            },
        );
        // From here on the memory is shared with C: it never moves and is
        // freed by `release_parent`.
        let inner = KBox::into_raw(boxed);
        // SAFETY: `inner` is a valid, exclusively owned allocation (nothing
        // else knows it yet). The all-zero `device` and `mdev_type` are
        // valid; the type names are `'static`; the class lives until the
        // registration is dropped, after this device; `parent_dev`, if not
        // null, is a bound PCI function, which outlives its children.
        unsafe {
            for (slot, info) in (*inner).types.iter_mut().zip(T::TYPES) {
                slot.parent = inner;
                let mtype = slot.mtype.get();
                ptr::write_bytes(mtype, 0, 1);
                (*mtype).sysfs_name = info.sysfs_name.as_char_ptr();
                (*mtype).pretty_name = info.name.as_char_ptr();
                if slot.version.is_some() {
                    sysfs::init_type_attr::<TypeSlot<T>>(slot.attr.get());
                }
            }
            let dev = (*inner).dev.get();
            ptr::write_bytes(dev, 0, 1);
            bindings::device_initialize(dev);
            (*dev).release = Some(release_parent::<T>);
            (*dev).class = class;
            (*dev).parent = parent_dev;
        }
        // SAFETY: `inner` came from `KBox::into_raw`, so it is not null.
        let inner = unsafe { NonNull::new_unchecked(inner) };
        // INVARIANT: the device is initialised; this handle owns the
        // reference `device_initialize` gave. From here on `Drop` tears down
        // whatever was set up.
        let mut this = Self {
            inner,
            _registration: registration.clone(),
            added: false,
            registered: false,
            linked: false,
        };
        let dev = this.dev();
        // SAFETY: `dev` is initialised; the format is a literal `%s` with one
        // NUL-terminated string argument, which is copied.
        to_result(unsafe {
            bindings::dev_set_name(dev, kernel::c_str!("%s").as_char_ptr(), name.as_char_ptr())
        })?;
        // SAFETY: `dev` is initialised and named.
        to_result(unsafe { bindings::device_add(dev) })?;
        this.added = true;
        let inner = this.inner();
        let nr = inner.type_ptrs.len() as c_uint;
        // SAFETY: `parent` and the types live in `inner`, which stays until
        // the device's release, after the mdev core dropped every reference
        // (see `ParentInner`); `dev` is added; the C side only reads the type
        // pointer array.
        to_result(unsafe {
            bindings::mdev_register_parent(
                inner.parent.get(),
                dev,
                inner.driver.as_raw(),
                inner.type_ptrs.as_ptr().cast_mut(),
                nr,
            )
        })?;
        this.registered = true;
        // The migration_version attribute of each type that migrates, on the
        // type's kobject (see `sysfs`).
        for slot in this.inner().types.iter().filter(|s| s.version.is_some()) {
            // SAFETY: The attribute was initialised above and lives with the
            // slot; the slot starts with its registered `mdev_type`, whose
            // `kobj` the mdev core initialised; `Drop` removes the file
            // before unregistering the parent.
            let ret = unsafe {
                bindings::sysfs_create_bin_file(
                    addr_of_mut!((*slot.mtype.get()).kobj),
                    slot.attr.get(),
                )
            };
            if let Err(e) = to_result(ret) {
                // `Drop` removes what was added and unregisters the parent.
                pr_err!(
                    "cannot add a type's migration_version attribute ({})\n",
                    e.to_errno()
                );
                return Err(e);
            }
            slot.attr_added.store(true, Ordering::Release);
        }
        if !parent_dev.is_null() {
            // SAFETY: `parent_dev` is the bound PCI function, which outlives
            // its children; the kset was created by `mdev_register_parent()`
            // and lives until `mdev_unregister_parent()`, which `Drop` calls
            // only after removing the link; the name is `'static`.
            let ret = unsafe {
                bindings::sysfs_create_link(
                    addr_of_mut!((*parent_dev).kobj),
                    addr_of_mut!((*(*this.inner().parent.get()).mdev_types_kset).kobj),
                    TYPES_LINK.as_char_ptr(),
                )
            };
            if let Err(e) = to_result(ret) {
                pr_err!(
                    "cannot link mdev_supported_types into the parent's PCI function ({})\n",
                    e.to_errno()
                );
                return Err(e);
            }
            this.linked = true;
            // Tell udev (and so libvirt's node devices) that the function
            // now offers mdev types, as the mdev core tells it of the parent.
            // SAFETY: As above, the function is live.
            unsafe {
                bindings::kobject_uevent(
                    addr_of_mut!((*parent_dev).kobj),
                    bindings::kobject_action_KOBJ_CHANGE,
                )
            };
        }
        Ok(this)
    }

    fn inner(&self) -> &ParentInner<T> {
        // SAFETY: `inner` is live while this handle exists (type invariant).
        unsafe { self.inner.as_ref() }
    }

    fn dev(&self) -> *mut bindings::device {
        self.inner().dev.get()
    }

    /// The vendor's parent object.
    pub fn data(&self) -> &T {
        &self.inner().data
    }
}

impl<T: Driver> Drop for Parent<T> {
    fn drop(&mut self) {
        let inner = self.inner();
        for slot in inner.types.iter() {
            if slot.attr_added.swap(false, Ordering::AcqRel) {
                // SAFETY: Added in `new` on this live type; this waits
                // for running reads and writes of the file.
                unsafe {
                    bindings::sysfs_remove_bin_file(
                        addr_of_mut!((*slot.mtype.get()).kobj),
                        slot.attr.get(),
                    )
                };
            }
        }
        let dev = self.dev();
        if self.linked {
            // SAFETY: `dev` is added (the link exists only then) and its
            // parent is the PCI function the link was made in, still bound
            // (the parent is dropped in the PCI driver's remove).
            unsafe {
                let function = (*dev).parent;
                bindings::sysfs_remove_link(
                    addr_of_mut!((*function).kobj),
                    TYPES_LINK.as_char_ptr(),
                );
                bindings::kobject_uevent(
                    addr_of_mut!((*function).kobj),
                    bindings::kobject_action_KOBJ_CHANGE,
                );
            }
        }
        if self.registered {
            // SAFETY: Registered in `new`. This removes every mdev
            // (waiting for users to release them) and the types; no mdev
            // core callback runs afterwards.
            unsafe { bindings::mdev_unregister_parent(inner.parent.get()) };
        }
        if self.added {
            // SAFETY: Added in `new`.
            unsafe { bindings::device_del(dev) };
        }
        // SAFETY: Nothing reaches the vendor data any more: the parent is
        // unregistered (or never was) and its files are gone; it is dropped
        // once, here (type invariant), through a raw pointer, with no
        // reference to it alive.
        unsafe { ManuallyDrop::drop(&mut *addr_of_mut!((*self.inner.as_ptr()).data)) };
        // SAFETY: This handle's reference (type invariant). The memory goes
        // in `release_parent`, now or after the mdev core's last reference.
        unsafe { bindings::put_device(dev) };
    }
}
