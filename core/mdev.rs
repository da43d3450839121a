// SPDX-License-Identifier: GPL-2.0

//! mdev registration: the driver that creates mdevs, parent devices and their
//! types.
//!
//! C header: [`include/linux/mdev.h`](srctree/include/linux/mdev.h)
//!
//! A vendor implements [`Driver`] for its parent (the object that owns the
//! resources mdevs are carved from), registers the driver once per module
//! with [`Registration`], and each parent device with [`Parent`]. The mdev
//! core then creates the standard sysfs tree under the parent:
//! `mdev_supported_types/<driver>-<type>/{create,name,description,device_api,
//! available_instances,devices/}`, and `/sys/class/mdev_bus/<parent>`.
//!
//! Writing a UUID to `create` calls the driver's probe: the framework checks
//! the type's instance budget, asks the vendor for the device state
//! ([`Driver::create`]) and registers a VFIO device for it
//! ([`super::device`]). Writing `1` to the mdev's `remove` unregisters it; if a
//! user holds the VFIO device open, the framework relays the request to that
//! user and the removal completes when the device is closed.

use core::marker::{PhantomData, PhantomPinned};
use core::ptr::{self, addr_of_mut};
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::ffi::{c_char, c_uint};

use kernel::error::{from_err_ptr, to_result};
use kernel::init::pin_init_from_closure;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

use super::bindings;
use super::device::{self, Device};
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
    /// The driver's name: `/sys/bus/mdev/drivers/<NAME>`, and the prefix of
    /// the type directories of a parent registered with [`Parent::new_virtual`].
    const NAME: &'static CStr;
    /// The VFIO device API the mdevs offer (`device_api`), e.g. `vfio-pci`.
    const DEVICE_API: &'static CStr;
    /// The types every parent of this driver offers, in order; a type's index
    /// in this slice is what [`Driver::create`] receives.
    const TYPES: &'static [TypeInfo];
    /// The state of one mdev.
    type Device: Device;

    /// Creates the state of a new mdev of type `TYPES[type_index]`. The
    /// framework has already reserved one of the type's instances.
    fn create(&self, type_index: usize) -> impl PinInit<Self::Device, Error>;

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

/// The registration of a [`Driver`] with the mdev core; shared by its
/// parents, which keep it alive.
///
/// # Invariants
///
/// `drv` is a registered `struct mdev_driver` whose callbacks are this
/// module's trampolines for `T`.
#[pin_data(PinnedDrop)]
pub struct Registration<T: Driver> {
    #[pin]
    drv: Opaque<RawDriver>,
    _t: PhantomData<T>,
}

/// The C driver and the device attribute group its `dev_groups` points to.
#[repr(C)]
struct RawDriver {
    drv: bindings::mdev_driver,
    attrs: DeviceAttrs,
}

