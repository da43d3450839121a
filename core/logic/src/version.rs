// SPDX-License-Identifier: GPL-2.0

//! `migration_version` strings: the input rules, the default format and the
//! default compatibility rule.
//!
//! A version string says which device states a device can produce and load.
//! Userspace reads it on the source and writes it to the target's
//! `migration_version` attribute; the write succeeds only when the target can
//! load the source's state. The stream header carries the source's string,
//! and the target applies the *same* [`VersionRule`] to it, so the sysfs check
//! and the in-stream check can never disagree.
//!
//! # Default format
//!
//! ```text
//! <vendor>:<type>:<major>.<minor>[:<key>=<value>]...
//! ```
//!
//! - `vendor` and `type`: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
//! - `major`, `minor`: the vendor's data format version, decimal 0 to 65535,
//!   without sign or leading zeros.
//! - up to 8 fields `key=value` (instance settings a device folds in): `key`
//!   1 to 32 characters from `a-z 0-9 _ -`, `value` 1 to 64 characters from
//!   `A-Z a-z 0-9 . _ - + ,`; each key at most once.
//! - at most [`MAX_LEN`] bytes in all.
//!
//! Example: `rmdev_sample:rmdev_sample-64k:1.2:pages=16`.
//!
//! # Default rule
//!
//! A target accepts a source when the vendor and the type are the same, the
//! major versions are equal, the target's minor version is at least the
//! source's (a newer minor reads every older minor of the same major), and
//! both carry the same fields with the same values (in any order).

use core::fmt;

/// The longest version string, in bytes (without the trailing newline).
pub const MAX_LEN: usize = 255;
/// The most `key=value` fields in a default-format string.
pub const MAX_FIELDS: usize = 8;
const MAX_NAME_LEN: usize = 64;
const MAX_KEY_LEN: usize = 32;
const MAX_VALUE_LEN: usize = 64;

/// Why a string written by userspace is not a version string at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputError {
    /// Nothing, or only a newline.
    Empty,
    /// Longer than [`MAX_LEN`] bytes.
    TooLong,
    /// Contains a NUL byte.
    Nul,
    /// Contains a byte outside printable ASCII (0x20 to 0x7e).
    NonPrintable,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputError::Empty => "empty version string",
            InputError::TooLong => "version string longer than 255 bytes",
            InputError::Nul => "version string contains a NUL byte",
            InputError::NonPrintable => "version string contains a non-printable byte",
        })
    }
}

/// The version string in `input`, as written by userspace: one trailing
/// newline is tolerated; empty, over-long, NUL-containing or non-printable
/// input is refused. Looks at no more than [`MAX_LEN`] + 1 bytes and allocates
/// nothing.
pub fn parse_input(input: &[u8]) -> Result<&str, InputError> {
    let s = match input.split_last() {
        Some((b'\n', rest)) => rest,
        _ => input,
    };
    if s.is_empty() {
        return Err(InputError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(InputError::TooLong);
    }
    if s.contains(&0) {
        return Err(InputError::Nul);
    }
    if !s.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(InputError::NonPrintable);
    }
    core::str::from_utf8(s).map_err(|_| InputError::NonPrintable)
}

/// Why a string is not in the default format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The input rules of [`parse_input`] are broken.
    Input(InputError),
    /// The vendor is empty, too long or has a character outside `A-Z a-z 0-9 . _ -`.
    BadVendor,
    /// The type is empty, too long or has a character outside `A-Z a-z 0-9 . _ -`.
    BadType,
    /// The data format version is not `<major>.<minor>`, decimal 0 to 65535.
    BadDataVersion,
    /// A field is not `key=value` with the allowed characters and lengths.
    BadField,
    /// A field key appears twice.
    DuplicateField,
    /// More than [`MAX_FIELDS`] fields.
    TooManyFields,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Input(e) => e.fmt(f),
            FormatError::BadVendor => f.write_str("bad vendor name"),
            FormatError::BadType => f.write_str("bad type name"),
            FormatError::BadDataVersion => {
                f.write_str("bad data format version (want MAJOR.MINOR)")
            }
            FormatError::BadField => f.write_str("bad field (want key=value)"),
            FormatError::DuplicateField => f.write_str("duplicate field"),
            FormatError::TooManyFields => f.write_str("more than 8 fields"),
        }
    }
}

