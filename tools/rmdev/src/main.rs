// SPDX-License-Identifier: GPL-2.0

//! `rmdev`: see `Documentation/rmdev.rst` or `rmdev --help`.

fn main() -> std::process::ExitCode {
    // Like other Unix tools, die quietly on a closed pipe (`rmdev list |
    // head`) instead of failing a write and panicking in `println!`.
    // SAFETY: Restoring the default action runs no code of ours, and no
    // other thread exists yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    std::process::ExitCode::from(rmdev::cli::run(std::env::args_os()))
}
