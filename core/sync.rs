// SPDX-License-Identifier: GPL-2.0

//! A spinlock that disables local interrupts while it is held
//! (`spin_lock_irqsave()`), for state that hardware interrupt handlers and
//! timers reach too.
//!
//! C header: [`include/linux/spinlock.h`](srctree/include/linux/spinlock.h)
//!
//! Linux 6.12's Rust `SpinLock` takes `spin_lock()`, which a hard interrupt
//! handler must not share with code that runs with interrupts enabled, and
//! has no `irqsave` variant yet; this is one more backend for the kernel's
//! own [`Lock`] type, so guards, `CondVar` and lockdep work as for the
//! others.

use kernel::ffi::{c_char, c_ulong};
use kernel::sync::lock::{Backend, Lock};

use super::bindings;

/// A lock whose holder runs with local interrupts disabled.
pub(crate) type IrqSafeSpinLock<T> = Lock<T, IrqSafeBackend>;

/// The `spin_lock_irqsave()` backend of [`IrqSafeSpinLock`].
pub(crate) struct IrqSafeBackend;

// SAFETY: `lock` and `unlock` take and release the spinlock; the flags
// `lock` returns are what `unlock` restores, so the interrupt state is the
// caller's again after the guard goes.
unsafe impl Backend for IrqSafeBackend {
    type State = kernel::bindings::spinlock_t;
    type GuardState = c_ulong;

    unsafe fn init(
        ptr: *mut Self::State,
        name: *const c_char,
        key: *mut kernel::bindings::lock_class_key,
    ) {
        // SAFETY: By the trait's contract, `ptr` is valid for writes and
        // `name` and `key` live forever.
        unsafe { kernel::bindings::__spin_lock_init(ptr, name, key) }
    }

    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: By the trait's contract the lock was initialised; the
        // framework's bindings name the same C `spinlock_t`.
        unsafe { bindings::rmdev_spin_lock_irqsave(ptr.cast()) }
    }

    unsafe fn unlock(ptr: *mut Self::State, flags: &Self::GuardState) {
        // SAFETY: By the trait's contract the caller holds the lock, taken
        // by `lock`, which returned `flags`.
        unsafe { bindings::rmdev_spin_unlock_irqrestore(ptr.cast(), *flags) }
    }
}
