// SPDX-License-Identifier: GPL-2.0

//! rmdev's kernel-independent logic.
//!
//! Everything here is `no_std`, allocation-free and panic-free on every input,
//! so the same source files are compiled into the kernel module (which includes
//! them with `#[path]`, see `core/rmdev.rs`) and tested exhaustively on the host
//! with `cargo test`:
//!
//! - [`fsm`]: the VFIO migration v2 state machine: states, flag sets, the
//!   next-step function (identical to Linux 6.12's `vfio_mig_get_next_state()`),
//!   typed arcs and the multi-step transition driver.
//! - [`envelope`]: the framework header and records around every migration
//!   stream, with an incremental parser and the matching encoder.
//! - [`version`]: the default `migration_version` format, the input rules for
//!   strings written by userspace, and the compatibility rule shared by sysfs
//!   and the stream.
//! - [`crc32c`]: the checksum the envelope uses.
//! - [`pci_config`]: an emulated PCI configuration space (identity, BAR
//!   sizing, command and status, capabilities) for vfio-pci mdevs.
//!
//! Modules refer to each other through `super::` so that they work both as this
//! crate and as modules of the kernel crate.

#![no_std]

pub mod crc32c;
pub mod envelope;
pub mod fsm;
pub mod pci_config;
pub mod version;
