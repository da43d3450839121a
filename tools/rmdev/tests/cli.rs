// SPDX-License-Identifier: GPL-2.0

//! Every `rmdev` command against fake sysfs trees, run as the real binary:
//! exit statuses, messages, what was written to the attributes, `--json`
//! output shapes, and malformed or hostile manifests and stream files.
//! (The real kernel answers in the lab: `tests/vm/t-rmdev.sh`.) The fake
//! trees are `common::Tree`s; `tests/libvirt.rs` tests `rmdev libvirt`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::*;

#[test]
fn list_text_and_json() {
    let t = standard();
    let o = t.rmdev(&["list"]);
    o.expect(0, "");
    assert!(o
        .stdout
        .contains("vendor-4m  vfio-pci  available 4  migration_version vendor:4m:1.0"));
    assert!(o
        .stdout
        .contains("plain-a  vfio-pci  available 4  migration_version (does not migrate)"));
    // Without --probe no device is opened: the flag set is not known.
    assert!(o.stdout.contains(&format!(
        "{U1} vendor/vendor-4m  flags not probed (use --probe)"
    )));
    assert!(o
        .stdout
        .contains(&format!("{U3} plain/plain-a  flags none")));
    // With --probe it tries; a fake mdev has no IOMMU group, so its flag
    // set cannot be read.
    let o = t.rmdev(&["list", "--probe"]);
    o.expect(0, "");
    assert!(o
        .stdout
        .contains(&format!("{U1} vendor/vendor-4m  flags not opened")));
    assert!(o
        .stdout
        .contains(&format!("{U3} plain/plain-a  flags none")));
    let j = t.rmdev(&["--json", "list", "--probe"]).json();
    assert!(j["mdevs"][0]["migration_flags"].is_null());
    assert!(j["mdevs"][0]["migration_flags_error"]
        .as_str()
        .unwrap()
        .starts_with("not opened"));

    let j = t.rmdev(&["--json", "list"]).json();
    has(&j, "parents", "array");
    has(&j, "mdevs", "array");
    let parents = j["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2);
    let vendor = &parents[1];
    has(vendor, "name", "string");
    has(vendor, "path", "string");
    let ty = &vendor["types"][0];
    for (k, kind) in [
        ("parent", "string"),
        ("type", "string"),
        ("name", "string|null"),
        ("description", "string|null"),
        ("device_api", "string|null"),
        ("available_instances", "number|null"),
        ("migration_version", "string|null"),
    ] {
        has(ty, k, kind);
    }
    assert_eq!(ty["type"], "vendor-16k");
    assert_eq!(ty["migration_version"], "vendor:16k:1.0");
    assert!(ty.get("migration_version_error").is_none());
    let plain = &parents[0]["types"][0];
    assert!(plain["migration_version"].is_null());
    assert!(plain.get("migration_version_error").is_none());
    let m = &j["mdevs"][0];
    for (k, kind) in [
        ("uuid", "string"),
        ("parent", "string"),
        ("type", "string"),
        ("migration_version", "string|null"),
        ("migration_flags", "number|null"),
        ("migration_flags_error", "string|null"),
    ] {
        has(m, k, kind);
    }
    assert_eq!(m["uuid"], U1);
    assert_eq!(m["type"], "vendor-4m");
    // Not probed: the same shape, flags null and the reason.
    assert!(m["migration_flags"].is_null());
    assert!(m["migration_flags_names"].is_null());
    assert_eq!(m["migration_flags_error"], "not probed (use --probe)");
    assert_eq!(j["mdevs"][2]["migration_flags_error"], "none");
}

/// Only `list --probe` opens devices. A fake mdev whose IOMMU group link
/// names a group: with --probe the tool goes as far as the device nodes
/// (and fails there: a fake group has none); without it, and for every
/// other read-only command, it never gets that far.
#[test]
fn read_only_commands_open_no_device() {
    let t = standard();
    symlink(
        "../../../kernel/iommu_groups/4242",
        t.mdev_dir("vendor", U1).join("iommu_group"),
    )
    .unwrap();
    let o = t.rmdev(&["--json", "list"]);
    o.expect(0, "");
    assert_eq!(
        o.json()["mdevs"][0]["migration_flags_error"],
        "not probed (use --probe)"
    );
    let o = t.rmdev(&["--json", "list", "--probe"]);
    let e = o.json()["mdevs"][0]["migration_flags_error"].clone();
    assert!(e.as_str().unwrap().starts_with("not opened"), "{e}");
    // version, check, export and match read sysfs (and write the
    // attribute, for check and match) only: they succeed on a fake tree,
    // where opening a device would fail.
    t.rmdev(&["version", U1]).expect(0, "");
    t.rmdev(&["check", U1, U2]).expect(0, "");
    let m = t.path("m.json");
    t.rmdev(&["export", "-o", m.to_str().unwrap()])
        .expect(0, "");
    t.rmdev(&["match", "--from", m.to_str().unwrap()])
        .expect(0, "");
}

#[test]
fn list_with_nothing() {
    let t = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rmdev"))
        .arg("--root")
        .arg(t.path())
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no mdev parents"));
}

#[test]
fn version_by_every_name() {
    let t = standard();
    for spec in [
        U1.to_string(),
        t.mdev_dir("vendor", U1).display().to_string(),
        t.mdev_dir("vendor", U1)
            .join("migration_version")
            .display()
            .to_string(),
    ] {
        let o = t.rmdev(&["version", &spec]);
        o.expect(0, "");
        assert_eq!(o.stdout, "vendor:4m:1.0\n", "{spec}");
    }
    // Every spelling of a UUID that mdevctl accepts names the same mdev
    // (sysfs names it in lower case).
    let u = U1.to_uppercase();
    for spec in [
        u.clone(),
        U1.replace('-', ""),
        format!("{{{U1}}}"),
        format!("urn:uuid:{u}"),
    ] {
        let o = t.rmdev(&["version", &spec]);
        o.expect(0, "");
        assert_eq!(o.stdout, "vendor:4m:1.0\n", "{spec}");
    }
    let o = t.rmdev(&["version", "vendor/vendor-16k"]);
    o.expect(0, "");
    assert_eq!(o.stdout, "vendor:16k:1.0\n");
    let td = t.type_dir("vendor", "vendor-16k").display().to_string();
    assert_eq!(t.rmdev(&["version", &td]).stdout, "vendor:16k:1.0\n");
    let j = t.rmdev(&["--json", "version", "vendor/vendor-16k"]).json();
    assert_eq!(j["kind"], "type");
    assert_eq!(j["id"], "vendor/vendor-16k");
    assert_eq!(j["migration_version"], "vendor:16k:1.0");
}

/// mdevctl's habits: -u for an mdev, -p and -t for a type, and a verb for
/// a device's version string that is not the tool's --version.
#[test]
fn mdevctl_options_name_types_and_mdevs() {
    let t = standard();
    for args in [
        vec!["migration-version", "-u", U1],
        vec!["migration-version", "--uuid", &U1.to_uppercase()],
        vec!["migration-version", U1],
        // The command's old name still works.
        vec!["version", "-u", U1],
    ] {
        let o = t.rmdev(&args);
        o.expect(0, "");
        assert_eq!(o.stdout, "vendor:4m:1.0\n", "{args:?}");
    }
    for args in [
        vec!["migration-version", "-p", "vendor", "-t", "vendor-16k"],
        vec![
            "migration-version",
            "--parent",
            "vendor",
            "--type",
            "vendor-16k",
        ],
    ] {
        let o = t.rmdev(&args);
        o.expect(0, "");
        assert_eq!(o.stdout, "vendor:16k:1.0\n", "{args:?}");
    }
    let j = t
        .rmdev(&[
            "--json",
            "migration-version",
            "-p",
            "vendor",
            "-t",
            "vendor-16k",
        ])
        .json();
    assert_eq!(j["kind"], "type");
    assert_eq!(j["id"], "vendor/vendor-16k");
    // -u takes only a UUID (a PARENT/TYPE or path is not one).
    t.rmdev(&["migration-version", "-u", "vendor/vendor-16k"])
        .expect(2, "'vendor/vendor-16k' is not a UUID");
    t.rmdev(&["migration-version", "-p", "vendor"])
        .expect(2, "--type");
    t.rmdev(&["migration-version", "-t", "vendor-16k"])
        .expect(2, "--parent");
    t.rmdev(&["migration-version", "-p", "vendor", "-t", "nosuch"])
        .expect(2, "parent 'vendor' has no mdev type 'nosuch'");
    t.rmdev(&["migration-version", U1, "-u", U2])
        .expect(2, "cannot be used with");
    t.rmdev(&[
        "migration-version",
        "-u",
        U1,
        "-p",
        "vendor",
        "-t",
        "vendor-4m",
    ])
    .expect(2, "cannot be used with");
    // A usage error under --json names the argument.
    let o = t.rmdev(&["--json", "migration-version"]);
    o.expect(2, "TARGET");
    let e = o.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("TARGET"), "{e}");
    // save and load take -u too (and get as far as opening the device,
    // which a fake mdev cannot be).
    let f = t.path("s.bin");
    t.rmdev(&["save", "-u", U1, "-o", f.to_str().unwrap()])
        .expect(2, &format!("open mdev {U1}"));
    t.rmdev(&["save", "-o", f.to_str().unwrap()])
        .expect(2, "MDEV");
    t.rmdev(&["save", "-u", "vendor/vendor-4m", "-o", f.to_str().unwrap()])
        .expect(2, "is not a UUID");
    t.rmdev(&["load", "-u", U1, "-i", "/nonexistent"])
        .expect(2, "/nonexistent");
}

