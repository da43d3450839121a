// SPDX-License-Identifier: GPL-2.0

//! Every `--json` output (and the manifest `export` writes) against
//! `Documentation/rmdev.schema.json`, the documented shapes: on fake sysfs
//! trees here, and, under `make check`, what the lab's `t-rmdev` kept from
//! the real kernel (`RMDEV_JSON_DIR`: the migrate, save and load summaries
//! only a real device gives).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use serde_json::Value;

mod common;
use common::*;

fn stdout_json(o: &Out) -> Value {
    o.json()
}

#[test]
fn the_schema_is_json_schema() {
    // Every definition compiles (boon checks each against the 2020-12
    // metaschema).
    let doc: Value = serde_json::from_str(&fs::read_to_string(schema()).unwrap()).unwrap();
    let defs = doc["$defs"].as_object().unwrap();
    assert!(defs.len() >= 15);
    for def in defs.keys() {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler
            .add_resource("urn:rmdev:test-schema", doc.clone())
            .unwrap();
        compiler
            .compile(&format!("urn:rmdev:test-schema#/$defs/{def}"), &mut schemas)
            .unwrap_or_else(|e| panic!("{def}: {e}"));
    }
    // And it refuses what it should: a migration_version as an object.
    let mut bad: Value = serde_json::json!({"parents": [], "mdevs": [{
        "uuid": U1, "parent": "p", "type": "t", "path": "/x",
        "migration_version": {"status": "present", "value": "v:t:1.0"},
        "in_use": null, "migration_flags": null, "migration_flags_names": null,
        "migration_flags_error": "x"}]});
    let r = std::panic::catch_unwind(|| valid("list", &bad));
    assert!(
        r.is_err(),
        "the old object shape of migration_version validates"
    );
    bad["mdevs"][0]["migration_version"] = "v:t:1.0".into();
    valid("list", &bad);
    // A stopped migration's error, as the CLI prints it (the lab's
    // t-rmdev checks a real one).
    let failed = serde_json::json!({
        "error": "migration failed: ...", "exit_status": 2,
        "failure": {"operation": "migration", "cause": "step",
                    "step": "target to STOP (end of the stream)", "errno_name": "EINVAL",
                    "source": {"state": "RUNNING", "state_errno_name": null, "reset": null},
                    "target": {"state": "RUNNING", "state_errno_name": null, "reset": true}}});
    valid("error", &failed);
    let mut lost = failed.clone();
    lost["failure"]["target"] = serde_json::json!(
        {"state": null, "state_errno_name": "ENODEV", "reset": false});
    lost["failure"]["source"] = Value::Null;
    valid("error", &lost);
    let mut wrong = failed;
    wrong["failure"]["cause"] = "signal".into();
    assert!(std::panic::catch_unwind(|| valid("error", &wrong)).is_err());
}

#[test]
fn every_command_on_a_fake_tree() {
    let t = standard();
    // An attribute that cannot be read (a directory): null and why.
    let a = t.type_dir("vendor", "vendor-16k").join("migration_version");
    fs::remove_file(&a).unwrap();
    fs::create_dir(&a).unwrap();
    let j = stdout_json(&t.rmdev(&["--json", "list"]));
    valid("list", &j);
    let ty = &j["parents"][1]["types"][0];
    assert_eq!(ty["type"], "vendor-16k");
    assert!(ty["migration_version"].is_null());
    assert!(ty["migration_version_error"].is_string());
    valid(
        "list",
        &stdout_json(&t.rmdev(&["--json", "list", "--probe"])),
    );
    valid(
        "list",
        &stdout_json(&t.rmdev(&["--json", "list", "-u", U1])),
    );
    fs::remove_dir(&a).unwrap();
    fs::write(&a, "vendor:16k:1.0\n").unwrap();

    for args in [
        vec!["--json", "migration-version", U1],
        vec![
            "--json",
            "migration-version",
            "-p",
            "vendor",
            "-t",
            "vendor-16k",
        ],
    ] {
        valid("migration-version", &stdout_json(&t.rmdev(&args)));
    }
    let o = t.rmdev(&["--json", "check", U1, U2]);
    o.expect(0, "");
    valid("check", &o.json());
    let o = t.rmdev(&["--json", "check", "--offline", U1, "vendor/vendor-16k"]);
    o.expect(1, "");
    valid("check", &o.json());
    let m = t.path("m.json");
    t.rmdev(&["export", "-o", m.to_str().unwrap()])
        .expect(0, "");
    let manifest: Value = serde_json::from_str(&fs::read_to_string(&m).unwrap()).unwrap();
    valid("manifest", &manifest);
    valid("manifest", &stdout_json(&t.rmdev(&["--json", "export"])));
    for offline in [false, true] {
        let mut args = vec!["--json", "match", "--from", m.to_str().unwrap()];
        if offline {
            args.push("--offline");
        }
        let o = t.rmdev(&args);
        valid("match", &o.json());
    }

    t.refusing(&t.mdev_dir("vendor", U2));
    let o = t.rmdev(&["--json", "check", U1, U2]);
    o.expect(1, "");
    valid("check", &o.json());

    // Errors: usage, missing things, and a migrate refused by its check
    // (with the verdict).
    for (args, status) in [
        (vec!["--json", "migration-version"], 2),
        (vec!["--json", "migration-version", "1234"], 2),
        (vec!["--json", "nosuchcommand"], 2),
        (vec!["--json", "migrate", U1, U2], 1),
        (vec!["--json", "migrate", "--force", U1, U2], 2),
    ] {
        let o = t.rmdev(&args);
        assert_eq!(o.status, status, "{args:?}: {o:#?}");
        let j = o.json();
        valid("error", &j);
        assert_eq!(j["exit_status"], status);
        assert_eq!(j.get("verdict").is_some(), status == 1, "{args:?}: {j:#}");
    }
}

#[test]
fn libvirt_install_hook() {
    let t = Tree::new();
    let dir = t.path("qemu.d");
    let d = dir.to_str().unwrap();
    let o = t.rmdev(&[
        "--json",
        "libvirt",
        "install-hook",
        "--dir",
        d,
        "--binary",
        env!("CARGO_BIN_EXE_rmdev"),
    ]);
    o.expect(0, "");
    valid("libvirt-install-hook", &o.json());
    let o = t.rmdev(&["--json", "libvirt", "install-hook", "--dir", d, "--remove"]);
    o.expect(0, "");
    valid("libvirt-install-hook", &o.json());
}

/// What the lab's t-rmdev kept (make check sets RMDEV_JSON_DIR after the
/// in-VM tests): each file must be there and valid.
#[test]
fn lab_outputs() {
    let Some(dir) = std::env::var_os("RMDEV_JSON_DIR") else {
        eprintln!("RMDEV_JSON_DIR unset: the lab's outputs are checked by make check");
        return;
    };
    let dir = Path::new(&dir);
    for (file, def) in [
        ("list-probe", "list"),
        ("check-refused", "check"),
        ("migrate", "summary"),
        ("save", "summary"),
        ("load", "summary"),
        ("load-refused", "error"),
    ] {
        let p = dir.join(format!("{file}.json"));
        let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        valid(def, &v);
    }
}
