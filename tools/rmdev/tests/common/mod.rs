// SPDX-License-Identifier: GPL-2.0

//! What the host tests share: fake sysfs trees and running the binary.
//!
//! A fake `migration_version` that is a regular file accepts every write
//! and keeps what was written; one linked to `/dev/full` refuses every
//! write (`ENOSPC`), standing in for a kernel rule's errno.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::RwLock;

use serde_json::Value;

/// Starting a process and writing an executable take turns: a child forked
/// while another thread has a script open for writing keeps that
/// descriptor until its exec, and running the script meanwhile fails with
/// `ETXTBSY` (a flaky test).
static SPAWN: RwLock<()> = RwLock::new(());

/// Writes an executable script (see [`SPAWN`]).
pub(crate) fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let _turn = SPAWN.write().unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Starts `cmd` with its standard output and error piped (see [`SPAWN`]).
pub(crate) fn spawn(cmd: &mut Command) -> Child {
    let _turn = SPAWN.read().unwrap();
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub(crate) const U1: &str = "11111111-2222-4333-8444-555555555555";
pub(crate) const U2: &str = "66666666-7777-4888-9999-aaaaaaaaaaaa";
pub(crate) const U3: &str = "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff";

/// A fake sysfs tree.
pub(crate) struct Tree {
    pub(crate) dir: tempfile::TempDir,
}

impl Tree {
    pub(crate) fn new() -> Tree {
        let t = Tree {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(t.path("sys/class/mdev_bus")).unwrap();
        fs::create_dir_all(t.path("sys/bus/mdev/devices")).unwrap();
        t
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn parent(&self, name: &str) -> &Self {
        fs::create_dir_all(self.path(&format!("sys/devices/virtual/{name}/mdev_supported_types")))
            .unwrap();
        symlink(
            format!("../../devices/virtual/{name}"),
            self.path(&format!("sys/class/mdev_bus/{name}")),
        )
        .unwrap();
        self
    }

    pub(crate) fn type_dir(&self, parent: &str, id: &str) -> PathBuf {
        self.path(&format!(
            "sys/devices/virtual/{parent}/mdev_supported_types/{id}"
        ))
    }

    pub(crate) fn mdev_type(&self, parent: &str, id: &str, version: Option<&str>) -> &Self {
        let d = self.type_dir(parent, id);
        fs::create_dir_all(d.join("devices")).unwrap();
        fs::write(d.join("name"), format!("{id} name\n")).unwrap();
        fs::write(d.join("description"), "a test type\n").unwrap();
        fs::write(d.join("device_api"), "vfio-pci\n").unwrap();
        fs::write(d.join("available_instances"), "4\n").unwrap();
        fs::write(d.join("create"), "").unwrap();
        if let Some(v) = version {
            fs::write(d.join("migration_version"), format!("{v}\n")).unwrap();
        }
        self
    }

    pub(crate) fn mdev_dir(&self, parent: &str, uuid: &str) -> PathBuf {
        self.path(&format!("sys/devices/virtual/{parent}/{uuid}"))
    }

    pub(crate) fn mdev(&self, parent: &str, id: &str, uuid: &str, version: Option<&str>) -> &Self {
        let d = self.mdev_dir(parent, uuid);
        fs::create_dir_all(&d).unwrap();
        symlink(format!("../mdev_supported_types/{id}"), d.join("mdev_type")).unwrap();
        fs::write(d.join("remove"), "").unwrap();
        if let Some(v) = version {
            fs::write(d.join("migration_version"), format!("{v}\n")).unwrap();
        }
        symlink(
            format!("../../../devices/virtual/{parent}/{uuid}"),
            self.path(&format!("sys/bus/mdev/devices/{uuid}")),
        )
        .unwrap();
        self
    }

    /// Makes the attribute in `dir` refuse every write (ENOSPC).
    pub(crate) fn refusing(&self, dir: &Path) {
        let a = dir.join("migration_version");
        let _ = fs::remove_file(&a);
        symlink("/dev/full", a).unwrap();
    }

    /// Gives the mdev an IOMMU group link (to `/dev/vfio/<group>`).
    pub(crate) fn iommu_group(&self, parent: &str, uuid: &str, group: u32) -> &Self {
        symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            self.mdev_dir(parent, uuid).join("iommu_group"),
        )
        .unwrap();
        self
    }

    /// Sets a type's `available_instances`.
    pub(crate) fn available(&self, parent: &str, id: &str, n: u32) -> &Self {
        fs::write(
            self.type_dir(parent, id).join("available_instances"),
            format!("{n}\n"),
        )
        .unwrap();
        self
    }

    /// Runs rmdev with `stdin` on its standard input.
    pub(crate) fn rmdev_in(&self, args: &[&str], stdin: &[u8]) -> Out {
        use std::io::Write;
        let mut child = spawn(
            Command::new(env!("CARGO_BIN_EXE_rmdev"))
                .arg("--root")
                .arg(self.root())
                .args(args)
                .stdin(Stdio::piped()),
        );
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        // A writer thread: a hook that does not read must not block us.
        let w = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let o = child.wait_with_output().unwrap();
        let _ = w.join();
        Out {
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub(crate) fn rmdev(&self, args: &[&str]) -> Out {
        let o = spawn(
            Command::new(env!("CARGO_BIN_EXE_rmdev"))
                .arg("--root")
                .arg(self.root())
                .args(args)
                .stdin(Stdio::null()),
        )
        .wait_with_output()
        .unwrap();
        Out {
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) status: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    pub(crate) fn expect(&self, status: i32, stderr_has: &str) -> &Self {
        assert_eq!(self.status, status, "{self:#?}");
        assert!(
            self.stderr.contains(stderr_has),
            "stderr lacks '{stderr_has}': {self:#?}"
        );
        self
    }
}

/// Two parents: `vendor` with a migratable 4m type (two mdevs) and a 16k
/// type, and `plain` whose type does not migrate (no attribute).
pub(crate) fn standard() -> Tree {
    let t = Tree::new();
    t.parent("vendor")
        .mdev_type("vendor", "vendor-4m", Some("vendor:4m:1.0"))
        .mdev_type("vendor", "vendor-16k", Some("vendor:16k:1.0"))
        .mdev("vendor", "vendor-4m", U1, Some("vendor:4m:1.0"))
        .mdev("vendor", "vendor-4m", U2, Some("vendor:4m:1.0"));
    t.parent("plain")
        .mdev_type("plain", "plain-a", None)
        .mdev("plain", "plain-a", U3, None);
    t
}

/// Checks that `v` has `key` of JSON type `kind` ("string", "number",
/// "bool", "array", "object", "null", or "string|null").
pub(crate) fn has(v: &Value, key: &str, kind: &str) {
    let x = &v[key];
    let ok = kind.split('|').any(|k| match k {
        "string" => x.is_string(),
        "number" => x.is_number(),
        "bool" => x.is_boolean(),
        "array" => x.is_array(),
        "object" => x.is_object(),
        "null" => x.is_null(),
        _ => panic!("bad kind {k}"),
    });
    assert!(ok, "'{key}' should be {kind} in {v:#}");
}

/// A file of the repository, by its path from the top. The directory comes
/// from cargo when the test runs, not when it was built: the build cache is
/// shared between checkouts, and a test binary built in another one would
/// read that checkout's files.
pub(crate) fn repo_file(path: &str) -> std::path::PathBuf {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("run the tests with cargo test");
    std::path::Path::new(&dir).join("../..").join(path)
}

/// `Documentation/rmdev.schema.json`, which every `--json` output follows.
pub(crate) fn schema() -> std::path::PathBuf {
    repo_file("Documentation/rmdev.schema.json")
}

/// Validates `v` against the schema's definition `def`, panicking with
/// every error and the document.
pub(crate) fn valid(def: &str, v: &Value) {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let doc: Value = serde_json::from_str(&fs::read_to_string(schema()).unwrap()).unwrap();
    assert!(
        doc["$defs"].get(def).is_some(),
        "the schema has no definition '{def}'"
    );
    compiler.add_resource("urn:rmdev:test-schema", doc).unwrap();
    let idx = compiler
        .compile(&format!("urn:rmdev:test-schema#/$defs/{def}"), &mut schemas)
        .unwrap();
    if let Err(e) = schemas.validate(v, idx) {
        panic!("not a valid '{def}': {e:#}\n{v:#}");
    }
}