/// Why a target cannot load a source's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionError {
    /// The source's string is not a version string this rule understands.
    Malformed(FormatError),
    /// Another vendor's device.
    WrongVendor,
    /// Another type of the same vendor.
    WrongType,
    /// The data format major versions differ.
    MajorMismatch,
    /// The source's data format minor version is newer than the target's.
    MinorTooNew,
    /// The fields (instance settings) differ.
    FieldMismatch,
    /// A vendor rule refused, with this errno (positive).
    Vendor(i32),
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionError::Malformed(e) => write!(f, "malformed version string: {e}"),
            VersionError::WrongVendor => f.write_str("another vendor's device"),
            VersionError::WrongType => f.write_str("another mdev type"),
            VersionError::MajorMismatch => {
                f.write_str("incompatible data format (major version differs)")
            }
            VersionError::MinorTooNew => f.write_str(
                "incompatible data format (source minor version is newer than the target's)",
            ),
            VersionError::FieldMismatch => f.write_str("instance settings differ"),
            VersionError::Vendor(e) => write!(f, "refused by the vendor's rule (errno {e})"),
        }
    }
}

/// A parsed default-format version string. Borrows the string it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version<'a> {
    /// The vendor.
    pub vendor: &'a str,
    /// The mdev type.
    pub mdev_type: &'a str,
    /// The data format major version.
    pub major: u16,
    /// The data format minor version.
    pub minor: u16,
    fields: &'a str,
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(is_name_char)
}

fn parse_decimal_u16(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 5 || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    let mut v: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    u16::try_from(v).ok()
}

fn split_field(f: &str) -> Option<(&str, &str)> {
    let (k, v) = f.split_once('=')?;
    let key_ok = !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    let value_ok = !v.is_empty()
        && v.len() <= MAX_VALUE_LEN
        && v.bytes().all(|b| is_name_char(b) || b == b'+' || b == b',');
    (key_ok && value_ok).then_some((k, v))
}

impl<'a> Version<'a> {
    /// Parses a default-format string (already through the input rules, or
    /// checked here).
    pub fn parse(s: &'a str) -> Result<Version<'a>, FormatError> {
        parse_input(s.as_bytes()).map_err(FormatError::Input)?;
        if s.ends_with('\n') {
            return Err(FormatError::Input(InputError::NonPrintable));
        }
        let mut parts = s.splitn(4, ':');
        let vendor = parts.next().unwrap_or("");
        let mdev_type = parts.next().ok_or(FormatError::BadType)?;
        let data = parts.next().ok_or(FormatError::BadDataVersion)?;
        let fields = parts.next().unwrap_or("");
        if !valid_name(vendor) {
            return Err(FormatError::BadVendor);
        }
        if !valid_name(mdev_type) {
            return Err(FormatError::BadType);
        }
        let (maj, min) = data.split_once('.').ok_or(FormatError::BadDataVersion)?;
        let major = parse_decimal_u16(maj).ok_or(FormatError::BadDataVersion)?;
        let minor = parse_decimal_u16(min).ok_or(FormatError::BadDataVersion)?;
        let v = Version {
            vendor,
            mdev_type,
            major,
            minor,
            fields,
        };
        if s.len() > vendor.len() + mdev_type.len() + data.len() + 2 && fields.is_empty() {
            // A trailing ':' with nothing after it.
            return Err(FormatError::BadField);
        }
        let mut n = 0;
        for (i, f) in v.raw_fields().enumerate() {
            let (k, _) = split_field(f).ok_or(FormatError::BadField)?;
            if v.raw_fields()
                .take(i)
                .any(|g| split_field(g).map(|(gk, _)| gk) == Some(k))
            {
                return Err(FormatError::DuplicateField);
            }
            n += 1;
            if n > MAX_FIELDS {
                return Err(FormatError::TooManyFields);
            }
        }
        Ok(v)
    }

    fn raw_fields(&self) -> impl Iterator<Item = &'a str> {
        let fields = self.fields;
        fields.split(':').filter(move |_| !fields.is_empty())
    }