// SAFETY: The C side only reads the registered structure; it is used from any
// thread, as the mdev core does.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: As above: `&Registration` gives no access to the C structure.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers the driver with the mdev core.
    pub fn new(module: &'static ThisModule) -> Result<Arc<Self>> {
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
        Arc::pin_init(
            try_pin_init!(Self {
                drv <- drv,
                _t: PhantomData,
            }),
            GFP_KERNEL,
        )
    }

    fn as_raw(&self) -> *mut bindings::mdev_driver {
        // SAFETY: `drv` is the first field of the `RawDriver`.
        unsafe { addr_of_mut!((*self.drv.get()).drv) }
    }

    /// The type slot of `mtype`.
    ///
    /// # Safety
    ///
    /// `mtype` must be a type of a registered [`Parent<T>`].
    unsafe fn slot<'a>(mtype: *mut bindings::mdev_type) -> &'a TypeSlot<T> {
        // SAFETY: Every type a `Parent<T>` registers is the first field of a
        // `#[repr(C)]` `TypeSlot<T>` that lives as long as the registration.
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
        // SAFETY: `slot.parent` points to the pinned parent that registered it.
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
        // SAFETY: `mdev` is valid (see above) and stays bound to us until
        // `remove`, which unregisters the device before it returns.
        let res = unsafe {
            device::register::<T::Device>(
                mdev,
                parent.data.create(slot.index),
                slot.version.clone(),
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

#[pinned_drop]
impl<T: Driver> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: By the type invariant the driver is registered; parents hold
        // an `Arc` to the registration, so none is registered any more.
        unsafe { bindings::mdev_unregister_driver(self.as_raw()) };
    }
}

/// One registered type: the C `mdev_type` and what the framework knows of it.
#[repr(C)]
struct TypeSlot<T: Driver> {
    /// Must stay the first field: the C side hands back pointers to it.
    mtype: Opaque<bindings::mdev_type>,
    index: usize,
    live: AtomicUsize,
    parent: *const Parent<T>,
    /// The type's `migration_version`, if its mdevs migrate.
    version: Option<VersionBuf>,
    /// The type's `migration_version` file, if it was created.
    attr: Opaque<bindings::bin_attribute>,
    attr_added: bool,
}

impl<T: Driver> TypeVersion for TypeSlot<T> {
    fn version(&self) -> &str {
        self.version.as_ref().map_or("", |v| v.as_str())
    }

    fn check_written(&self, written: &[u8]) -> core::result::Result<(), VersionError> {
        // SAFETY: `parent` points to the parent that registered the slot,
        // which outlives its files.
        let parent = unsafe { &*self.parent };
        let rule = parent.data.type_version_rule(self.index);
        check_written(rule, self.version(), written)
    }
}

/// A parent device offering the driver's mdev types.
///
/// Dropping it removes every mdev of the parent (the mdev core unregisters
/// them, relaying a release request to any user holding one open) and then
/// the types.
///
/// # Invariants
///
/// `parent` is registered with the mdev core with `types`; every slot's
/// `parent` points to `self`, which is pinned; `class` and `dev` are the
/// parent's device and its class, created for this parent.
pub struct Parent<T: Driver> {
    parent: Opaque<bindings::mdev_parent>,
    types: KVec<TypeSlot<T>>,
    type_ptrs: KVec<*mut bindings::mdev_type>,
    class: *mut bindings::class,
    dev: *mut bindings::device,
    data: T,
    /// Keeps the driver registered while the parent uses it.
    _driver: Arc<Registration<T>>,
    _pin: PhantomPinned,
}

// SAFETY: The raw pointers are owned by the parent and only used to tear it
// down; `T` is `Send + Sync`.
unsafe impl<T: Driver> Send for Parent<T> {}
// SAFETY: As above; `&Parent` only reads `data`.
unsafe impl<T: Driver> Sync for Parent<T> {}

impl<T: Driver> Parent<T> {
    /// Registers a parent that is a virtual device `/sys/devices/virtual/<name>/<name>`
    /// (for software-only vendors), offering [`Driver::TYPES`].
    ///
    /// The type directories are named `<name>-<sysfs_name>`.
    pub fn new_virtual(
        driver: &Arc<Registration<T>>,
        name: &'static CStr,
        data: T,
    ) -> Result<Pin<KBox<Self>>> {
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
                    attr_added: false,
                },
                GFP_KERNEL,
            )?;
        }
        // SAFETY: `class_create` copies nothing but the name pointer, which is
        // `'static`.
        let class = from_err_ptr(unsafe { bindings::class_create(name.as_char_ptr()) })?;
        // SAFETY: `class` was just created; the format is a literal `%s` with
        // one NUL-terminated string argument.
        let dev = unsafe {
            bindings::device_create(
                class,
                ptr::null_mut(),
                0,
                ptr::null_mut(),
                kernel::c_str!("%s").as_char_ptr(),
                name.as_char_ptr(),
            )
        };
        let dev = match from_err_ptr(dev) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: `class` was created above and has no devices.
                unsafe { bindings::class_destroy(class) };
                return Err(e);
            }
        };
        let mut this = match KBox::new(
            Self {
                parent: Opaque::uninit(),
                types,
                type_ptrs: KVec::new(),
                class,
                dev,
                data,
                _driver: driver.clone(),
                _pin: PhantomPinned,
            },
            GFP_KERNEL,
        ) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: Created above, unused elsewhere.
                unsafe { Self::destroy_device(class, dev) };
                return Err(e.into());
            }
        };
        // From here on `this` is boxed: the addresses below are final.
        let self_ptr: *const Self = &*this;
        for (slot, info) in this.types.iter_mut().zip(T::TYPES) {
            slot.parent = self_ptr;
            let mtype = slot.mtype.get();
            // SAFETY: `mtype` is owned by the slot and not yet registered; the
            // all-zero `mdev_type` is valid, and the names are `'static`.
            unsafe {
                ptr::write_bytes(mtype, 0, 1);
                (*mtype).sysfs_name = info.sysfs_name.as_char_ptr();
                (*mtype).pretty_name = info.name.as_char_ptr();
            }
            // Capacity was reserved above: this cannot fail.
            type_ptrs.push(mtype, GFP_KERNEL)?;
        }
        this.type_ptrs = type_ptrs;
        let nr = this.type_ptrs.len() as c_uint;
        // SAFETY: `parent` is owned by `this`, which is boxed and never moves;
        // `dev` is held until the parent is unregistered in `drop`; the type
        // array and the types live in `this`.
        let ret = unsafe {
            bindings::mdev_register_parent(
                this.parent.get(),
                dev,
                driver.as_raw(),
                this.type_ptrs.as_mut_ptr(),
                nr,
            )
        };
        if let Err(e) = to_result(ret) {
            // Not registered: tear down by hand, skipping `Drop`.
            // SAFETY: Created above; nothing else refers to them.
            unsafe { Self::destroy_device(class, dev) };
            this.class = ptr::null_mut();
            return Err(e);
        }
        // The migration_version attribute of each type that migrates, on the
        // type's kobject (see `sysfs`).
        for slot in this.types.iter_mut() {
            if slot.version.is_none() {
                continue;
            }
            let attr = slot.attr.get();
            // SAFETY: `attr` lives in the slot, which does not move; the slot
            // starts with its registered `mdev_type`, whose `kobj` the mdev
            // core initialised; `Drop` removes the file before the type.
            let ret = unsafe {
                sysfs::init_type_attr::<TypeSlot<T>>(attr);
                bindings::sysfs_create_bin_file(addr_of_mut!((*slot.mtype.get()).kobj), attr)
            };
            if let Err(e) = to_result(ret) {
                // `Drop` removes what was added and unregisters the parent.
                pr_err!(
                    "cannot add a type's migration_version attribute ({})\n",
                    e.to_errno()
                );
                return Err(e);
            }
            slot.attr_added = true;
        }
        // INVARIANT: registered above, with every slot pointing to `this`.
        Ok(Pin::from(this))
    }

    /// The vendor's parent object.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// # Safety
    ///
    /// `class` and `dev` come from `class_create`/`device_create` and are
    /// not used afterwards.
    unsafe fn destroy_device(class: *mut bindings::class, dev: *mut bindings::device) {
        // SAFETY: By the function's contract.
        unsafe {
            bindings::device_destroy(class, (*dev).devt);
            bindings::class_destroy(class);
        }
    }
}

impl<T: Driver> Drop for Parent<T> {
    fn drop(&mut self) {
        if self.class.is_null() {
            // Registration failed; `new_virtual` cleaned up.
            return;
        }
        for slot in self.types.iter_mut().filter(|s| s.attr_added) {
            // SAFETY: Added in `new_virtual` on this live type; this waits for
            // running reads and writes of the file.
            unsafe {
                bindings::sysfs_remove_bin_file(
                    addr_of_mut!((*slot.mtype.get()).kobj),
                    slot.attr.get(),
                )
            };
            slot.attr_added = false;
        }
        // SAFETY: By the type invariant the parent is registered. This removes
        // every mdev (waiting for users to release them) and the types.
        unsafe { bindings::mdev_unregister_parent(self.parent.get()) };
        // SAFETY: By the type invariant; the parent no longer uses `dev`.
        unsafe { Self::destroy_device(self.class, self.dev) };
    }
}
