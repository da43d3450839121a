// SPDX-License-Identifier: GPL-2.0

//! migration_version strings: input rules, the default format and rule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rmdev_logic::version::*;

#[test]
fn input_rules() {
    assert_eq!(parse_input(b"a:b:1.0\n"), Ok("a:b:1.0"));
    assert_eq!(parse_input(b"a:b:1.0"), Ok("a:b:1.0"));
    assert_eq!(parse_input(b""), Err(InputError::Empty));
    assert_eq!(parse_input(b"\n"), Err(InputError::Empty));
    assert_eq!(parse_input(b"a:b:1.0\n\n"), Err(InputError::NonPrintable));
    assert_eq!(parse_input(b"a:b\0:1.0"), Err(InputError::Nul));
    assert_eq!(parse_input(b"a:b:1.0\0"), Err(InputError::Nul));
    assert_eq!(parse_input(b"a:b:1.0\t"), Err(InputError::NonPrintable));
    assert_eq!(
        parse_input(b"\xc3\xa9:b:1.0"),
        Err(InputError::NonPrintable)
    );
    assert_eq!(parse_input(b"\x7f"), Err(InputError::NonPrintable));
    let max = "x".repeat(MAX_LEN);
    assert_eq!(parse_input(max.as_bytes()), Ok(max.as_str()));
    assert_eq!(parse_input(format!("{max}\n").as_bytes()), Ok(max.as_str()));
    assert_eq!(
        parse_input("x".repeat(MAX_LEN + 1).as_bytes()),
        Err(InputError::TooLong)
    );
    assert_eq!(parse_input(&[b'x'; 4096]), Err(InputError::TooLong));
    assert_eq!(parse_input(&[b'x'; 1 << 20]), Err(InputError::TooLong));
}

#[test]
fn default_format_parses() {
    let v = Version::parse("rmdev_sample:rmdev_sample-64k:1.2:pages=16:mode=a,b").unwrap();
    assert_eq!(v.vendor, "rmdev_sample");
    assert_eq!(v.mdev_type, "rmdev_sample-64k");
    assert_eq!((v.major, v.minor), (1, 2));
    assert_eq!(
        v.fields().collect::<Vec<_>>(),
        [("pages", "16"), ("mode", "a,b")]
    );
    assert_eq!(v.field("mode"), Some("a,b"));
    assert_eq!(v.field("nope"), None);
    let v = Version::parse("v:t:0.65535").unwrap();
    assert_eq!((v.major, v.minor), (0, 65535));
    assert_eq!(v.fields().count(), 0);
}

#[test]
fn default_format_refuses() {
    use FormatError::*;
    let long = "n".repeat(65);
    let cases: &[(&str, FormatError)] = &[
        ("", Input(InputError::Empty)),
        ("v:t:1.0\n", Input(InputError::NonPrintable)),
        ("v", BadType),
        ("v:t", BadDataVersion),
        (":t:1.0", BadVendor),
        ("v::1.0", BadType),
        ("v w:t:1.0", BadVendor),
        ("v:t/x:1.0", BadType),
        ("v:t:1", BadDataVersion),
        ("v:t:1.", BadDataVersion),
        ("v:t:.1", BadDataVersion),
        ("v:t:01.0", BadDataVersion),
        ("v:t:+1.0", BadDataVersion),
        ("v:t:1.0.0", BadDataVersion),
        ("v:t:65536.0", BadDataVersion),
        ("v:t:1.99999", BadDataVersion),
        ("v:t:1.0:", BadField),
        ("v:t:1.0:k", BadField),
        ("v:t:1.0:k=", BadField),
        ("v:t:1.0:=v", BadField),
        ("v:t:1.0:K=v", BadField),
        ("v:t:1.0:k=v::j=w", BadField),
        ("v:t:1.0:k=v w", BadField),
        ("v:t:1.0:k=a=b", BadField),
        ("v:t:1.0:k=1:k=2", DuplicateField),
        ("v:t:1.0:a=1:b=1:c=1:d=1:e=1:f=1:g=1:h=1:i=1", TooManyFields),
    ];
    for (s, e) in cases {
        assert_eq!(Version::parse(s), Err(*e), "{s:?}");
    }
    assert_eq!(Version::parse(&format!("{long}:t:1.0")), Err(BadVendor));
    assert_eq!(Version::parse(&format!("v:{long}:1.0")), Err(BadType));
    assert!(Version::parse("v:t:1.0:a=1:b=1:c=1:d=1:e=1:f=1:g=1:h=1").is_ok());
}

#[test]
fn default_rule_table() {
    use VersionError::*;
    // (target, source, expected)
    let table: &[(&str, &str, Result<(), VersionError>)] = &[
        ("v:t:1.0", "v:t:1.0", Ok(())),
        ("v:t:1.3", "v:t:1.0", Ok(())),
        ("v:t:1.3", "v:t:1.3", Ok(())),
        ("v:t:1.0", "v:t:1.3", Err(MinorTooNew)),
        ("v:t:2.0", "v:t:1.0", Err(MajorMismatch)),
        ("v:t:1.0", "v:t:2.0", Err(MajorMismatch)),
        ("v:t:1.0", "w:t:1.0", Err(WrongVendor)),
        ("v:t:1.0", "v:u:1.0", Err(WrongType)),
        ("v:t:1.0", "V:t:1.0", Err(WrongVendor)),
        ("v:t:1.0:a=1:b=2", "v:t:1.0:b=2:a=1", Ok(())),
        ("v:t:1.0:a=1", "v:t:1.0:a=2", Err(FieldMismatch)),
        ("v:t:1.0:a=1", "v:t:1.0", Err(FieldMismatch)),
        ("v:t:1.0", "v:t:1.0:a=1", Err(FieldMismatch)),
        ("v:t:1.0:a=1", "v:t:1.0:b=1", Err(FieldMismatch)),
        ("v:t:1.0", "v:t:1.0:", Err(Malformed(FormatError::BadField))),
        ("v:t:1.0", "garbage", Err(Malformed(FormatError::BadType))),
        (
            "v:t:1.0",
            "v:t:1.0 trailing",
            Err(Malformed(FormatError::BadDataVersion)),
        ),
        (
            "v:t:1.0",
            "v:t:1.0\n",
            Err(Malformed(FormatError::Input(InputError::NonPrintable))),
        ),
    ];
    for (t, s, want) in table {
        assert_eq!(DefaultRule.check(t, s), *want, "target {t:?} source {s:?}");
    }
}

