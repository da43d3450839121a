// SPDX-License-Identifier: GPL-2.0

//! `rmdev`: see `Documentation/rmdev.rst` or `rmdev --help`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(rmdev::cli::run(std::env::args_os()))
}
