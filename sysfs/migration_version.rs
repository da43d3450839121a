// SPDX-License-Identifier: GPL-2.0

//! The `migration_version` attributes: one on every mdev type directory and
//! one on every mdev, where the type or device migrates.
//!
//! C header: [`include/linux/sysfs.h`](srctree/include/linux/sysfs.h)
//!
//! Reading gives the version string and a newline. Writing a string is a
//! pure compatibility check: it returns the full count when the device (or
//! a device of the type) can load state saved by a device with that
//! version, and fails with the rule's errno (`EINVAL` by default)
//! otherwise; it changes nothing. The input rules (one trailing newline, no
//! empty, over-long, NUL or non-printable input) and the rules themselves
//! are `core/logic/src/version.rs`; the stream header is checked with the
//! same rule. Mode 0644: world-readable, writable by root.
//!
//! The device attribute is a driver `dev_groups` attribute, whose
//! visibility follows the device's migration support.
//!
//! The type attribute: 6.12's mdev core offers no hook for type attributes,
//! and its type directory's `sysfs_ops` cast every plain attribute to its
//! private `struct mdev_type_attribute`. A *binary* attribute has its own
//! read and write callbacks and never goes through those `sysfs_ops`, so the
//! framework adds one to the type's public `kobj` (`struct mdev_type`,
//! `<linux/mdev.h>`) with `sysfs_create_bin_file()`, and assumes nothing
//! about the core's private layout. Binary attributes see offsets and split
//! long writes into page-sized pieces: reads honour the offset, and a write
//! must be one `write(2)` at offset 0 (anything longer than a page is
//! over-long anyway).

use core::ptr::{self, addr_of, addr_of_mut};

use kernel::ffi::c_char;
use kernel::prelude::*;

use super::bindings;
use super::device::{core_of, Device};
use super::stream::version_errno;
use super::version::VersionError;

/// The attribute's name.
const NAME: &CStr = kernel::c_str!("migration_version");
/// World-readable, writable by root.
const MODE: u16 = 0o644;

/// Copies `text` and a newline into a sysfs show buffer (one page).
///
/// # Safety
///
/// `buf` must be a sysfs buffer of `PAGE_SIZE` bytes.
unsafe fn show(buf: *mut c_char, text: &str) -> isize {
    let n = text.len().min(bindings::RMDEV_PAGE_SIZE - 1);
    // SAFETY: `n + 1 <= PAGE_SIZE` bytes of `buf` (contract); `text` does not
    // overlap it.
    unsafe {
        ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = b'\n' as c_char;
    }
    (n + 1) as isize
}

/// The result of a write: the full count, or the rule's errno.
fn store_result(res: core::result::Result<(), VersionError>, count: usize) -> isize {
    match res {
        Ok(()) => count as isize,
        Err(e) => version_errno(e).to_errno() as isize,
    }
}

/// The device attribute and its group, for a driver's `dev_groups`.
///
/// # Invariants
///
/// Once [`DeviceAttrs::init`] ran, the pointers refer to the structure's own
/// fields; it must not move while the driver is registered.
#[repr(C)]
pub(crate) struct DeviceAttrs {
    attr: bindings::device_attribute,
    attrs: [*mut bindings::attribute; 2],
    group: bindings::attribute_group,
    groups: [*const bindings::attribute_group; 2],
}

impl DeviceAttrs {
    /// Initialises `this` in place for devices of type `D`; returns the
    /// `dev_groups` value.
    ///
    /// # Safety
    ///
    /// `this` must be valid for writes and not move afterwards.
    pub(crate) unsafe fn init<D: Device>(this: *mut Self) -> *mut *const bindings::attribute_group {
        // SAFETY: `this` is valid for writes (contract); all-zero is a valid
        // value of every field, then filled in. The name is `'static`.
        unsafe {
            ptr::write_bytes(this, 0, 1);
            bindings::rmdev_sysfs_attr_init(addr_of_mut!((*this).attr.attr));
            (*this).attr.attr.name = NAME.as_char_ptr();
            (*this).attr.attr.mode = MODE;
            (*this).attr.show = Some(dev_show::<D>);
            (*this).attr.store = Some(dev_store::<D>);
            (*this).attrs[0] = addr_of_mut!((*this).attr.attr);
            (*this).group.attrs = addr_of_mut!((*this).attrs).cast();
            (*this).group.is_visible = Some(dev_visible::<D>);
            (*this).groups[0] = addr_of!((*this).group);
            addr_of_mut!((*this).groups).cast()
        }
    }
}

/// The framework state of the mdev whose `struct device` is `dev`, if it is
/// bound to us.
///
/// # Safety
///
/// `dev` must be an mdev of a driver whose devices are of type `D`, bound
/// (its drvdata set by `device::register`) for the returned lifetime.
unsafe fn dev_core<'a, D: Device>(
    dev: *mut bindings::device,
) -> Option<&'a super::device::Core<D>> {
    // SAFETY: `dev` is valid (contract).
    let vdev = unsafe { (*dev).driver_data }.cast::<bindings::vfio_device>();
    if vdev.is_null() {
        return None;
    }
    // SAFETY: Bound: the drvdata is our VFIO device (contract).
    Some(unsafe { core_of::<D>(vdev) })
}

