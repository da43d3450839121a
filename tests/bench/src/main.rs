// SPDX-License-Identifier: GPL-2.0
//! `rmdev-bench`: rmdev's benchmarks (`make bench`, `Documentation/performance.rst`).
//!
//! The measuring commands run in the lab VM, booted with the release kernel,
//! and print one JSON line per figure; `tests/bench/run` calls them with the
//! references (memcpy, the C `mtty` sample, QEMU's RAM migration) in the
//! same boot. `report` runs on the host: it reads those lines, prints the
//! table of ratios with their goals (and writes it as JSON), and exits 1 if a
//! goal is missed, naming it.

mod measure;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "rmdev's benchmarks: measurements (in the lab VM) and the report")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The stream checksum, CRC-32C, over BYTES: the project's table code
    /// (what the kernel module runs) and the SSE4.2 `crc32` instruction
    /// (what the kernel's `crc32c()` uses on x86), same value required.
    Crc {
        #[arg(long, default_value_t = 64 << 20)]
        bytes: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Save SRC (RUNNING, STOP, STOP_COPY, read to the end) and load the
    /// stream into DST (RESUMING, write, STOP), CHUNK bytes per read/write.
    SaveLoad {
        src: String,
        dst: String,
        #[arg(long, default_value_t = 1 << 20)]
        chunk: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// One SET round trip RUNNING -> STOP -> RUNNING, median of N for
    /// each device, one round of each device in turn.
    SetRoundtrip {
        /// LABEL=UUID of each device.
        #[arg(required = true)]
        devices: Vec<String>,
        #[arg(long, default_value_t = 2000)]
        n: usize,
    },
    /// mdev create + remove through sysfs, median of N for each type, one
    /// round of each type in turn.
    CreateRemove {
        /// LABEL=DIR of each type, DIR its directory in sysfs.
        #[arg(required = true)]
        types: Vec<String>,
        #[arg(long, default_value_t = 500)]
        n: usize,
    },
    /// The bytes of STOP_COPY after pre-copy converged, with the sample's
    /// engine dirtying PAGES pages per round (`precopy_dirty_pages`).
    Stopcopy {
        uuid: String,
        #[arg(long)]
        pages: usize,
    },
    /// Kernel memory (slab + vmalloc) an open save session holds.
    SessionMemory {
        uuid: String,
        #[arg(long, default_value_t = 9)]
        reps: usize,
    },
    /// `rmdev check` of a type against itself, end to end (a process each).
    RmdevCheck {
        rmdev: PathBuf,
        /// `PARENT/TYPE`, the source and the target.
        target: String,
        #[arg(long, default_value_t = 50)]
        n: usize,
    },
    /// `rmdev match --offline` of 1000 manifest entries against 100 local
    /// types (a generated sysfs tree under --root).
    RmdevMatch {
        rmdev: PathBuf,
        #[arg(long, default_value_t = 5)]
        n: usize,
    },
    /// Host side: the table (and JSON) from the measurements' lines.
    Report {
        results: PathBuf,
        /// Also write the table as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crc { bytes, reps } => measure::crc(bytes, reps),
        Command::SaveLoad {
            src,
            dst,
            chunk,
            reps,
        } => measure::save_load(&src, &dst, chunk, reps),
        Command::SetRoundtrip { devices, n } => measure::set_roundtrip(&devices, n),
        Command::CreateRemove { types, n } => measure::create_remove(&types, n),
        Command::Stopcopy { uuid, pages } => measure::stopcopy(&uuid, pages),
        Command::SessionMemory { uuid, reps } => measure::session_memory(&uuid, reps),
        Command::RmdevCheck { rmdev, target, n } => measure::rmdev_check(&rmdev, &target, n),
        Command::RmdevMatch { rmdev, n } => measure::rmdev_match(&rmdev, n),
        Command::Report { results, json } => {
            return match report::report(&results, json.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("rmdev-bench: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmdev-bench: {e}");
            ExitCode::from(2)
        }
    }
}