/// mdevctl's list filters: -u one mdev, -p one parent, -t one type.
#[test]
fn list_filters() {
    let t = standard();
    let o = t.rmdev(&["list", "-u", &U2.to_uppercase()]);
    o.expect(0, "");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", o.stdout);
    assert!(
        lines[0].starts_with(&format!("{U2} vendor/vendor-4m")),
        "{}",
        o.stdout
    );
    let j = t.rmdev(&["--json", "list", "-u", U2]).json();
    assert_eq!(j["parents"].as_array().unwrap().len(), 0);
    let m = j["mdevs"].as_array().unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["uuid"], U2);

    let j = t.rmdev(&["--json", "list", "-p", "plain"]).json();
    let p = j["parents"].as_array().unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["name"], "plain");
    let m = j["mdevs"].as_array().unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["uuid"], U3);

    let j = t.rmdev(&["--json", "list", "-t", "vendor-4m"]).json();
    let p = j["parents"].as_array().unwrap();
    assert_eq!(p.len(), 1);
    let types: Vec<&str> = p[0]["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["vendor-4m"]);
    let uuids: Vec<&str> = j["mdevs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids, [U1, U2]);

    // The type of one parent only.
    let j = t
        .rmdev(&["--json", "list", "-p", "plain", "-t", "vendor-4m"])
        .json();
    assert_eq!(j["parents"].as_array().unwrap().len(), 0);
    assert_eq!(j["mdevs"].as_array().unwrap().len(), 0);
    let o = t.rmdev(&["list", "-p", "nosuch"]);
    o.expect(0, "");
    assert_eq!(o.stdout, "no mdev parent or type matches\n");
    let o = t.rmdev(&["list", "-u", "99999999-2222-4333-8444-555555555555"]);
    o.expect(0, "");
    assert_eq!(o.stdout, "no mdev matches\n");
    t.rmdev(&["list", "-u", "1234"])
        .expect(2, "'1234' is not a UUID");
}

#[test]
fn version_errors() {
    let t = standard();
    t.rmdev(&["version", "1234"]).expect(
        2,
        "'1234' is not an mdev UUID, a PARENT/TYPE or a sysfs path",
    );
    t.rmdev(&["version", "11111111-2222-4333-8444-55555555555"])
        .expect(2, "is not an mdev UUID");
    t.rmdev(&["version", "99999999-2222-4333-8444-555555555555"])
        .expect(2, "no mdev 99999999-2222-4333-8444-555555555555");
    t.rmdev(&["version", "nosuch/type"])
        .expect(2, "no parent named 'nosuch'");
    t.rmdev(&["version", "vendor/nosuch"])
        .expect(2, "parent 'vendor' has no mdev type 'nosuch'");
    t.rmdev(&["version", "vendor/a/b"])
        .expect(2, "is not an mdev UUID");
    t.rmdev(&["version", "../x"]).expect(2, "../x");
    t.rmdev(&["version", U3]).expect(2, "does not migrate");
    t.rmdev(&["version", "plain/plain-a"])
        .expect(2, "does not migrate");
    let root = t.root().display().to_string();
    t.rmdev(&["version", &root])
        .expect(2, "not an mdev type or mdev directory");
    // An attribute that cannot be read (here: a directory).
    let a = t.type_dir("vendor", "vendor-16k").join("migration_version");
    fs::remove_file(&a).unwrap();
    fs::create_dir(&a).unwrap();
    t.rmdev(&["version", "vendor/vendor-16k"])
        .expect(2, "migration_version");
    // Not UTF-8.
    fs::write(
        t.mdev_dir("vendor", U2).join("migration_version"),
        b"\xff\xfe\n",
    )
    .unwrap();
    t.rmdev(&["version", U2]).expect(2, "not UTF-8");
    // Errors in JSON too.
    let o = t.rmdev(&["--json", "version", "1234"]);
    o.expect(2, "");
    let j = o.json();
    has(&j, "error", "string");
    assert_eq!(j["exit_status"], 2);
}

#[test]
fn check_writes_the_source_string() {
    let t = standard();
    let o = t.rmdev(&["check", U1, U2]);
    o.expect(0, "");
    assert!(o
        .stdout
        .starts_with(&format!("compatible: {U2} accepts {U1} (vendor:4m:1.0)")));
    // What the target's attribute received: the source's string, one
    // write, one newline.
    assert_eq!(
        fs::read_to_string(t.mdev_dir("vendor", U2).join("migration_version")).unwrap(),
        "vendor:4m:1.0\n"
    );
    // Type as target, by name and by path.
    t.rmdev(&["check", U1, "vendor/vendor-4m"]).expect(0, "");
    let tp = t.type_dir("vendor", "vendor-4m").display().to_string();
    t.rmdev(&["check", "vendor/vendor-4m", &tp]).expect(0, "");
    let j = t.rmdev(&["--json", "check", U1, U2]).json();
    has(&j, "source", "object");
    has(&j, "target", "object");
    has(&j, "verdict", "object");
    has(&j, "elapsed_s", "number");
    assert_eq!(j["verdict"]["compatible"], true);
    assert_eq!(j["verdict"]["method"], "write");
    assert_eq!(j["source"]["origin"], "this host");
    assert_eq!(j["target"]["kind"], "mdev");
}

/// A non-root operator: list, export, match --offline and check --offline
/// work; the write check (writing a root-only attribute) says it needs
/// root and what works without. (As root, the tool runs as nobody here.)
#[test]
fn non_root_operator() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let t = standard();
    let m = t.path("m.json");
    t.rmdev(&["export", "-o", m.to_str().unwrap()])
        .expect(0, "");
    // Walkable by everyone; the attributes read-only for everyone but
    // root, as sysfs has them.
    fn open_up(p: &Path) {
        let meta = fs::symlink_metadata(p).unwrap();
        if meta.file_type().is_symlink() {
            return;
        }
        if meta.is_dir() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
            for e in fs::read_dir(p).unwrap() {
                open_up(&e.unwrap().path());
            }
        } else {
            fs::set_permissions(p, fs::Permissions::from_mode(0o444)).unwrap();
        }
    }
    open_up(t.root());
    // A copy of the binary the user can run (the build directory may be
    // in root's home).
    let bin = t.path("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let exe = bin.join("rmdev");
    fs::copy(env!("CARGO_BIN_EXE_rmdev"), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let user = |args: &[&str]| {
        let mut c = Command::new(&exe);
        c.arg("--root").arg(t.root()).args(args);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            c.uid(65534).gid(65534);
        }
        let o = spawn(&mut c).wait_with_output().unwrap();
        Out {
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    user(&["list"]).expect(0, "");
    let o = user(&["export"]);
    o.expect(0, "");
    assert!(o.json()["mdevs"].is_array());
    user(&["match", "--from", m.to_str().unwrap(), "--offline"]).expect(0, "");
    let o = user(&["check", U1, U2]);
    o.expect(2, "the write check needs root (--offline compares");
    assert!(o.stderr.contains("EACCES"), "{o:#?}");
    let o = user(&["check", "--offline", U1, U2]);
    o.expect(0, "");
    assert!(o.stdout.starts_with("compatible:"), "{o:#?}");
    let o = user(&["--json", "check", "--offline", U1, "vendor/vendor-16k"]);
    o.expect(1, "");
    let j = o.json();
    assert_eq!(j["verdict"]["method"], "offline");
    assert_eq!(j["verdict"]["compatible"], false);
    assert_eq!(
        j["verdict"]["detail"],
        "type differs: source '4m', target '16k'"
    );
    user(&["check", "--offline", U3, U1]).expect(2, "does not migrate");
    // Not the default format: only the target's own rule can tell.
    let a = t.mdev_dir("vendor", U2).join("migration_version");
    fs::set_permissions(&a, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&a, "vendor-own-format\n").unwrap();
    fs::set_permissions(&a, fs::Permissions::from_mode(0o444)).unwrap();
    user(&["check", "--offline", U1, U2]).expect(2, "is not in the default format");
}

#[test]
fn check_refused_and_unusable_targets() {
    let t = standard();
    t.refusing(&t.mdev_dir("vendor", U2));
    let o = t.rmdev(&["check", U1, U2]);
    o.expect(1, "");
    assert!(o.stdout.contains("incompatible"), "{o:#?}");
    assert!(
        o.stdout.contains("ENOSPC (No space left on device)"),
        "{o:#?}"
    );
    let j = t.rmdev(&["--json", "check", U1, U2]).json();
    assert_eq!(j["verdict"]["compatible"], false);
    assert_eq!(j["verdict"]["errno"], 28);
    assert_eq!(j["verdict"]["errno_name"], "ENOSPC");
    // A target that does not migrate: incompatible, not an error.
    let o = t.rmdev(&["check", U1, U3]);
    o.expect(1, "");
    assert!(o.stdout.contains("it does not migrate"), "{o:#?}");
    // A source that does not migrate: nothing to check.
    t.rmdev(&["check", U3, U1]).expect(2, "does not migrate");
    // An attribute that cannot be opened for writing.
    let a = t.type_dir("vendor", "vendor-16k").join("migration_version");
    fs::remove_file(&a).unwrap();
    fs::create_dir(&a).unwrap();
    t.rmdev(&["check", U1, "vendor/vendor-16k"])
        .expect(2, "migration_version");
    // Bad names.
    t.rmdev(&["check", "xyz", U1])
        .expect(2, "'xyz' is not an mdev UUID");
    t.rmdev(&["check", U1]).expect(2, "TARGET");
    t.rmdev(&["check"]).expect(2, "SOURCE");
}

#[test]
fn check_never_writes_a_malformed_source() {
    let t = standard();
    let dst = t.mdev_dir("vendor", U2).join("migration_version");
    for bad in ["", "a\u{7}b", "two\nlines"] {
        fs::write(
            t.mdev_dir("vendor", U1).join("migration_version"),
            format!("{bad}\n"),
        )
        .unwrap();
        t.rmdev(&["check", U1, U2]).expect(2, "source version");
        assert_eq!(fs::read_to_string(&dst).unwrap(), "vendor:4m:1.0\n");
    }
    fs::write(
        t.mdev_dir("vendor", U1).join("migration_version"),
        format!("{}\n", "v".repeat(300)),
    )
    .unwrap();
    t.rmdev(&["check", U1, U2])
        .expect(2, "longer than 255 bytes");
}

fn export(t: &Tree) -> Value {
    let o = t.rmdev(&["export"]);
    o.expect(0, "");
    o.json()
}

#[test]
fn export_manifest_schema() {
    let t = standard();
    let m = export(&t);
    assert_eq!(m["schema"], "rmdev-manifest");
    assert_eq!(m["schema_version"], 1);
    has(&m, "host", "string");
    has(&m, "rmdev_version", "string");
    let types = m["types"].as_array().unwrap();
    assert_eq!(types.len(), 3);
    for ty in types {
        has(ty, "parent", "string");
        has(ty, "type", "string");
        has(ty, "name", "string|null");
        has(ty, "migration_version", "string|null");
    }
    assert_eq!(types[0]["type"], "plain-a");
    assert!(types[0]["migration_version"].is_null());
    assert_eq!(types[2]["migration_version"], "vendor:4m:1.0");
    let mdevs = m["mdevs"].as_array().unwrap();
    assert_eq!(mdevs.len(), 3);
    assert_eq!(mdevs[0]["uuid"], U1);
    assert_eq!(mdevs[0]["parent"], "vendor");
    assert_eq!(mdevs[0]["type"], "vendor-4m");
    // To a file.
    let f = t.path("m.json");
    t.rmdev(&["export", "-o", f.to_str().unwrap()])
        .expect(0, "");
    let again: Value = serde_json::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
    assert_eq!(again["types"], m["types"]);
    // Replaced whole, and nothing else left in its directory.
    fs::write(&f, "old content that is longer than nothing at all").unwrap();
    t.rmdev(&["export", "-o", f.to_str().unwrap()])
        .expect(0, "");
    let again: Value = serde_json::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
    assert_eq!(again["types"], m["types"]);
    let stray: Vec<_> = fs::read_dir(f.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    // "-" is standard output, not a file named "-".
    let o = t.rmdev(&["export", "-o", "-"]);
    o.expect(0, "");
    let out: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(out["types"], m["types"]);
    assert!(!Path::new("-").exists());
    t.rmdev(&["export", "-o", "/nonexistent/dir/m.json"])
        .expect(2, "/nonexistent/dir/m.json");
    // An attribute that exists but cannot be read fails the export rather
    // than appearing as "does not migrate".
    let a = t.mdev_dir("vendor", U2).join("migration_version");
    fs::remove_file(&a).unwrap();
    fs::create_dir(&a).unwrap();
    t.rmdev(&["export"])
        .expect(2, &format!("{U2}/migration_version"));
}

/// A source host's manifest: the 4m type at minor 1, a 16k mdev with a
/// field, a type in a vendor format and one that does not migrate.
fn source_manifest(t: &Tree) -> PathBuf {
    let m = serde_json::json!({
        "schema": "rmdev-manifest", "schema_version": 1, "host": "src",
        "rmdev_version": "0.1.0", "future_field": [1, 2],
        "types": [
            {"parent": "vendor", "type": "vendor-4m", "name": null,
             "migration_version": "vendor:4m:1.1"},
            {"parent": "vendor", "type": "vendor-4m-old", "name": null,
             "migration_version": "vendor:4m:1.0"},
            {"parent": "other", "type": "own", "name": null,
             "migration_version": "other-format-7"},
            {"parent": "plain", "type": "plain-a", "name": null,
             "migration_version": null}
        ],
        "mdevs": [
            {"uuid": U3, "parent": "vendor", "type": "vendor-16k",
             "migration_version": "vendor:16k:1.0:ports=2"}
        ]
    });
    let p = t.path("src.json");
    fs::write(&p, m.to_string()).unwrap();
    p
}

#[test]
fn check_from_a_manifest() {
    let t = standard();
    let m = source_manifest(&t);
    let ms = m.to_str().unwrap();
    let o = t.rmdev(&["check", "--from", ms, "vendor/vendor-4m", U1]);
    o.expect(0, "");
    assert_eq!(
        fs::read_to_string(t.mdev_dir("vendor", U1).join("migration_version")).unwrap(),
        "vendor:4m:1.1\n"
    );
    let j = t
        .rmdev(&["--json", "check", "--from", ms, U3, "vendor/vendor-16k"])
        .json();
    assert_eq!(j["source"]["origin"], "manifest of host 'src'");
    assert_eq!(j["source"]["migration_version"], "vendor:16k:1.0:ports=2");
    t.rmdev(&["check", "--from", ms, "vendor/nosuch", U1])
        .expect(2, "no entry 'vendor/nosuch' in the manifest of host 'src'");
    t.rmdev(&["check", "--from", ms, "plain/plain-a", U1])
        .expect(2, "does not migrate");
}

#[test]
fn match_by_write_and_offline() {
    let t = standard();
    let m = source_manifest(&t);
    let ms = m.to_str().unwrap();
    // By write: every regular-file attribute accepts, the refusing one not.
    t.refusing(&t.mdev_dir("vendor", U2));
    let o = t.rmdev(&["--json", "match", "--from", ms]);
    o.expect(0, "");
    let j = o.json();
    assert_eq!(j["method"], "write");
    assert_eq!(j["authoritative"], true);
    let e = &j["entries"][0];
    assert_eq!(e["id"], "vendor/vendor-4m");
    let acc: Vec<&str> = e["accepted_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(acc.contains(&U1) && !acc.contains(&U2), "{acc:?}");
    // Entries without a version are not listed.
    assert_eq!(j["entries"].as_array().unwrap().len(), 4);

    // Offline: the default rule decides; U2's attribute is unreadable
    // (/dev/full) so it is not a candidate.
    let t = standard();
    let m = source_manifest(&t);
    let ms = m.to_str().unwrap();
    let o = t.rmdev(&["--json", "match", "--offline", "--from", ms]);
    o.expect(1, "");
    let j = o.json();
    assert_eq!(j["method"], "offline");
    assert_eq!(j["authoritative"], false);
    let ids = |e: &Value| -> Vec<String> {
        e["accepted_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    // Source 4m at minor 1: the local 4m strings are at minor 0: refused.
    assert!(ids(&j["entries"][0]).is_empty());
    let detail = &j["entries"][0]["candidates"][1]["verdict"]["detail"];
    assert_eq!(
        detail,
        "source data format 1.1 is newer than the target's 1.0"
    );
    // Source 4m at minor 0: the 4m type and both 4m mdevs.
    assert_eq!(ids(&j["entries"][1]), ["vendor/vendor-4m", U1, U2]);
    // The 16k mdev carries a field the local 16k type lacks.
    assert_eq!(j["entries"][3]["id"], U3);
    assert!(ids(&j["entries"][3]).is_empty());
    // Fake attributes are never written offline.
    assert_eq!(
        fs::read_to_string(t.mdev_dir("vendor", U1).join("migration_version")).unwrap(),
        "vendor:4m:1.0\n"
    );
    let o = t.rmdev(&["match", "--offline", "--from", ms]);
    assert!(o.stdout.contains("not authoritative"), "{o:#?}");
    assert!(o
        .stdout
        .contains("type vendor/vendor-4m-old (vendor:4m:1.0): vendor/vendor-4m, "));
    assert!(o.stdout.contains(
        "type other/own (other-format-7): undecided offline (check on this host without --offline)"
    ));
    assert!(o.stdout.contains("not comparable offline"));
}

#[test]
fn hostile_manifests() {
    let t = standard();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"{".to_vec(), "not JSON"),
        ("not UTF-8", b"{\"schema\": \"\xff\"}".to_vec(), "not UTF-8"),
        ("another schema", br#"{"schema": "x", "schema_version": 1}"#.to_vec(), "not an rmdev manifest"),
        (
            "newer schema",
            br#"{"schema": "rmdev-manifest", "schema_version": 2}"#.to_vec(),
            "schema version 2 is not supported (this rmdev reads version 1)",
        ),
        (
            "version as string",
            br#"{"schema": "rmdev-manifest", "schema_version": "1"}"#.to_vec(),
            "\"schema_version\" missing or not a number",
        ),
        (
            "missing fields",
            br#"{"schema": "rmdev-manifest", "schema_version": 1, "host": "h"}"#.to_vec(),
            "missing field",
        ),
        (
            "entry without type",
            br#"{"schema":"rmdev-manifest","schema_version":1,"host":"h","rmdev_version":"1",
                 "types":[{"parent":"p","migration_version":null}],"mdevs":[]}"#
                .to_vec(),
            "missing field `type`",
        ),
        (
            "control byte in a version",
            br#"{"schema":"rmdev-manifest","schema_version":1,"host":"h","rmdev_version":"1",
                 "types":[{"parent":"p","type":"t","migration_version":"a\u0001b"}],"mdevs":[]}"#
                .to_vec(),
            "type p/t: source version",
        ),
        (
            "over-long version",
            format!(
                r#"{{"schema":"rmdev-manifest","schema_version":1,"host":"h","rmdev_version":"1",
                 "types":[],"mdevs":[{{"uuid":"{U1}","parent":"p","type":"t","migration_version":"{}"}}]}}"#,
                "x".repeat(256)
            )
            .into_bytes(),
            "longer than 255 bytes",
        ),
        ("huge", vec![b' '; (16 << 20) + 1], "larger than 16 MiB"),
        (
            "missing migration_version key",
            br#"{"schema":"rmdev-manifest","schema_version":1,"host":"h","rmdev_version":"1",
                 "types":[{"parent":"p","type":"t"}],"mdevs":[]}"#
                .to_vec(),
            "missing field `migration_version`",
        ),
        (
            "not a UUID",
            br#"{"schema":"rmdev-manifest","schema_version":1,"host":"h","rmdev_version":"1",
                 "types":[],"mdevs":[{"uuid":"x","parent":"p","type":"t","migration_version":null}]}"#
                .to_vec(),
            "mdev \"x\": not a UUID",
        ),
        (
            "escape sequence in the host name",
            br#"{"schema":"rmdev-manifest","schema_version":1,"host":"\u001b[2J","rmdev_version":"1",
                 "types":[],"mdevs":[]}"#
                .to_vec(),
            "\"host\": empty, too long or not printable ASCII",
        ),
        (
            "a slash in a type name",
            br#"{"schema":"rmdev-manifest","schema_version":1,"host":"h","rmdev_version":"1",
                 "types":[{"parent":"p","type":"a/b","migration_version":null}],"mdevs":[]}"#
                .to_vec(),
            "bad parent or type name",
        ),
        (
            "too many entries",
            format!(
                r#"{{"schema":"rmdev-manifest","schema_version":1,"host":"h","rmdev_version":"1",
                 "types":[{}],"mdevs":[]}}"#,
                vec![r#"{"parent":"p","type":"t","migration_version":null}"#; 100_001].join(",")
            )
            .into_bytes(),
            "more than 100000 entries",
        ),
        ("empty", Vec::new(), "not JSON"),
    ];
    for (what, bytes, want) in cases {
        let p = t.path("bad.json");
        fs::write(&p, &bytes).unwrap();
        for args in [
            vec!["match", "--from", p.to_str().unwrap()],
            vec!["match", "--offline", "--from", p.to_str().unwrap()],
            vec!["check", "--from", p.to_str().unwrap(), U1, U2],
        ] {
            let o = t.rmdev(&args);
            assert_eq!(o.status, 2, "{what}: {o:#?}");
            assert!(o.stderr.contains(want), "{what}: want '{want}': {o:#?}");
        }
    }
    // Nothing was written to any target on the way.
    assert_eq!(
        fs::read_to_string(t.mdev_dir("vendor", U2).join("migration_version")).unwrap(),
        "vendor:4m:1.0\n"
    );
    t.rmdev(&["match", "--from", "/nonexistent.json"])
        .expect(2, "/nonexistent.json");
    t.rmdev(&["match"]).expect(2, "--from");
}