/// The `is_visible` callback of the device attribute group.
///
/// # Safety
///
/// Only called by sysfs for the group of a bound device of ours.
unsafe extern "C" fn dev_visible<D: Device>(
    kobj: *mut bindings::kobject,
    attr: *mut bindings::attribute,
    _n: kernel::ffi::c_int,
) -> bindings::umode_t {
    // SAFETY: The group belongs to a `struct device`, whose `kobj` this is.
    let dev = unsafe { kobj.byte_sub(core::mem::offset_of!(bindings::device, kobj)) }
        .cast::<bindings::device>();
    // SAFETY: The group is added after probe set the drvdata and removed
    // before remove.
    match unsafe { dev_core::<D>(dev) } {
        // SAFETY: `attr` is our attribute.
        Some(core) if core.migrates() => unsafe { (*attr).mode },
        _ => 0,
    }
}

/// The device attribute's `show`.
///
/// # Safety
///
/// Only called by sysfs, on a bound device of ours, with a page buffer.
unsafe extern "C" fn dev_show<D: Device>(
    dev: *mut bindings::device,
    _attr: *mut bindings::device_attribute,
    buf: *mut c_char,
) -> isize {
    // SAFETY: The attribute exists only while the device is bound.
    let Some(core) = (unsafe { dev_core::<D>(dev) }) else {
        return ENODEV.to_errno() as isize;
    };
    // SAFETY: `buf` is a page (contract).
    unsafe { show(buf, core.version()) }
}

/// The device attribute's `store`.
///
/// # Safety
///
/// Only called by sysfs, on a bound device of ours, with `count` bytes at
/// `buf`.
unsafe extern "C" fn dev_store<D: Device>(
    dev: *mut bindings::device,
    _attr: *mut bindings::device_attribute,
    buf: *const c_char,
    count: usize,
) -> isize {
    // SAFETY: The attribute exists only while the device is bound.
    let Some(core) = (unsafe { dev_core::<D>(dev) }) else {
        return ENODEV.to_errno() as isize;
    };
    // SAFETY: sysfs passes `count` readable bytes.
    let written = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count) };
    store_result(core.check_written(written), count)
}

/// What the type attribute needs from the type it is on.
pub(crate) trait TypeVersion {
    /// The type's version string.
    fn version(&self) -> &str;
    /// The type-level check of a written string.
    fn check_written(&self, written: &[u8]) -> core::result::Result<(), VersionError>;
}

/// Initialises the type attribute of a type whose slot is of type `S`.
///
/// # Safety
///
/// `attr` must be valid for writes and not move while the file exists; the
/// file must only be created on the `kobj` of a `struct mdev_type` that is
/// the first field of a live `S`.
pub(crate) unsafe fn init_type_attr<S: TypeVersion>(attr: *mut bindings::bin_attribute) {
    // SAFETY: `attr` is valid for writes (contract); all-zero is valid.
    unsafe {
        ptr::write_bytes(attr, 0, 1);
        bindings::rmdev_sysfs_attr_init(addr_of_mut!((*attr).attr));
        (*attr).attr.name = NAME.as_char_ptr();
        (*attr).attr.mode = MODE;
        (*attr).read = Some(type_read::<S>);
        (*attr).write = Some(type_write::<S>);
    }
}

/// The type slot a type attribute's `kobj` belongs to.
///
/// # Safety
///
/// As in [`init_type_attr`]: `kobj` is the `kobj` of an `mdev_type` that is
/// the first field of a live `S`.
unsafe fn type_slot<'a, S>(kobj: *mut bindings::kobject) -> &'a S {
    let off = core::mem::offset_of!(bindings::mdev_type, kobj);
    // SAFETY: By the contract.
    unsafe { &*kobj.byte_sub(off).cast::<S>() }
}

/// The type attribute's `read`: the version and a newline, from `off`.
///
/// # Safety
///
/// Only called by sysfs on a file made by [`init_type_attr`], with `count`
/// writable bytes at `buf`.
unsafe extern "C" fn type_read<S: TypeVersion>(
    _file: *mut bindings::file,
    kobj: *mut bindings::kobject,
    _attr: *mut bindings::bin_attribute,
    buf: *mut c_char,
    off: bindings::loff_t,
    count: usize,
) -> isize {
    // SAFETY: The file is removed before the type goes (contract).
    let slot = unsafe { type_slot::<S>(kobj) };
    let text = slot.version().as_bytes();
    let len = text.len() + 1;
    let Ok(off) = usize::try_from(off) else {
        return EINVAL.to_errno() as isize;
    };
    if off >= len {
        return 0;
    }
    let n = count.min(len - off);
    // SAFETY: `buf` has `count >= n` writable bytes (contract).
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), n) };
    for (i, b) in out.iter_mut().enumerate() {
        *b = text.get(off + i).copied().unwrap_or(b'\n');
    }
    n as isize
}

/// The type attribute's `write`: a pure compatibility check.
///
/// # Safety
///
/// Only called by sysfs on a file made by [`init_type_attr`], with `count`
/// readable bytes at `buf`.
unsafe extern "C" fn type_write<S: TypeVersion>(
    _file: *mut bindings::file,
    kobj: *mut bindings::kobject,
    _attr: *mut bindings::bin_attribute,
    buf: *mut c_char,
    off: bindings::loff_t,
    count: usize,
) -> isize {
    if off != 0 {
        // The rest of a write longer than a page, or a second write on the
        // same open file: a version string is one short write.
        return EINVAL.to_errno() as isize;
    }
    // SAFETY: The file is removed before the type goes (contract).
    let slot = unsafe { type_slot::<S>(kobj) };
    // SAFETY: sysfs passes `count` readable bytes.
    let written = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count) };
    store_result(slot.check_written(written), count)
}
