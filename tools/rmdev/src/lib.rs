// SPDX-License-Identifier: GPL-2.0

//! rmdev, the operator's tool for mdev migration, as a library: the binary
//! (`main.rs`) is a thin wrapper around [`cli::run`], and the in-VM test
//! program (`tests/vm/uapi`) uses [`vfio`], the project's one VFIO client.
//!
//! Layers, each using only those above it:
//!
//! - [`error`]: errors and the exit statuses;
//! - [`wholefile`]: files replaced whole (temporary file, rename);
//! - [`sysfs`]: the mdev sysfs model under a root directory;
//! - [`vfio`]: device FDs, migration features and data FDs;
//! - [`compat`]: compatibility checks (write check, offline rule);
//! - [`manifest`]: the JSON manifest exported on one host, matched on
//!   another;
//! - [`migrate`]: migrations, saves and loads through the uAPI;
//! - [`libvirt`]: the metadata annotation, the qemu hook (the check in
//!   libvirt's migration and restore path) and its installation;
//! - [`cli`]: the commands.

pub mod cli;
pub mod compat;
pub mod error;
pub mod libvirt;
pub mod manifest;
pub mod migrate;
pub mod sysfs;
pub mod vfio;
pub mod wholefile;
