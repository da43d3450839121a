// SPDX-License-Identifier: GPL-2.0

//! Small safe wrappers for user memory and user file descriptors.
//!
//! VFIO ioctls pass structures whose `argsz` grows with new fields: the
//! kernel copies only the part it knows (`minsz`). [`copy_in`] and
//! [`copy_out`] do that for the uAPI structures of [`super::bindings`].

use core::mem::size_of;

use kernel::prelude::*;
use kernel::types::{AsBytes, FromBytes};
use kernel::uaccess::UserSlice;

use super::bindings;

/// Reads the first `len` bytes of a `T` from user address `arg`; the rest of
/// the value is zero.
pub(crate) fn copy_in<T: FromBytes + AsBytes + Default>(arg: usize, len: usize) -> Result<T> {
    let mut value = T::default();
    let len = len.min(size_of::<T>());
    // SAFETY: `T: FromBytes + AsBytes` has no padding and any byte pattern is
    // a valid `T`, so its bytes may be viewed and overwritten as a slice.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut((&mut value as *mut T).cast::<u8>(), size_of::<T>())
    };
    UserSlice::new(arg, len)
        .reader()
        .read_slice(&mut bytes[..len])?;
    Ok(value)
}

/// Writes the first `len` bytes of `value` to user address `arg`.
pub(crate) fn copy_out<T: AsBytes>(arg: usize, value: &T, len: usize) -> Result {
    let len = len.min(size_of::<T>());
    // SAFETY: `T: AsBytes` has no uninitialised bytes.
    let bytes =
        unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
    UserSlice::new(arg, len).writer().write_slice(&bytes[..len])
}

/// A reference to an eventfd the user handed over.
///
/// # Invariants
///
/// `ctx` is a valid eventfd context holding a reference this value owns.
pub(crate) struct EventFd {
    ctx: *mut bindings::eventfd_ctx,
}

// SAFETY: An eventfd context may be signalled and released from any thread.
unsafe impl Send for EventFd {}
// SAFETY: Signalling through `&EventFd` is thread-safe in the C API.
unsafe impl Sync for EventFd {}

impl EventFd {
    /// Takes a reference to the eventfd behind the caller's descriptor `fd`.
    pub(crate) fn get(fd: i32) -> Result<Self> {
        // SAFETY: Any descriptor number is accepted; errors come back as
        // `ERR_PTR`.
        let ctx = kernel::error::from_err_ptr(unsafe { bindings::eventfd_ctx_fdget(fd) })?;
        // INVARIANT: `eventfd_ctx_fdget` returned a referenced context.
        Ok(Self { ctx })
    }

    /// Signals the eventfd (adds 1 to its counter).
    pub(crate) fn signal(&self) {
        // SAFETY: `ctx` is valid (type invariant).
        unsafe { bindings::rmdev_eventfd_signal(self.ctx) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: We own one reference (type invariant).
        unsafe { bindings::eventfd_ctx_put(self.ctx) };
    }
}