/// export never writes a manifest its own reader refuses: an entry the
/// reader would refuse is left out (with a warning), and a host name it
/// would refuse is an error.
#[test]
fn export_leaves_out_what_its_reader_refuses() {
    let t = standard();
    // A vendor string no reader takes: 300 bytes.
    fs::write(
        t.type_dir("vendor", "vendor-16k").join("migration_version"),
        format!("{}\n", "x".repeat(300)),
    )
    .unwrap();
    let m = t.path("m.json");
    let o = t.rmdev(&["export", "-o", m.to_str().unwrap(), "--host", "src-1"]);
    o.expect(
        0,
        "warning: left out of the manifest: type vendor/vendor-16k",
    );
    let j: Value = serde_json::from_str(&fs::read_to_string(&m).unwrap()).unwrap();
    assert_eq!(j["host"], "src-1");
    let types: Vec<&str> = j["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["plain-a", "vendor-4m"]);
    assert_eq!(j["mdevs"].as_array().unwrap().len(), 3);
    // Its reader takes it.
    t.rmdev(&["match", "--from", m.to_str().unwrap()])
        .expect(0, "");
    t.rmdev(&["check", "--from", m.to_str().unwrap(), U1, U2])
        .expect(0, "");
    // A host name the reader would refuse: nothing written.
    fs::remove_file(&m).unwrap();
    for bad in ["", "a\u{1}b", &"h".repeat(256)] {
        t.rmdev(&["export", "-o", m.to_str().unwrap(), "--host", bad])
            .expect(2, "give one with --host");
        assert!(!m.exists());
    }
}

#[test]
fn export_then_match_round_trip() {
    let src = standard();
    let m = src.path("m.json");
    src.rmdev(&["export", "-o", m.to_str().unwrap()])
        .expect(0, "");
    let dst = standard();
    let o = dst.rmdev(&["--json", "match", "--from", m.to_str().unwrap()]);
    o.expect(0, "");
    let j = o.json();
    // 2 migratable types and 2 migratable mdevs; each accepted somewhere.
    assert_eq!(j["entries"].as_array().unwrap().len(), 4);
    // Through standard input too, offline (a fresh tree: the write checks
    // above overwrote the fake attributes with the last string written).
    let dst = standard();
    let o = Command::new(env!("CARGO_BIN_EXE_rmdev"))
        .arg("--root")
        .arg(dst.root())
        .args(["match", "--offline", "--from", "-"])
        .stdin(fs::File::open(&m).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

#[test]
fn migrate_save_load_refuse_before_touching_devices() {
    let t = standard();
    // Refused by the check: nothing happens, exit 1.
    t.refusing(&t.mdev_dir("vendor", U2));
    t.rmdev(&["migrate", U1, U2])
        .expect(1, "nothing was changed");
    // --force goes on to open the devices, which fake mdevs cannot.
    t.rmdev(&["migrate", "--force", U1, U2])
        .expect(2, &format!("open mdev {U1}"));
    t.rmdev(&["migrate", U1, U1]).expect(2, "the same mdev");
    t.rmdev(&["migrate", U1, "vendor/vendor-4m"])
        .expect(2, "is an mdev type");
    t.rmdev(&["migrate", U3, U1]).expect(2, "does not migrate");
    t.rmdev(&["migrate", "--max-rounds", "0", U1, U2])
        .expect(2, "max-rounds");

    // A save onto an existing file is refused before the device is
    // touched, unless --force (which here gets as far as opening it); the
    // file is kept either way.
    let kept = t.path("kept.bin");
    fs::write(&kept, b"an earlier save").unwrap();
    t.rmdev(&["save", U1, "-o", kept.to_str().unwrap()]).expect(
        2,
        "exists: the device was not touched (--force replaces it)",
    );
    t.rmdev(&["save", "--force", U1, "-o", kept.to_str().unwrap()])
        .expect(2, "open mdev");
    assert_eq!(fs::read(&kept).unwrap(), b"an earlier save");
    fs::remove_file(&kept).unwrap();

    // A save that cannot open its device leaves no file.
    let f = t.path("state.bin");
    t.rmdev(&["save", U1, "-o", f.to_str().unwrap()])
        .expect(2, "open mdev");
    assert!(!f.exists());
    assert_eq!(
        fs::read_dir(t.root())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial"))
            .count(),
        0
    );

    // Load refuses a file that is not a whole stream before opening the
    // device (a fake mdev would fail to open: the error says the file).
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("foreign", b"GIF89a not a stream".to_vec()),
        ("truncated header", b"RMDEVMIG\x01\x00".to_vec()),
    ] {
        fs::write(&f, &bytes).unwrap();
        let o = t.rmdev(&["load", U1, "-i", f.to_str().unwrap()]);
        o.expect(2, "not a whole rmdev migration stream");
        assert!(
            o.stderr.contains("the device was not touched"),
            "{what}: {o:#?}"
        );
    }
    t.rmdev(&["load", U1, "-i", "/nonexistent"])
        .expect(2, "/nonexistent");
    // A pipe or device could not be read twice (checked, then loaded).
    t.rmdev(&["load", U1, "-i", "/dev/null"])
        .expect(2, "not a regular file");
    // A FIFO without a writer is refused at once: the open does not wait
    // for a writer (which no signal would interrupt).
    let fifo = t.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: A valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut child = spawn(
        Command::new(env!("CARGO_BIN_EXE_rmdev"))
            .arg("--root")
            .arg(t.root())
            .args(["load", U1, "-i", fifo.to_str().unwrap()]),
    );
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("load -i FIFO still blocked after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

#[test]
fn help_man_and_completions() {
    let t = Tree::new();
    let o = t.rmdev(&["--help"]);
    o.expect(0, "");
    for cmd in [
        "list", "version", "check", "export", "match", "migrate", "save", "load",
    ] {
        assert!(o.stdout.contains(cmd), "--help lacks {cmd}");
    }
    assert!(o
        .stdout
        .contains("Exit status: 0 compatible or done, 1 incompatible, 2 usage"));
    let o = t.rmdev(&["man"]);
    o.expect(0, "");
    assert!(
        o.stdout.starts_with(".ie"),
        "{}",
        &o.stdout[..40.min(o.stdout.len())]
    );
    assert!(
        o.stdout.contains(".TH rmdev 8"),
        "section 8, like mdevctl's"
    );
    assert!(
        o.stdout.contains("rmdev\\-list(8)"),
        "the subcommands' pages are named"
    );
    let o = t.rmdev(&["man", "libvirt", "hook"]);
    o.expect(0, "");
    assert!(o.stdout.contains(".TH rmdev-libvirt-hook 8"));
    assert!(o.stdout.contains("\\-\\-libvirt\\-run"));
    t.rmdev(&["man", "nosuch"]).expect(
        2,
        "no manual page rmdev-nosuch(8); the pages: rmdev, rmdev-check",
    );
    let o = t.rmdev(&["completions", "bash"]);
    o.expect(0, "");
    assert!(o.stdout.contains("_rmdev()"));
    t.rmdev(&["completions", "nosuchshell"])
        .expect(2, "invalid value");
    t.rmdev(&["nosuchcommand"])
        .expect(2, "unrecognized subcommand");
    t.rmdev(&["--version"]).expect(0, "");
    // Usage errors are JSON too under --json.
    let o = t.rmdev(&["--json", "version"]);
    o.expect(2, "TARGET");
    assert_eq!(o.json()["exit_status"], 2);
}

/// A reader that goes away ends the tool quietly (SIGPIPE), not with a
/// panic (exit 101).
#[test]
fn closed_pipe() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let t = standard();
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rmdev"))
            .arg("--root")
            .arg(t.root())
            .args(["--json", "list"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let st = out.status;
        assert!(
            st.code() == Some(0) || st.signal() == Some(libc::SIGPIPE),
            "{st:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `rmdev man --dir` writes one section-8 page per command and
/// subcommand, each with its own options, and nothing else.
#[test]
fn man_pages_one_per_subcommand() {
    use clap::CommandFactory;
    let t = Tree::new();
    let dir = t.path("man8");
    fs::create_dir(&dir).unwrap();
    let o = t.rmdev(&["man", "--dir", dir.to_str().unwrap()]);
    o.expect(0, "");
    let mut want: Vec<(String, Vec<String>)> = Vec::new();
    fn walk(name: &str, cmd: &clap::Command, want: &mut Vec<(String, Vec<String>)>) {
        let longs = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        want.push((name.to_string(), longs));
        for sub in cmd.get_subcommands() {
            walk(&format!("{name}-{}", sub.get_name()), sub, want);
        }
    }
    walk("rmdev", &rmdev::cli::Cli::command(), &mut want);
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut names: Vec<String> = want.iter().map(|(n, _)| format!("{n}.8")).collect();
    names.sort();
    assert_eq!(files, names);
    assert!(names.contains(&"rmdev-libvirt-install-hook.8".to_string()));
    // Each listed on standard output.
    assert_eq!(o.stdout.lines().count(), names.len());
    for (name, longs) in want {
        let page = fs::read_to_string(dir.join(format!("{name}.8"))).unwrap();
        let th = format!(".TH {name} 8");
        assert!(page.contains(&th), "{name}: no '{th}'");
        for l in longs {
            let opt = format!("\\-\\-{}", l.replace('-', "\\-"));
            assert!(page.contains(&opt), "{name}.8 lacks --{l}");
        }
    }
}

/// `Documentation/rmdev.rst` documents every command and option the
/// binary has (read from clap's own definition, not from a list here).
#[test]
fn manual_covers_every_command_and_option() {
    use clap::CommandFactory;
    let doc = fs::read_to_string(common::repo_file("Documentation/rmdev.rst")).unwrap();
    let cli = rmdev::cli::Cli::command();
    let mut missing = Vec::new();
    for a in cli.get_arguments() {
        if let Some(l) = a.get_long() {
            if !doc.contains(&format!("--{l}")) {
                missing.push(format!("--{l}"));
            }
        }
    }
    // Every command and subcommand (`rmdev libvirt hook`), with its
    // options.
    let mut subs: Vec<(String, &clap::Command)> = Vec::new();
    for sub in cli.get_subcommands() {
        subs.push((sub.get_name().to_string(), sub));
        for s2 in sub.get_subcommands() {
            subs.push((format!("{} {}", sub.get_name(), s2.get_name()), s2));
        }
    }
    for (name, sub) in subs {
        if !doc.contains(&format!("rmdev {name}")) {
            missing.push(format!("rmdev {name}"));
        }
        for a in sub.get_arguments() {
            if let Some(l) = a.get_long() {
                if !doc.contains(&format!("--{l}")) {
                    missing.push(format!("{name} --{l}"));
                }
            }
            if let Some(s) = a.get_short() {
                if !doc.contains(&format!("``-{s}``")) {
                    missing.push(format!("{name} -{s}"));
                }
            }
        }
    }
    for status in ["``0``", "``1``", "``2``", "``130``"] {
        if !doc.contains(status) {
            missing.push(format!("exit status {status}"));
        }
    }
    assert!(
        missing.is_empty(),
        "Documentation/rmdev.rst lacks: {missing:?}"
    );
}