    /// The `key=value` fields, in the order written.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.raw_fields().filter_map(split_field)
    }

    /// The value of field `key`.
    pub fn field(&self, key: &str) -> Option<&'a str> {
        self.fields().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Whether a device with this version (the target) can load the state of
    /// a device with `source`'s version: the default rule.
    pub fn accepts(&self, source: &Version<'_>) -> Result<(), VersionError> {
        if self.vendor != source.vendor {
            return Err(VersionError::WrongVendor);
        }
        if self.mdev_type != source.mdev_type {
            return Err(VersionError::WrongType);
        }
        if self.major != source.major {
            return Err(VersionError::MajorMismatch);
        }
        if self.minor < source.minor {
            return Err(VersionError::MinorTooNew);
        }
        // Keys are unique in both, so equal counts plus "every source field
        // is in the target" means equal sets.
        if self.fields().count() != source.fields().count()
            || !source.fields().all(|(k, v)| self.field(k) == Some(v))
        {
            return Err(VersionError::FieldMismatch);
        }
        Ok(())
    }
}

/// Writes a default-format version string into a fixed buffer.
#[derive(Clone)]
pub struct VersionBuf {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl VersionBuf {
    /// `vendor:mdev_type:major.minor`, checked against the default format.
    pub fn new(vendor: &str, mdev_type: &str, major: u16, minor: u16) -> Result<Self, FormatError> {
        let mut v = VersionBuf {
            buf: [0; MAX_LEN],
            len: 0,
        };
        if !valid_name(vendor) {
            return Err(FormatError::BadVendor);
        }
        if !valid_name(mdev_type) {
            return Err(FormatError::BadType);
        }
        use fmt::Write;
        write!(v, "{vendor}:{mdev_type}:{major}.{minor}")
            .map_err(|_| FormatError::Input(InputError::TooLong))?;
        Ok(v)
    }

    /// Appends a `key=value` field.
    pub fn field(mut self, key: &str, value: &str) -> Result<Self, FormatError> {
        use fmt::Write;
        let before = self.len;
        write!(self, ":{key}={value}").map_err(|_| FormatError::Input(InputError::TooLong))?;
        if let Err(e) = Version::parse(self.as_str()) {
            self.len = before;
            return Err(e);
        }
        Ok(self)
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written (checked by `write_str`).
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for VersionBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        if end > MAX_LEN || !s.is_ascii() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The compatibility rule of a device: decides whether the device, whose own
/// version string is `target`, can load state from a device whose version
/// string is `source`. The sysfs `migration_version` write and the stream
/// header check both call it.
pub trait VersionRule {
    /// `Ok(())` when compatible.
    fn check(&self, target: &str, source: &str) -> Result<(), VersionError>;
}

/// The default rule on default-format strings (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultRule;

impl VersionRule for DefaultRule {
    fn check(&self, target: &str, source: &str) -> Result<(), VersionError> {
        let src = Version::parse(source).map_err(VersionError::Malformed)?;
        // A target whose own string is malformed is a vendor bug; refuse.
        let tgt = Version::parse(target).map_err(VersionError::Malformed)?;
        tgt.accepts(&src)
    }
}

/// The whole check for bytes written to a `migration_version` attribute:
/// the input rules, then `rule`.
pub fn check_written(
    rule: &dyn VersionRule,
    target: &str,
    written: &[u8],
) -> Result<(), VersionError> {
    let source =
        parse_input(written).map_err(|e| VersionError::Malformed(FormatError::Input(e)))?;
    rule.check(target, source)
}
