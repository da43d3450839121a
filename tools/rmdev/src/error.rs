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
    /// A migration, save or load that stopped (failed or cancelled) after
    /// it began: what stopped it and how each device was left.
    #[error("{0}")]
    Migration(Box<Failure>),
    /// The libvirt hook could not provide a target mdev it planned to use.
    #[error("{0}")]
    Libvirt(String),
}

/// The operation a [`Failure`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A migration between two local mdevs.
    Migrate,
    /// A save into a file.
    Save,
    /// A load from a file.
    Load,
}

impl Operation {
    /// The name used in messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Migrate => "migration",
            Operation::Save => "save",
            Operation::Load => "load",
        }
    }
}

/// Why an operation stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A call failed: the step, the errno when the kernel (or the file
    /// system) gave one, and the error in words.
    Step {
        /// What was being done (`source to STOP_COPY`).
        step: String,
        /// The errno, if a system call failed.
        errno: Option<i32>,
        /// The error in words.
        detail: String,
    },
    /// A device broke the uAPI's rules (no data FD where one is due, EOF in
    /// pre-copy, `ENOMSG` in stop-copy, a second data FD).
    Protocol(String),
    /// The operation was cancelled (see [`crate::migrate::Cancel`]); why.
    Cancelled(&'static str),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Step { step, detail, .. } => write!(f, "{step}: {detail}"),
            Cause::Protocol(what) => f.write_str(what),
            Cause::Cancelled(why) => f.write_str(why),
        }
    }
}

/// Which device a [`Left`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The device whose state is saved.
    Source,
    /// The device the state is loaded into.
    Target,
}

/// How a device was left after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Left {
    /// Which device.
    pub role: Role,
    /// Whether it was reset to get it back: `None` when no reset was
    /// needed, `Some(false)` when the reset failed.
    pub reset: Option<bool>,
    /// The state read back afterwards (a `vfio::state` value), or the
    /// errno of that read.
    pub state: std::result::Result<u32, i32>,
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            Role::Source => f.write_str("source")?,
            Role::Target => f.write_str("target")?,
        }
        // A source is put back to RUNNING, by a reset only if the SET
        // fails: what counts is the state it ended in. A target is always
        // reset, and says so.
        match (self.role, self.reset) {
            (Role::Target, Some(true)) => f.write_str(" reset,")?,
            (_, Some(false)) => f.write_str(" reset failed,")?,
            _ => {}
        }
        match self.state {
            Ok(s) => write!(f, " {}", crate::vfio::state_name(s)),
            Err(errno) => write!(
                f,
                " state unknown ({})",
                describe(&io::Error::from_raw_os_error(errno))
            ),
        }
    }
}

/// A migration, save or load that stopped: the operation, why, and how
/// each device was left (a device the operation had not touched yet is
/// `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The operation.
    pub op: Operation,
    /// What stopped it.
    pub cause: Cause,
    /// How the source was left.
    pub source: Option<Left>,
    /// How the target was left.
    pub target: Option<Left>,
}

impl Failure {
    /// The errno of the failed call, if one failed.
    pub fn errno(&self) -> Option<i32> {
        match &self.cause {
            Cause::Step { errno, .. } => *errno,
            _ => None,
        }
    }

    /// Whether the operation was cancelled rather than failed.
    pub fn cancelled(&self) -> bool {
        matches!(self.cause, Cause::Cancelled(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.op.name(), self.cause)?;
        let left: Vec<String> = [self.source, self.target]
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        if !left.is_empty() {
            write!(f, "; {}", left.join(", "))?;
        }
        if self.op == Operation::Save {
            f.write_str(if left.is_empty() { "; " } else { ", " })?;
            f.write_str("no file written")?;
        }
        Ok(())
    }
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
            Error::Migration(f) if f.cancelled() => EXIT_INTERRUPTED,
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

    #[test]
    fn failures_say_how_devices_were_left() {
        let src = Left {
            role: Role::Source,
            reset: None,
            state: Ok(crate::vfio::state::RUNNING),
        };
        let dst = Left {
            role: Role::Target,
            reset: Some(true),
            state: Ok(crate::vfio::state::RUNNING),
        };
        let f = Failure {
            op: Operation::Migrate,
            cause: Cause::Step {
                step: "source to PRE_COPY".into(),
                errno: Some(libc::EIO),
                detail: describe(&io::Error::from_raw_os_error(libc::EIO)),
            },
            source: Some(src),
            target: Some(dst),
        };
        assert_eq!(
            f.to_string(),
            "migration failed: source to PRE_COPY: EIO (Input/output error); \
             source RUNNING, target reset, RUNNING"
        );
        assert_eq!(f.errno(), Some(libc::EIO));
        assert_eq!(Error::Migration(Box::new(f)).exit_status(), EXIT_ERROR);
        let cancelled = Failure {
            op: Operation::Save,
            cause: Cause::Cancelled("interrupted by a signal"),
            source: Some(src),
            target: None,
        };
        assert_eq!(
            cancelled.to_string(),
            "save failed: interrupted by a signal; source RUNNING, no file written"
        );
        assert_eq!(
            Error::Migration(Box::new(cancelled)).exit_status(),
            EXIT_INTERRUPTED
        );
        let lost = Left {
            role: Role::Target,
            reset: Some(false),
            state: Err(libc::ENODEV),
        };
        assert_eq!(
            lost.to_string(),
            "target reset failed, state unknown (ENODEV (No such device))"
        );
    }
}
