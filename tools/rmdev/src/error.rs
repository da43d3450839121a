// SPDX-License-Identifier: GPL-2.0

//! The tool's errors and its exit statuses.
//!
//! Exit statuses are part of the interface scripts rely on:
//!
//! - [`EXIT_OK`] (0): compatible, or the operation completed;
//! - [`EXIT_INCOMPATIBLE`] (1): the target refused the source (a check, a
//!   match that found no target, or a migration refused before it began);
//! - [`EXIT_ERROR`] (2): a usage or system error (bad arguments, missing
//!   devices or attributes, permissions, I/O, a failed migration);
//! - [`EXIT_INTERRUPTED`] (130): a migration, save or load stopped by
//!   SIGINT, SIGTERM or SIGHUP (devices put back, no file written).

use std::io;
use std::path::Path;

/// Compatible, or done.
pub const EXIT_OK: u8 = 0;
/// Incompatible.
pub const EXIT_INCOMPATIBLE: u8 = 1;
/// Usage or system error.
pub const EXIT_ERROR: u8 = 2;
/// Interrupted by a signal (128 + SIGINT, as shells report a Ctrl-C).
pub const EXIT_INTERRUPTED: u8 = 130;

/// An error the tool reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A named parent, type, mdev or manifest entry does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The device or type has no `migration_version`.
    #[error("{0}")]
    NotMigratable(String),
    /// Not allowed: the message says what needs which privilege, and what
    /// works without it.
    #[error("{0}")]
    Permission(String),
    /// A system call on a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// A manifest that cannot be used.
    #[error("manifest {path}: {reason}")]
    Manifest {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A saved migration file that cannot be used.
    #[error("{0}")]
    BadStream(String),
    /// The target refused the source: incompatible.
    #[error("{0}")]
    Incompatible(String),
    /// A migration, save or load refused by its compatibility check before
    /// anything changed; the check's verdict (for JSON output).
    #[error("{message}")]
    Refused {
        /// What was refused and why.
        message: String,
        /// The verdict, as `check` prints it.
        verdict: serde_json::Value,
    },
    /// A migration step failed; the message says what state each device
    /// was left in.
    #[error("{0}")]
    Migration(String),
}

/// The tool's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// The exit status this error gives.
    pub fn exit_status(&self) -> u8 {
        match self {
            Error::Incompatible(_) | Error::Refused { .. } => EXIT_INCOMPATIBLE,
            _ => EXIT_ERROR,
        }
    }
}

/// The symbolic name of an errno (`EINVAL`), for messages and JSON.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOMSG => "ENOMSG",
        libc::EPROTO => "EPROTO",
        libc::EBADMSG => "EBADMSG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EUSERS => "EUSERS",
        libc::ENOEXEC => "ENOEXEC",
        libc::E2BIG => "E2BIG",
        libc::ENXIO => "ENXIO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESTALE => "ESTALE",
        _ => "errno",
    }
}

/// `"EINVAL (Invalid argument)"` for an OS error, its text otherwise.
pub fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let text = io::Error::from_raw_os_error(n).to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            format!("{} ({text})", errno_name(n))
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn describes_errnos() {
        assert_eq!(
            describe(&io::Error::from_raw_os_error(22)),
            "EINVAL (Invalid argument)"
        );
        assert_eq!(describe(&io::Error::other("x")), "x");
        assert_eq!(Error::Incompatible("x".into()).exit_status(), 1);
        assert_eq!(Error::Usage("x".into()).exit_status(), 2);
    }
}