/// The compatibility relation is reflexive and transitive, and a different
/// vendor, type or major is never compatible in either direction.
#[test]
fn default_rule_properties() {
    let mut vs = vec![];
    for vendor in ["v", "w"] {
        for ty in ["t", "u"] {
            for major in [0u16, 1, 2] {
                for minor in [0u16, 1, 5] {
                    vs.push(format!("{vendor}:{ty}:{major}.{minor}"));
                    vs.push(format!("{vendor}:{ty}:{major}.{minor}:k=1"));
                }
            }
        }
    }
    for a in &vs {
        assert_eq!(DefaultRule.check(a, a), Ok(()), "{a}");
        for b in &vs {
            let ab = DefaultRule.check(a, b).is_ok();
            let va = Version::parse(a).unwrap();
            let vb = Version::parse(b).unwrap();
            if ab && DefaultRule.check(b, a).is_ok() {
                assert_eq!(va.minor, vb.minor);
            }
            if va.vendor != vb.vendor || va.mdev_type != vb.mdev_type || va.major != vb.major {
                assert!(!ab);
            }
            for c in &vs {
                if ab && DefaultRule.check(b, c).is_ok() {
                    assert!(DefaultRule.check(a, c).is_ok(), "{a} {b} {c}");
                }
            }
        }
    }
}

#[test]
fn sysfs_write_check_applies_input_rules_then_the_rule() {
    let t = "v:t:1.1";
    assert_eq!(check_written(&DefaultRule, t, b"v:t:1.0\n"), Ok(()));
    assert_eq!(check_written(&DefaultRule, t, b"v:t:1.1"), Ok(()));
    assert_eq!(
        check_written(&DefaultRule, t, b"v:t:1.2\n"),
        Err(VersionError::MinorTooNew)
    );
    assert_eq!(
        check_written(&DefaultRule, t, b"\n"),
        Err(VersionError::Malformed(FormatError::Input(
            InputError::Empty
        )))
    );
    assert_eq!(
        check_written(&DefaultRule, t, &[b'v'; 4096]),
        Err(VersionError::Malformed(FormatError::Input(
            InputError::TooLong
        )))
    );
    assert_eq!(
        check_written(&DefaultRule, t, b"v:t:1.0\0"),
        Err(VersionError::Malformed(FormatError::Input(InputError::Nul)))
    );
    // A vendor rule replaces the default.
    struct OnlyExact;
    impl VersionRule for OnlyExact {
        fn check(&self, target: &str, source: &str) -> Result<(), VersionError> {
            if target == source {
                Ok(())
            } else {
                Err(VersionError::Vendor(95))
            }
        }
    }
    assert_eq!(
        check_written(&OnlyExact, "opaque-42", b"opaque-42\n"),
        Ok(())
    );
    assert_eq!(
        check_written(&OnlyExact, "opaque-42", b"opaque-43"),
        Err(VersionError::Vendor(95))
    );
}

#[test]
fn version_buf_builds_default_strings() {
    let v = VersionBuf::new("rmdev_sample", "rmdev_sample-4k", 1, 0).unwrap();
    assert_eq!(v.as_str(), "rmdev_sample:rmdev_sample-4k:1.0");
    let v = v.field("pages", "1").unwrap();
    assert_eq!(v.as_str(), "rmdev_sample:rmdev_sample-4k:1.0:pages=1");
    assert!(Version::parse(v.as_str()).is_ok());
    assert_eq!(
        VersionBuf::new("bad vendor", "t", 1, 0).err(),
        Some(FormatError::BadVendor)
    );
    assert_eq!(
        VersionBuf::new("v", "", 1, 0).err(),
        Some(FormatError::BadType)
    );
    let v = VersionBuf::new("v", "t", 1, 0).unwrap();
    assert!(v.field("Bad", "1").is_err());
    let v = VersionBuf::new("v", "t", 1, 0)
        .unwrap()
        .field("a", "1")
        .unwrap();
    assert_eq!(v.field("a", "2").err(), Some(FormatError::DuplicateField));
}

/// Bounded fuzz of the parsers: arbitrary bytes never panic, and whatever
/// parses is accepted by itself.
#[test]
fn fuzz_version_parsing() {
    let mut rng = common::Rng::from_env("fuzz_version_parsing");
    let alphabet = b"vt:.=,+_-019aZk \n\0\x7f\xff";
    common::for_budget(|| {
        let len = rng.below(40);
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        if let Ok(s) = parse_input(&bytes) {
            if let Ok(v) = Version::parse(s) {
                assert_eq!(v.accepts(&v), Ok(()));
                assert_eq!(DefaultRule.check(s, s), Ok(()));
            }
        }
        let _ = check_written(&DefaultRule, "v:t:1.0", &bytes);
    });
}
