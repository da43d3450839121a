// SPDX-License-Identifier: GPL-2.0

//! rmdev: a Rust framework for migratable mediated devices.
//!
//! This is the framework module. Its kernel-independent logic (the migration
//! state machine, the stream envelope, the `migration_version` rules) lives in
//! `core/logic/`, a `no_std` crate that `cargo test` checks on the host; the
//! same source files are compiled into this module with `#[path]`, so the
//! kernel runs exactly the code the host tests cover.

use kernel::prelude::*;

#[path = "logic/src/crc32c.rs"]
pub mod crc32c;
#[path = "logic/src/envelope.rs"]
pub mod envelope;
#[path = "logic/src/fsm.rs"]
pub mod fsm;
#[path = "logic/src/version.rs"]
pub mod version;

module! {
    type: Rmdev,
    name: "rmdev",
    author: "rmdev developers",
    description: "Rust framework for migratable mediated devices",
    license: "GPL",
}

struct Rmdev;

impl kernel::Module for Rmdev {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        pr_info!(
            "migration framework loaded (stream envelope v{})\n",
            envelope::ENVELOPE_VERSION
        );
        Ok(Rmdev)
    }
}
