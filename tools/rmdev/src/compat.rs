// SPDX-License-Identifier: GPL-2.0

//! Compatibility checks: the authoritative one (write the source's version
//! into the target's `migration_version` and let the target's rule answer)
//! and the offline one (compare default-format strings with the default
//! rule from `core/logic`, the code the kernel runs), with the reason in
//! words either way.

use rmdev_logic::version::{parse_input, Version, VersionError};
use serde::Serialize;

use crate::error::{describe, errno_name, Error, Result};
use crate::sysfs::{write_check, Target, VersionAttr, WriteCheck};

/// The outcome of a check.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Whether the target accepts the source.
    pub compatible: bool,
    /// How it was decided: `"write"` (the target's own rule) or
    /// `"offline"` (the default rule on the strings).
    pub method: &'static str,
    /// The errno of a refused write.
    pub errno: Option<i32>,
    /// Its name (`EINVAL`).
    pub errno_name: Option<&'static str>,
    /// Why, in words (empty when compatible).
    pub reason: String,
    /// For default-format strings: which part differs.
    pub detail: Option<String>,
}

/// Refuses a source string the attribute would not take as input (so that
/// a hostile or broken string is never written to sysfs); the string
/// without its one tolerated trailing newline.
pub fn validate(version: &str) -> Result<&str> {
    parse_input(version.as_bytes())
        .map_err(|e| Error::Usage(format!("source version '{}': {e}", version.escape_debug())))
}

/// Why `target` does not accept `source` under the default rule, naming the
/// part that differs; `None` when either string is not in the default
/// format. For compatible strings it says so.
pub fn explain(target: &str, source: &str) -> Option<String> {
    let t = Version::parse(target).ok()?;
    let s = Version::parse(source).ok()?;
    Some(explain_parsed(&t, &s, t.accepts(&s)))
}

/// [`explain`] of parsed strings and the rule's answer `r`.
fn explain_parsed(
    t: &Version<'_>,
    s: &Version<'_>,
    r: core::result::Result<(), VersionError>,
) -> String {
    match r {
        Ok(()) => "the strings are compatible under the default rule".into(),
        Err(VersionError::WrongVendor) => format!(
            "vendor differs: source '{}', target '{}'",
            s.vendor, t.vendor
        ),
        Err(VersionError::WrongType) => format!(
            "type differs: source '{}', target '{}'",
            s.mdev_type, t.mdev_type
        ),
        Err(VersionError::MajorMismatch) => format!(
            "data format major version differs: source {}.{}, target {}.{}",
            s.major, s.minor, t.major, t.minor
        ),
        Err(VersionError::MinorTooNew) => format!(
            "source data format {}.{} is newer than the target's {}.{}",
            s.major, s.minor, t.major, t.minor
        ),
        Err(VersionError::FieldMismatch) => field_differences(t, s),
        Err(e) => e.to_string(),
    }
}

fn field_differences(t: &Version<'_>, s: &Version<'_>) -> String {
    let mut out = Vec::new();
    for (k, v) in s.fields() {
        match t.field(k) {
            Some(tv) if tv == v => {}
            Some(tv) => out.push(format!("field {k}: source {v}, target {tv}")),
            None => out.push(format!("field {k}={v} only in the source")),
        }
    }
    for (k, v) in t.fields() {
        if s.field(k).is_none() {
            out.push(format!("field {k}={v} only in the target"));
        }
    }
    out.join("; ")
}

/// Asks `target` whether it accepts `source_version`, by writing it to the
/// target's `migration_version`.
pub fn check(source_version: &str, target: &Target) -> Result<Verdict> {
    let source_version = validate(source_version)?;
    match write_check(target.dir(), source_version)? {
        WriteCheck::Accepted => Ok(Verdict {
            compatible: true,
            method: "write",
            errno: None,
            errno_name: None,
            reason: String::new(),
            detail: None,
        }),
        WriteCheck::NoAttribute => Ok(Verdict {
            compatible: false,
            method: "write",
            errno: None,
            errno_name: None,
            reason: "the target has no migration_version: it does not migrate".into(),
            detail: None,
        }),
        WriteCheck::Refused(e) => {
            let errno = e.raw_os_error();
            let detail = match target.version() {
                VersionAttr::Present(t) => explain(t, source_version),
                _ => None,
            };
            Ok(Verdict {
                compatible: false,
                method: "write",
                errno,
                errno_name: errno.map(errno_name),
                reason: format!("the target refused the source's version: {}", describe(&e)),
                detail,
            })
        }
    }
}

/// Compares without writing: the default rule on both strings. `None` when
/// either is not in the default format (only the target can decide then).
pub fn offline(target: &str, source: &str) -> Option<Verdict> {
    let t = Version::parse(target).ok()?;
    let s = Version::parse(source).ok()?;
    Some(offline_parsed(&t, &s))
}

/// [`offline`] of strings parsed once (`match` compares every source with
/// every target: parsing each pair again would dominate its time).
pub fn offline_parsed(t: &Version<'_>, s: &Version<'_>) -> Verdict {
    let r = t.accepts(s);
    Verdict {
        compatible: r.is_ok(),
        method: "offline",
        errno: None,
        errno_name: None,
        reason: match r {
            Ok(()) => String::new(),
            Err(e) => format!("the default rule refuses: {e}"),
        },
        detail: r.is_err().then(|| explain_parsed(t, s, r)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn explains_each_part() {
        let e = |t, s| explain(t, s).unwrap_or_default();
        assert_eq!(
            e("v:t:1.0", "w:t:1.0"),
            "vendor differs: source 'w', target 'v'"
        );
        assert_eq!(
            e("v:t:1.0", "v:u:1.0"),
            "type differs: source 'u', target 't'"
        );
        assert_eq!(
            e("v:t:1.0", "v:t:2.0"),
            "data format major version differs: source 2.0, target 1.0"
        );
        assert_eq!(
            e("v:t:1.0", "v:t:1.3"),
            "source data format 1.3 is newer than the target's 1.0"
        );
        assert_eq!(
            e("v:t:1.0:a=1:c=3", "v:t:1.0:a=2:b=2"),
            "field a: source 2, target 1; field b=2 only in the source; field c=3 only in the target"
        );
        assert_eq!(
            e("v:t:1.3", "v:t:1.0"),
            "the strings are compatible under the default rule"
        );
        assert_eq!(explain("vendor-own-format", "v:t:1.0"), None);
    }

    #[test]
    fn offline_verdicts() {
        assert!(offline("v:t:1.3", "v:t:1.0").is_some_and(|v| v.compatible));
        let v = offline("v:t:1.0", "v:t:1.3");
        assert!(v.as_ref().is_some_and(|v| !v.compatible));
        assert!(offline("custom", "v:t:1.0").is_none());
        assert!(offline("v:t:1.0", "custom").is_none());
    }

    #[test]
    fn validates_input() {
        assert!(validate("v:t:1.0").is_ok());
        assert!(validate("").is_err());
        assert!(validate("a\u{1}b").is_err());
        assert!(validate(&"x".repeat(256)).is_err());
    }
}
