// SPDX-License-Identifier: GPL-2.0

//! Small safe wrappers for user memory and user file descriptors.
//!
//! VFIO ioctls pass structures whose `argsz` grows with new fields: the
//! kernel copies only the part it knows (`minsz`). [`copy_in`] and
//! [`copy_out`] do that for the uAPI structures of [`super::bindings`].
//!
//! [`UserOut`] and [`UserIn`] are the data files' user buffers: they copy
//! with page faults disabled, so a copy may run under a lock, and fault the
//! buffer in separately, with no lock held. A user page fault can take as
//! long as the user likes (userfaultfd, a slow file): whoever waits for the
//! lock (a state change, a reset, the device's close) never waits for it.
//! This is the pattern of the kernel's own buffered writes
//! (`generic_perform_write`): the caller copies as far as the pages are
//! there and then faults the next ones in; the first of them is all a
//! retry needs to make progress.

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

/// A user buffer filled from its start, for a data file's `read`.
#[derive(Clone, Copy)]
pub(crate) struct UserOut {
    addr: usize,
    len: usize,
    written: usize,
}

impl UserOut {
    /// The `len` bytes at user address `addr`.
    pub(crate) fn new(addr: usize, len: usize) -> Self {
        Self {
            addr,
            len,
            written: 0,
        }
    }

    /// The bytes not yet written.
    pub(crate) fn remaining(&self) -> usize {
        self.len - self.written
    }

    /// The bytes written so far.
    pub(crate) fn written(&self) -> usize {
        self.written
    }

    /// The bytes from the next one to the end of its page (at least 1).
    fn page_left(&self) -> usize {
        page_left(self.addr.wrapping_add(self.written))
    }

    /// Copies `data` next, with page faults disabled (it never sleeps, so
    /// any lock may be held): `EFAULT` if a page is not there or `data` does
    /// not fit, and then nothing counts as written.
    pub(crate) fn write_nofault(&mut self, data: &[u8]) -> Result {
        if data.len() > self.remaining() {
            return Err(EFAULT);
        }
        if data.is_empty() {
            return Ok(());
        }
        let at = self.addr.wrapping_add(self.written);
        // SAFETY: `data` is valid for reads of `data.len()` bytes;
        // `copy_to_user_nofault` checks the user range itself (`access_ok`)
        // and only copies with page faults disabled.
        let r = unsafe {
            bindings::copy_to_user_nofault(
                at as *mut core::ffi::c_void,
                data.as_ptr().cast(),
                data.len(),
            )
        };
        if r != 0 {
            return Err(EFAULT);
        }
        self.written += data.len();
        Ok(())
    }

    /// Copies `data` next, with page faults disabled: all of it, or as far
    /// as the user's pages are there (whole pages up to the first missing
    /// one). Returns the bytes copied.
    pub(crate) fn write_present(&mut self, data: &[u8]) -> usize {
        if self.write_nofault(data).is_ok() {
            return data.len();
        }
        let mut done = 0;
        while done < data.len() {
            let c = (data.len() - done).min(self.page_left());
            if self.write_nofault(&data[done..done + c]).is_err() {
                break;
            }
            done += c;
        }
        done
    }

    /// Faults in up to the next `n` bytes for writing, without writing
    /// them, from the first on and as far as they can be. It sleeps for as
    /// long as the faults take: call it with no lock held. `EFAULT` if not
    /// even the first could be.
    pub(crate) fn fault_in(&self, n: usize) -> Result {
        let n = n.min(self.remaining());
        let at = self.addr.wrapping_add(self.written);
        // SAFETY: `fault_in_safe_writeable` checks the user range itself and
        // only faults its pages in (through the page-fault path, as a write
        // would), changing no byte of them.
        let left = unsafe { bindings::fault_in_safe_writeable(at as *const _, n) };
        if n > 0 && left == n {
            return Err(EFAULT);
        }
        Ok(())
    }
}

/// A user buffer consumed from its start, for a data file's `write`.
pub(crate) struct UserIn {
    addr: usize,
    len: usize,
    read: usize,
}

impl UserIn {
    /// The `len` bytes at user address `addr`.
    pub(crate) fn new(addr: usize, len: usize) -> Self {
        Self { addr, len, read: 0 }
    }

    /// The bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.len - self.read
    }

    /// The bytes read so far.
    pub(crate) fn read(&self) -> usize {
        self.read
    }

    /// The bytes from the next one to the end of its page (at least 1).
    fn page_left(&self) -> usize {
        page_left(self.addr.wrapping_add(self.read))
    }

    /// Fills `dst` with the next bytes, with page faults disabled (it never
    /// sleeps, so any lock may be held): `EFAULT` if a page is not there or
    /// fewer bytes remain, and then nothing counts as read (`dst` may have
    /// changed).
    pub(crate) fn read_nofault(&mut self, dst: &mut [u8]) -> Result {
        if dst.len() > self.remaining() {
            return Err(EFAULT);
        }
        if dst.is_empty() {
            return Ok(());
        }
        let at = self.addr.wrapping_add(self.read);
        // SAFETY: `dst` is valid for writes of `dst.len()` bytes;
        // `copy_from_user_nofault` checks the user range itself and only
        // copies with page faults disabled.
        let r = unsafe {
            bindings::copy_from_user_nofault(
                dst.as_mut_ptr().cast(),
                at as *const core::ffi::c_void,
                dst.len(),
            )
        };
        if r != 0 {
            return Err(EFAULT);
        }
        self.read += dst.len();
        Ok(())
    }

    /// Fills `dst` with the next bytes, with page faults disabled: all of
    /// it, or as far as the user's pages are there (whole pages up to the
    /// first missing one). Returns the bytes read into `dst`'s start.
    pub(crate) fn read_present(&mut self, dst: &mut [u8]) -> usize {
        if self.read_nofault(dst).is_ok() {
            return dst.len();
        }
        let mut done = 0;
        while done < dst.len() {
            let c = (dst.len() - done).min(self.page_left());
            if self.read_nofault(&mut dst[done..done + c]).is_err() {
                break;
            }
            done += c;
        }
        done
    }

    /// Faults in up to the next `n` bytes for reading, from the first on and
    /// as far as they can be. It sleeps for as long as the faults take:
    /// call it with no lock held. `EFAULT` if not even the first could be.
    pub(crate) fn fault_in(&self, n: usize) -> Result {
        let n = n.min(self.remaining());
        let at = self.addr.wrapping_add(self.read);
        // SAFETY: `fault_in_readable` checks the user range itself and only
        // reads user memory.
        let left = unsafe { bindings::fault_in_readable(at as *const _, n) };
        if n > 0 && left == n {
            return Err(EFAULT);
        }
        Ok(())
    }
}

/// The bytes from user address `addr` to the end of its page.
fn page_left(addr: usize) -> usize {
    bindings::RMDEV_PAGE_SIZE - addr % bindings::RMDEV_PAGE_SIZE
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
