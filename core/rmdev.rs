// SPDX-License-Identifier: GPL-2.0

//! rmdev: a Rust framework for migratable mediated devices.
//!
//! A vendor module mounts this file as a module of its own crate
//! (`#[path = ".../core/rmdev.rs"] pub mod rmdev;`, see `core/rmdev.mk` and
//! `Documentation/vendor-guide.rst`), implements [`mdev::Driver`] for its
//! parent and [`device::Device`] for its mdevs, and gets:
//!
//! - the mdev sysfs tree mdevctl and libvirt use ([`mdev`]),
//! - a VFIO device per mdev, with region and interrupt plumbing and the
//!   request channel that asks a user to release a device being removed
//!   ([`device`]),
//! - its user's memory, read, written and pinned by IOVA, unpinned by the
//!   framework when the user unmaps it, and a dirty-page log for migration
//!   ([`dma`]),
//! - VFIO migration v2: the state machine, the data files and
//!   `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` ([`migration`]),
//! - a PCI driver for parents on real functions, with mapped BARs that are
//!   revoked when the function is unbound ([`pci`]),
//! - an emulated PCI configuration space for vfio-pci devices
//!   ([`pci_config`], served by [`device`] and migrated in every stream),
//! - a `migration_version` attribute on every type and mdev that migrates
//!   (`sysfs/migration_version.rs`), checked with the same rule as the
//!   stream header.
//!
//! The kernel-independent logic (the state machine, the stream envelope, the
//! `migration_version` rules) lives in `core/logic/`, a `no_std` crate that
//! `cargo test` checks on the host; the same source files are compiled here
//! with `#[path]`, so the kernel runs exactly the code the host tests cover.
//!
//! Raw C bindings stay in the private `bindings` module; everything a vendor
//! touches is a safe abstraction.

/// A lock class name that says which vendor module the lock is in, so a
/// lockdep report names it: `<module>:<what>` (`RMDEV_VENDOR` is the
/// module's name, set by `core/rmdev.mk`).
macro_rules! lock_name {
    ($what:literal) => {
        kernel::c_str!(concat!(env!("RMDEV_VENDOR"), ":", $what))
    };
}

/// `pr_warn!` for messages a user can trigger at will (a refused stream, a
/// misbehaving vendor): at most a burst of 10 every 5 s per module, the
/// kernel's default rate limit.
macro_rules! warn_ratelimited {
    ($($arg:tt)*) => {
        if super::warn_allowed() {
            kernel::pr_warn!($($arg)*);
        }
    };
}

mod bindings;
#[path = "logic/src/crc32c.rs"]
pub mod crc32c;
pub mod device;
pub mod dma;
#[path = "logic/src/envelope.rs"]
pub mod envelope;
#[path = "logic/src/fsm.rs"]
pub mod fsm;
pub mod irq;
pub mod mdev;
pub mod migration;
pub mod pci;
#[path = "logic/src/pci_config.rs"]
pub mod pci_config;
mod stream;
mod sync;
#[path = "../sysfs/migration_version.rs"]
mod sysfs;
mod user;
#[path = "logic/src/version.rs"]
pub mod version;

/// Whether a rate-limited warning may be printed now.
fn warn_allowed() -> bool {
    // SAFETY: No precondition: the rate limit state is the helper's own.
    unsafe { bindings::rmdev_warn_ratelimit() }
}
