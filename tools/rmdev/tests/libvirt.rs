// SPDX-License-Identifier: GPL-2.0

//! `rmdev libvirt` against fake trees, run as the real binary: annotate and
//! migrate with a fake `virsh` (a script that logs its arguments), the hook
//! with domain XML on standard input, a fake `/proc` (processes holding
//! VFIO nodes open) and a fake `/run/libvirt/qemu`, and install-hook.
//!
//! The kernel's write check is emulated as in `tests/cli.rs`: a regular
//! `migration_version` file accepts every write, one linked to `/dev/full`
//! refuses it (`ENOSPC`). Creating an mdev (a UUID written to a type's
//! `create`) is emulated by [`Kernel`], a thread that sees the UUID and
//! makes the device's sysfs directory and link, as the kernel would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const URI: &str = "urn:rmdev:libvirt:1";
/// UUIDs no mdev has.
const X1: &str = "0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const X2: &str = "1e3a2b4c-5d6e-4f70-8192-a3b4c5d6e7f8";

/// A domain XML as libvirt writes it (single quotes, its indentation),
/// with mdev hostdevs `(alias, uuid)` and, if given, rmdev metadata entries
/// `(uuid, alias, version)` as libvirt stores what annotate set.
fn domain_xml(hostdevs: &[(&str, &str)], meta: Option<&[(&str, &str, Option<&str>)]>) -> String {
    let mut s = String::from(
        "<domain type='kvm' id='3'>\n  <name>vm</name>\n  \
         <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>\n",
    );
    if let Some(entries) = meta {
        s += &format!(
            "  <metadata>\n    <rmdev:mdevs xmlns:rmdev=\"{URI}\" format=\"1\" host=\"src\">\n"
        );
        for (u, a, v) in entries {
            s += &format!("      <rmdev:mdev uuid=\"{u}\" alias=\"{a}\" type=\"vendor/vendor-4m\"");
            if let Some(v) = v {
                s += &format!(" migration_version=\"{v}\"");
            }
            s += "/>\n";
        }
        s += "    </rmdev:mdevs>\n  </metadata>\n";
    }
    s += "  <memory unit='KiB'>1048576</memory>\n  <devices>\n    \
          <emulator>/usr/bin/qemu-system-x86_64</emulator>\n";
    for (i, (a, u)) in hostdevs.iter().enumerate() {
        s += &format!(
            "    <hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' display='off'>\n      \
             <source>\n        <address uuid='{u}'/>\n      </source>\n      \
             <alias name='{a}'/>\n      \
             <address type='pci' domain='0x0000' bus='0x00' slot='0x0{}' function='0x0'/>\n    \
             </hostdev>\n",
            i + 5
        );
    }
    s += "  </devices>\n</domain>\n";
    s
}

/// The standard tree (`vendor` with types 4m and 16k, mdevs U1 and U2 of
/// 4m; `plain` with U3, not migratable), fake `proc` and `run` dirs, and
/// the 4m type out of instances, so that nothing is created unless a test
/// says so.
fn host() -> Tree {
    let t = standard();
    fs::create_dir_all(t.path("proc")).unwrap();
    fs::create_dir_all(t.path("run")).unwrap();
    t.available("vendor", "vendor-4m", 0)
        .available("vendor", "vendor-16k", 0)
        .available("plain", "plain-a", 0);
    t
}

/// Runs the hook for `op subop` on `xml`.
fn hook(t: &Tree, op: &str, subop: &str, xml: &[u8]) -> Out {
    let proc_dir = t.path("proc");
    let run = t.path("run");
    t.rmdev_in(
        &[
            "libvirt",
            "hook",
            "--proc",
            proc_dir.to_str().unwrap(),
            "--libvirt-run",
            run.to_str().unwrap(),
            "--",
            "vm",
            op,
            subop,
            "-",
        ],
        xml,
    )
}

fn migrate_begin(t: &Tree, xml: &str) -> Out {
    hook(t, "migrate", "begin", xml.as_bytes())
}

/// A process `pid` (`comm`) of the fake `/proc` holding `node` open.
fn holder(t: &Tree, pid: u32, comm: &str, node: &str) {
    let d = t.path(&format!("proc/{pid}"));
    fs::create_dir_all(d.join("fd")).unwrap();
    fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
    symlink("/dev/null", d.join("fd/0")).unwrap();
    symlink(node, d.join("fd/17")).unwrap();
}

/// Emulates the kernel's side of mdev creation: a UUID written to a
/// type's `create` becomes that type's mdev (sysfs directory, `mdev_type`
/// and `remove`, the bus link), with a `migration_version` that accepts
/// every write, or refuses every write (`refuse`).
struct Kernel {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kernel {
    fn start(t: &Tree, types: &[(&str, &str)], refuse: bool) -> Kernel {
        let stop = Arc::new(AtomicBool::new(false));
        let root = t.root().to_path_buf();
        let types: Vec<(String, String)> = types
            .iter()
            .map(|(p, i)| (p.to_string(), i.to_string()))
            .collect();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (p, id) in &types {
                    let create = root.join(format!(
                        "sys/devices/virtual/{p}/mdev_supported_types/{id}/create"
                    ));
                    let uuid = fs::read_to_string(&create).unwrap_or_default();
                    if uuid.is_empty() {
                        continue;
                    }
                    fs::write(&create, "").unwrap();
                    let d = root.join(format!("sys/devices/virtual/{p}/{uuid}"));
                    fs::create_dir_all(&d).unwrap();
                    symlink(format!("../mdev_supported_types/{id}"), d.join("mdev_type")).unwrap();
                    fs::write(d.join("remove"), "").unwrap();
                    if refuse {
                        symlink("/dev/full", d.join("migration_version")).unwrap();
                    } else {
                        fs::write(d.join("migration_version"), "created\n").unwrap();
                    }
                    symlink(
                        format!("../../../devices/virtual/{p}/{uuid}"),
                        root.join(format!("sys/bus/mdev/devices/{uuid}")),
                    )
                    .unwrap();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Kernel {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The UUIDs of the mdevs in the fake tree.
fn mdevs(t: &Tree) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(t.path("sys/bus/mdev/devices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn version_of(t: &Tree, uuid: &str) -> String {
    fs::read_to_string(t.mdev_dir("vendor", uuid).join("migration_version")).unwrap()
}

// ------------------------------------------------------------ hook ---

#[test]
fn other_ops_are_silent() {
    let t = host();
    let xml = domain_xml(
        &[("hostdev0", X1)],
        Some(&[(X1, "hostdev0", Some("v:t:1.0"))]),
    );
    for (op, sub) in [
        ("prepare", "begin"),
        ("start", "begin"),
        ("started", "begin"),
        ("stopped", "end"),
        ("release", "end"),
        ("migrate", "end"),
        ("restore", "end"),
        ("reconnect", "begin"),
        ("attach", "begin"),
    ] {
        // Whatever standard input holds, even nothing or garbage.
        for input in [xml.as_bytes(), b"", b"<not xml"] {
            let o = hook(&t, op, sub, input);
            assert_eq!(o.status, 0, "{op} {sub}: {o:#?}");
            assert_eq!(o.stdout, "", "{op} {sub}");
            assert_eq!(o.stderr, "", "{op} {sub}");
        }
    }
    // Fewer arguments than libvirt passes: nothing to do.
    for args in [
        &["libvirt", "hook"][..],
        &["libvirt", "hook", "vm", "migrate"],
    ] {
        let o = t.rmdev_in(args, xml.as_bytes());
        assert_eq!(
            (o.status, o.stdout.as_str(), o.stderr.as_str()),
            (0, "", "")
        );
    }
    // Standard input closed at once (nothing read) is fine too.
    let o = common::spawn(
        Command::new(env!("CARGO_BIN_EXE_rmdev"))
            .args(["libvirt", "hook", "--", "vm", "start", "begin", "-"])
            .stdin(std::process::Stdio::null()),
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
}

#[test]
fn compatible_target_leaves_the_xml_unchanged() {
    let t = host();
    t.iommu_group("vendor", U1, 42);
    let xml = domain_xml(
        &[("hostdev0", U1)],
        Some(&[(U1, "hostdev0", Some("vendor:4m:1.0"))]),
    );
    for op in ["migrate", "restore"] {
        // A process holding another group's node does not matter.
        let o = hook(&t, op, "begin", xml.as_bytes());
        o.expect(
            0,
            &format!("rmdev: hostdev hostdev0: mdev {U1} accepts 'vendor:4m:1.0'"),
        );
        assert_eq!(o.stdout, "", "empty standard output: the XML is unchanged");
    }
    // The check was the write: the target's attribute got the source's
    // version.
    assert_eq!(version_of(&t, U1), "vendor:4m:1.0\n");
    // Nothing was created.
    assert_eq!(mdevs(&t), [U1, U2, U3]);
}

#[test]
fn no_metadata_or_no_mdevs_changes_nothing() {
    let t = host();
    let o = migrate_begin(&t, &domain_xml(&[("hostdev0", U1)], None));
    o.expect(0, "domain 'vm' has no rmdev metadata");
    assert!(o.stderr.contains("nothing was checked"), "{o:#?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:#?}");
    assert_eq!(o.stdout, "");
    // The attribute was not written.
    assert_eq!(version_of(&t, U1), "vendor:4m:1.0\n");
    // A domain without mdev hostdevs: silent.
    let o = migrate_begin(&t, &domain_xml(&[], Some(&[])));
    assert_eq!(
        (o.status, o.stdout.as_str(), o.stderr.as_str()),
        (0, "", "")
    );
    // Hostdevs without a recorded version, or without an entry: not
    // checked, unchanged.
    let xml = domain_xml(
        &[("hostdev0", U1), ("hostdev1", X2)],
        Some(&[(U1, "hostdev0", None)]),
    );
    let o = migrate_begin(&t, &xml);
    o.expect(0, "hostdev hostdev0: its source mdev had no migration_version (recorded on host 'src'): not checked");
    o.expect(
        0,
        &format!("hostdev hostdev1: mdev {X2} has no entry in the rmdev metadata: not checked"),
    );
    assert_eq!(o.stdout, "");
}

#[test]
fn incompatible_target_moves_to_a_free_compatible_mdev() {
    let t = host();
    t.refusing(&t.mdev_dir("vendor", U1));
    let xml = domain_xml(
        &[("hostdev0", U1)],
        Some(&[(U1, "hostdev0", Some("vendor:4m:1.0"))]),
    );
    let o = migrate_begin(&t, &xml);
    o.expect(
        0,
        &format!(
            "rmdev: hostdev hostdev0: mdev {U1} refused it: ENOSPC (No space left on device); \
             using free mdev {U2} (vendor/vendor-4m), which accepts 'vendor:4m:1.0'"
        ),
    );
    // Byte for byte the same XML but the UUID, in the hostdev and in the
    // metadata entry.
    assert_eq!(xml.matches(U1).count(), 2);
    assert_eq!(o.stdout, xml.replace(U1, U2));
}

/// Another running domain, `other`, whose status XML (in libvirt's run
/// directory of the tree) names the mdev `uuid` as a hostdev.
fn other_domain_holds(t: &Tree, uuid: &str) {
    fs::write(
        t.path("run/other.xml"),
        format!(
            "<domstatus state='running' pid='99'>\n  <domain type='kvm' id='1'>\n    \
             <name>other</name>\n    <devices>\n      <hostdev mode='subsystem' type='mdev' \
             model='vfio-pci'>\n        <source>\n          <address uuid='{uuid}'/>\n        \
             </source>\n      </hostdev>\n    </devices>\n  </domain>\n</domstatus>\n"
        ),
    )
    .unwrap();
}

#[test]
fn busy_mdevs_are_not_chosen_and_a_type_gets_a_new_mdev() {
    let t = host();
    t.available("vendor", "vendor-4m", 1);
    t.iommu_group("vendor", U2, 7);
    // U2 is free by sysfs but its group is held open by a process.
    holder(&t, 4321, "qemu-system-x86", "/dev/vfio/7");
    // U1 is named by another running domain's status XML.
    other_domain_holds(&t, U1);
    let xml = domain_xml(
        &[("hostdev0", X1)],
        Some(&[(X1, "hostdev0", Some("vendor:4m:1.0"))]),
    );
    let _k = Kernel::start(&t, &[("vendor", "vendor-4m")], false);
    let o = migrate_begin(&t, &xml);
    o.expect(
        0,
        &format!("rmdev: hostdev hostdev0: no such mdev {X1}; created mdev "),
    );
    assert!(
        o.stderr
            .contains(" on vendor/vendor-4m, which accepts 'vendor:4m:1.0'"),
        "{o:#?}"
    );
    let now = mdevs(&t);
    assert_eq!(now.len(), 4, "{now:?}");
    let new = now
        .iter()
        .find(|u| ![U1, U2, U3].contains(&u.as_str()))
        .unwrap();
    assert_eq!(o.stdout, xml.replace(X1, new));
    // The type's write check came first, then the new device's.
    assert_eq!(version_of(&t, new), "vendor:4m:1.0\n");
    assert_eq!(
        fs::read_to_string(t.type_dir("vendor", "vendor-4m").join("migration_version")).unwrap(),
        "vendor:4m:1.0\n"
    );
    // Neither busy mdev was written to (U1 would accept, and comes first).
    assert_eq!(version_of(&t, U1), "vendor:4m:1.0\n");
}

#[test]
fn running_domains_and_vfio_cdevs_count_as_in_use() {
    let xml = domain_xml(
        &[("hostdev0", U1)],
        Some(&[(U1, "hostdev0", Some("vendor:4m:1.0"))]),
    );
    // This domain's own status file (a same-host migration) does not make
    // its mdev busy; a malformed one is skipped.
    let t = host();
    fs::write(
        t.path("run/vm.xml"),
        format!(
            "<domstatus><domain><name>vm</name><devices><hostdev type='mdev'><source>\
             <address uuid='{U1}'/></source></hostdev></devices></domain></domstatus>"
        ),
    )
    .unwrap();
    fs::write(t.path("run/broken.xml"), "<domstatus>").unwrap();
    migrate_begin(&t, &xml).expect(0, &format!("mdev {U1} accepts"));

    let t = host();
    t.refusing(&t.mdev_dir("vendor", U1));
    // U2 is named by another running domain's status XML.
    other_domain_holds(&t, U2);
    let o = migrate_begin(&t, &xml);
    o.expect(
        1,
        "no free mdev or type with available instances accepts it",
    );
    assert_eq!(o.stdout, "");
    // And a process holding the named mdev's VFIO cdev makes it busy.
    let t = host();
    fs::create_dir_all(t.mdev_dir("vendor", U1).join("vfio-dev/vfio3")).unwrap();
    holder(&t, 77, "qemu-kvm", "/dev/vfio/devices/vfio3");
    let o = migrate_begin(&t, &xml);
    o.expect(
        0,
        &format!(
            "hostdev hostdev0: mdev {U1} is in use: /dev/vfio/devices/vfio3 is held open by \
             process 77 (qemu-kvm); using free mdev {U2}"
        ),
    );
    assert_eq!(o.stdout, xml.replace(U1, U2));
    // The busy mdev was not even written to.
    assert_eq!(version_of(&t, U1), "vendor:4m:1.0\n");
}

#[test]
fn refusal_names_the_device_the_version_and_the_reason() {
    let t = host();
    t.refusing(&t.mdev_dir("vendor", U1));
    t.refusing(&t.mdev_dir("vendor", U2));
    // A type with room that refuses too.
    t.available("vendor", "vendor-4m", 2);
    t.refusing(&t.type_dir("vendor", "vendor-4m"));
    let xml = domain_xml(
        &[("hostdev0", U1)],
        Some(&[(U1, "hostdev0", Some("vendor:4m:1.1"))]),
    );
    let o = migrate_begin(&t, &xml);
    o.expect(
        1,
        &format!(
            "rmdev: hostdev hostdev0 (mdev {U1}): no local mdev accepts 'vendor:4m:1.1' (recorded \
             on host 'src'): mdev {U1} refused it: ENOSPC (No space left on device); no free mdev \
             or type with available instances accepts it"
        ),
    );
    o.expect(1, "rmdev: domain 'vm': refused (migrate begin)");
    assert_eq!(o.stdout, "");
    // Nothing was created.
    assert_eq!(
        fs::read_to_string(t.type_dir("vendor", "vendor-4m").join("create")).unwrap(),
        ""
    );
    // A UUID with no mdev here, and nothing else: "no such mdev".
    let o = hook(
        &t,
        "restore",
        "begin",
        domain_xml(
            &[("ua-gpu", X1)],
            Some(&[(X1, "ua-gpu", Some("vendor:4m:1.0"))]),
        )
        .as_bytes(),
    );
    o.expect(
        1,
        &format!(
            "hostdev ua-gpu (mdev {X1}): no local mdev accepts 'vendor:4m:1.0' (recorded on host \
             'src'): no such mdev {X1}; no free mdev"
        ),
    );
    o.expect(1, "refused (restore begin)");
}

#[test]
fn two_hostdevs_never_share_a_target() {
    // Both named mdevs missing; one free compatible mdev (U2) and a type
    // with room for one: one hostdev gets U2, the other a new mdev.
    let t = host();
    t.refusing(&t.mdev_dir("vendor", U1));
    t.available("vendor", "vendor-4m", 1);
    let meta = [
        (X1, "hostdev0", Some("vendor:4m:1.0")),
        (X2, "hostdev1", Some("vendor:4m:1.0")),
    ];
    let xml = domain_xml(&[("hostdev0", X1), ("hostdev1", X2)], Some(&meta));
    let k = Kernel::start(&t, &[("vendor", "vendor-4m")], false);
    let o = migrate_begin(&t, &xml);
    drop(k);
    o.expect(
        0,
        &format!("hostdev hostdev0: no such mdev {X1}; using free mdev {U2}"),
    );
    o.expect(
        0,
        &format!("hostdev hostdev1: no such mdev {X2}; created mdev "),
    );
    let new = mdevs(&t)
        .into_iter()
        .find(|u| ![U1, U2, U3].contains(&u.as_str()))
        .unwrap();
    assert_eq!(o.stdout, xml.replace(X1, U2).replace(X2, &new));

    // No room for the second: refused, and nothing is created for the
    // first either.
    let t = host();
    t.refusing(&t.mdev_dir("vendor", U1));
    let o = migrate_begin(&t, &xml);
    o.expect(
        1,
        &format!("hostdev hostdev1 (mdev {X2}): no local mdev accepts"),
    );
    assert!(!o.stderr.contains("hostdev hostdev0 (mdev"), "{o:#?}");
    assert_eq!(o.stdout, "");
    assert_eq!(mdevs(&t), [U1, U2, U3]);

    // A later hostdev's own (compatible) mdev is not given to an earlier
    // one that needs a place, though it comes first in UUID order.
    let t = host();
    t.refusing(&t.mdev_dir("vendor", U2));
    let xml = domain_xml(
        &[("hostdev0", X1), ("hostdev1", U1)],
        Some(&[
            (X1, "hostdev0", Some("vendor:4m:1.0")),
            (U1, "hostdev1", Some("vendor:4m:1.0")),
        ]),
    );
    let o = migrate_begin(&t, &xml);
    o.expect(
        1,
        &format!("hostdev hostdev0 (mdev {X1}): no local mdev accepts"),
    );
    o.expect(1, &format!("hostdev hostdev1: mdev {U1} accepts"));
    assert_eq!(o.stdout, "");
}

#[test]
fn same_mdev_named_twice_is_moved() {
    let t = host();
    let xml = domain_xml(
        &[("hostdev0", U1), ("hostdev1", U1)],
        Some(&[
            (U1, "hostdev0", Some("vendor:4m:1.0")),
            (X2, "hostdev1", Some("vendor:4m:1.0")),
        ]),
    );
    let o = migrate_begin(&t, &xml);
    o.expect(0, &format!("hostdev hostdev0: mdev {U1} accepts"));
    o.expect(
        0,
        &format!(
            "hostdev hostdev1: mdev {U1} is also named by hostdev hostdev0; using free mdev {U2}"
        ),
    );
    // Only hostdev1's address changes (its metadata entry, found by alias,
    // too); hostdev0's stays.
    let out = o.stdout.clone();
    assert_eq!(out.matches(U1).count(), 2, "{out}");
    assert_eq!(out.matches(U2).count(), 2, "{out}");
    assert_eq!(out.matches(X2).count(), 0, "{out}");
}

#[test]
fn a_created_mdev_that_refuses_is_removed() {
    let t = host();
    t.available("vendor", "vendor-4m", 1);
    t.refusing(&t.mdev_dir("vendor", U1));
    t.refusing(&t.mdev_dir("vendor", U2));
    let xml = domain_xml(
        &[("hostdev0", U1)],
        Some(&[(U1, "hostdev0", Some("vendor:4m:1.0"))]),
    );
    let k = Kernel::start(&t, &[("vendor", "vendor-4m")], true);
    let o = migrate_begin(&t, &xml);
    drop(k);
    o.expect(1, "refused it: ENOSPC");
    o.expect(1, "; removed the mdev ");
    assert_eq!(o.stdout, "");
    let new = mdevs(&t)
        .into_iter()
        .find(|u| ![U1, U2, U3].contains(&u.as_str()))
        .unwrap();
    // The fake kernel does not remove; the hook wrote "1" to remove.
    assert_eq!(
        fs::read_to_string(t.mdev_dir("vendor", &new).join("remove")).unwrap(),
        "1"
    );
}

#[test]
fn the_rest_of_the_xml_is_kept_byte_for_byte() {
    let t = host();
    t.refusing(&t.mdev_dir("vendor", U1));
    // Comments, CDATA, entities, both quote styles, CRLF line ends, odd
    // spacing, a processing instruction, non-ASCII text, attributes in
    // another order, and a guest-side <address> in the hostdev.
    let xml = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\r\n<!-- made by hand -->\r\n\
         <domain type=\"kvm\"   id='9'>\r\n<name>vm</name><description>caf\u{e9} &amp; \
         &lt;tea&gt; &#x263A;</description>\r\n<metadata>\r\n  <x:other xmlns:x='urn:x'>\
         <![CDATA[ <address uuid='{U1}'/> ]]></x:other>\r\n  <r:mdevs format='1' \
         xmlns:r='{URI}'><r:mdev   migration_version='vendor:4m:1.0' uuid = \"{U1}\" \
         alias='hostdev0'/><r:future a='b'/></r:mdevs>\r\n</metadata>\r\n<devices>\r\n\
         <?pi stays?>\r\n<hostdev type='mdev' mode='subsystem' model='vfio-pci'>\
         <source><address   uuid='{U1}'  /></source><alias name='hostdev0'/>\
         <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/></hostdev>\
         \r\n</devices>\r\n</domain>"
    );
    let o = migrate_begin(&t, &xml);
    o.expect(0, &format!("using free mdev {U2}"));
    // The CDATA's UUID is text, not an address: it stays.
    let mut want = xml.clone();
    let cdata = want.find(&format!("uuid='{U1}'/> ]]>")).unwrap();
    let meta = want.find(&format!("uuid = \"{U1}\"")).unwrap() + 8;
    let addr = want.find(&format!("uuid='{U1}'  /></source>")).unwrap() + 6;
    assert!(cdata < meta && meta < addr);
    want.replace_range(meta..meta + 36, U2);
    want.replace_range(addr..addr + 36, U2);
    assert_eq!(o.stdout, want);
    assert!(o
        .stdout
        .contains(&format!("<![CDATA[ <address uuid='{U1}'/> ]]>")));
}

#[test]
fn malformed_input_is_refused() {
    let t = host();
    let good = domain_xml(
        &[("hostdev0", U1)],
        Some(&[(U1, "hostdev0", Some("vendor:4m:1.0"))]),
    );
    let bad_version = format!("rmdev metadata: mdev {U1}: source version");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "malformed domain XML"),
        ("not XML", b"hello".to_vec(), "malformed domain XML"),
        ("truncated", good.as_bytes()[..good.len() / 2].to_vec(), "malformed domain XML"),
        ("not UTF-8", b"<domain>\xff</domain>".to_vec(), "not UTF-8"),
        ("another root", b"<network/>".to_vec(), "the root element is <network>, not <domain>"),
        (
            "a DTD",
            b"<!DOCTYPE d [<!ENTITY a 'b'>]><domain>&a;</domain>".to_vec(),
            "malformed domain XML",
        ),
        (
            "no source address",
            b"<domain><devices><hostdev mode='subsystem' type='mdev'><source/></hostdev></devices></domain>".to_vec(),
            "mdev hostdev #0 has no <source><address uuid=.../>",
        ),
        (
            "not a UUID",
            b"<domain><devices><hostdev mode='subsystem' type='mdev'><source><address uuid='x'/></source></hostdev></devices></domain>".to_vec(),
            "mdev hostdev #0: 'x' is not a UUID",
        ),
        (
            "a newer metadata format",
            good.replace("format=\"1\"", "format=\"2\"").into_bytes(),
            "rmdev metadata format '2' is not supported (this rmdev reads format 1)",
        ),
        (
            "a bad recorded version",
            good.replace("vendor:4m:1.0", "a&#9;b").into_bytes(),
            &bad_version,
        ),
        ("too large", vec![b' '; (16 << 20) + 1], "larger than 16 MiB"),
    ];
    for (what, input, want) in cases {
        let o = hook(&t, "migrate", "begin", &input);
        assert_eq!(o.status, 1, "{what}: {o:#?}");
        assert!(
            o.stderr.contains("rmdev: domain 'vm' (migrate begin): ") && o.stderr.contains(want),
            "{what}: want '{want}': {o:#?}"
        );
        assert_eq!(o.stdout, "", "{what}");
    }
    // Nothing was written on the way.
    assert_eq!(version_of(&t, U1), "vendor:4m:1.0\n");
}

// ----------------------------------------------- annotate, migrate ---

/// A fake virsh next to the tree: logs each call (a `CALL` line, then one
/// line per argument) and answers dominfo, dumpxml, metadata and migrate.
fn fake_virsh(t: &Tree, dominfo: &str, xml: &str) -> PathBuf {
    let p = t.path("virsh");
    fs::write(t.path("dominfo.txt"), dominfo).unwrap();
    fs::write(t.path("domain.xml"), xml).unwrap();
    common::write_executable(
        &p,
        r#"#!/bin/sh
d=$(dirname "$0")
{ echo CALL; for a in "$@"; do echo "$a"; done; } >> "$d/virsh.log"
[ "$1" = --connect ] && shift 2
case "$1" in
dominfo|dumpxml)
    if [ "$3" != vm ]; then echo "error: failed to get domain '$3'" >&2; exit 1; fi
    [ "$1" = dominfo ] && cat "$d/dominfo.txt" || cat "$d/domain.xml";;
metadata) [ -e "$d/metadata.fail" ] && { echo "error: metadata refused" >&2; exit 1; }; exit 0;;
migrate) echo "Migration: [100 %]"; exit 7;;
*) echo "error: unknown command '$1'" >&2; exit 1;;
esac
"#,
    );
    p
}

const RUNNING_PERSISTENT: &str = "Id:             3\nName:           vm\n\
    UUID:           c7a5fdbd-cdaf-9455-926a-d65c16db1809\nOS Type:        hvm\n\
    State:          running\nCPU(s):         2\nPersistent:     yes\nAutostart:      disable\n";

/// The calls the fake virsh got: each a list of arguments.
fn calls(t: &Tree) -> Vec<Vec<String>> {
    let log = fs::read_to_string(t.path("virsh.log")).unwrap_or_default();
    let mut v: Vec<Vec<String>> = Vec::new();
    for l in log.lines() {
        if l == "CALL" {
            v.push(Vec::new());
        } else if let Some(c) = v.last_mut() {
            c.push(l.to_string());
        }
    }
    v
}

#[test]
fn annotate_records_versions_in_the_metadata() {
    let t = host();
    let xml = domain_xml(&[("hostdev0", U1), ("ua-b", U3)], None);
    let v = fake_virsh(&t, RUNNING_PERSISTENT, &xml);
    let vs = v.to_str().unwrap();
    let o = t.rmdev(&["libvirt", "annotate", "--virsh", vs, "vm"]);
    o.expect(0, "");
    assert!(o.stdout.starts_with(&format!(
        "annotated domain 'vm' (live and config): 2 mdev hostdevs recorded under {URI}\n"
    )));
    assert!(o.stdout.contains(&format!(
        "  hostdev0 mdev {U1} vendor/vendor-4m 'vendor:4m:1.0'"
    )));
    assert!(o.stdout.contains(&format!(
        "  ua-b mdev {U3} plain/plain-a no migration_version: not checked on the target"
    )));
    let c = calls(&t);
    assert_eq!(c[0], ["dominfo", "--domain", "vm"]);
    assert_eq!(c[1], ["dumpxml", "--domain", "vm"]);
    let set = &c[2];
    assert_eq!(
        set[..7],
        ["metadata", "--domain", "vm", "--uri", URI, "--key", "rmdev"]
    );
    assert_eq!(set[7], "--set");
    let el = &set[8];
    assert!(el.starts_with("<mdevs format=\"1\""), "{el}");
    assert!(el.contains(&format!(
        "<mdev uuid=\"{U1}\" alias=\"hostdev0\" type=\"vendor/vendor-4m\" migration_version=\"vendor:4m:1.0\"/>"
    )));
    assert!(el.contains(&format!(
        "<mdev uuid=\"{U3}\" alias=\"ua-b\" type=\"plain/plain-a\"/>"
    )));
    assert_eq!(set[9..], ["--live", "--config"]);

    // What annotate sets, as libvirt stores it, is what the hook reads on
    // a target: round trip through a target tree.
    let stored = el
        .replace("<mdevs ", &format!("<rmdev:mdevs xmlns:rmdev=\"{URI}\" "))
        .replace("<mdev ", "<rmdev:mdev ")
        .replace("</mdevs>", "</rmdev:mdevs>");
    let with_meta = xml.replace(
        "  <memory",
        &format!("  <metadata>\n    {stored}\n  </metadata>\n  <memory"),
    );
    let dst = host();
    let o = migrate_begin(&dst, &with_meta);
    o.expect(
        0,
        &format!("hostdev hostdev0: mdev {U1} accepts 'vendor:4m:1.0'"),
    );
    o.expect(0, "hostdev ua-b: its source mdev had no migration_version");
    assert_eq!(o.stdout, "");

    // JSON; a transient domain (no --config); --connect.
    fs::remove_file(t.path("virsh.log")).unwrap();
    fs::write(
        t.path("dominfo.txt"),
        RUNNING_PERSISTENT.replace("Persistent:     yes", "Persistent:     no"),
    )
    .unwrap();
    let o = t.rmdev(&[
        "--json",
        "libvirt",
        "annotate",
        "--virsh",
        vs,
        "-c",
        "qemu:///system",
        "vm",
    ]);
    o.expect(0, "");
    let j = o.json();
    assert_eq!(j["uri"], URI);
    assert_eq!(j["format"], 1);
    assert_eq!(j["live"], true);
    assert_eq!(j["config"], false);
    assert_eq!(j["mdevs"][0]["uuid"], U1);
    assert_eq!(j["mdevs"][0]["parent"], "vendor");
    assert_eq!(j["mdevs"][0]["type"], "vendor-4m");
    assert!(j["mdevs"][1]["migration_version"].is_null());
    valid("libvirt-annotate", &j);
    let c = calls(&t);
    assert_eq!(c[0][..2], ["--connect", "qemu:///system"]);
    assert_eq!(c[2].last().unwrap(), "--live");
}

#[test]
fn annotate_errors() {
    let t = host();
    let v = fake_virsh(
        &t,
        RUNNING_PERSISTENT,
        &domain_xml(&[("hostdev0", X1)], None),
    );
    let vs = v.to_str().unwrap();
    t.rmdev(&["libvirt", "annotate", "--virsh", vs, "vm"])
        .expect(2, &format!("hostdev hostdev0: no mdev {X1} on this host"));
    t.rmdev(&["libvirt", "annotate", "--virsh", vs, "nosuch"])
        .expect(2, "error: failed to get domain 'nosuch'");
    t.rmdev(&["libvirt", "annotate", "--virsh", "/nonexistent/virsh", "vm"])
        .expect(2, "is libvirt's client installed?");
    fs::write(t.path("domain.xml"), "<domain>").unwrap();
    t.rmdev(&["libvirt", "annotate", "--virsh", vs, "vm"])
        .expect(2, "virsh dumpxml --domain vm: ");
    fs::write(t.path("domain.xml"), domain_xml(&[("hostdev0", U1)], None)).unwrap();
    fs::write(t.path("metadata.fail"), "").unwrap();
    t.rmdev(&["libvirt", "annotate", "--virsh", vs, "vm"])
        .expect(2, "error: metadata refused");
    // An attribute that cannot be read is not recorded as "none".
    fs::remove_file(t.path("metadata.fail")).unwrap();
    let a = t.mdev_dir("vendor", U1).join("migration_version");
    fs::remove_file(&a).unwrap();
    fs::create_dir(&a).unwrap();
    t.rmdev(&["libvirt", "annotate", "--virsh", vs, "vm"])
        .expect(2, &format!("{U1}/migration_version"));
}

#[test]
fn migrate_annotates_then_runs_virsh_migrate() {
    let t = host();
    let v = fake_virsh(
        &t,
        RUNNING_PERSISTENT,
        &domain_xml(&[("hostdev0", U1)], None),
    );
    let o = t.rmdev(&[
        "libvirt",
        "migrate",
        "--virsh",
        v.to_str().unwrap(),
        "vm",
        "qemu+ssh://dst/system",
        "--",
        "--persistent",
        "--verbose",
    ]);
    // virsh's exit status and output.
    assert_eq!(o.status, 7, "{o:#?}");
    assert_eq!(o.stdout, "Migration: [100 %]\n");
    assert!(o.stderr.contains("annotated domain 'vm'"), "{o:#?}");
    let c = calls(&t);
    assert_eq!(c.len(), 4);
    assert_eq!(c[2][0], "metadata");
    assert_eq!(
        c[3],
        [
            "migrate",
            "--live",
            "--domain",
            "vm",
            "--desturi",
            "qemu+ssh://dst/system",
            "--persistent",
            "--verbose"
        ]
    );
    // No migration when the annotation fails.
    fs::write(t.path("metadata.fail"), "").unwrap();
    fs::remove_file(t.path("virsh.log")).unwrap();
    t.rmdev(&[
        "libvirt",
        "migrate",
        "--virsh",
        v.to_str().unwrap(),
        "vm",
        "x",
    ])
    .expect(2, "metadata refused");
    assert!(calls(&t).iter().all(|c| c[0] != "migrate"));
}

// ---------------------------------------------------- install-hook ---

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_hook_is_atomic_idempotent_and_removable() {
    let t = host();
    let dir = t.path("etc/libvirt/hooks/qemu.d");
    let ds = dir.to_str().unwrap();
    let script = dir.join("50-rmdev");
    let bin = fs::canonicalize(env!("CARGO_BIN_EXE_rmdev")).unwrap();
    let o = t.rmdev(&["libvirt", "install-hook", "--dir", ds]);
    o.expect(0, "");
    assert!(o
        .stdout
        .contains(&format!("{}: installed", script.display())));
    assert!(o.stdout.contains("restart libvirtd") && o.stdout.contains("SIGHUP"));
    assert_eq!(mode(&script), 0o755);
    let text = fs::read_to_string(&script).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"));
    assert!(text.ends_with(&format!(
        "exec '{}' libvirt hook -- \"$@\"\n",
        bin.display()
    )));
    // Idempotent.
    let o = t.rmdev(&["libvirt", "install-hook", "--dir", ds]);
    assert!(o.stdout.contains("already installed, unchanged"), "{o:#?}");
    // Only the script in the directory (no temporary files left).
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["50-rmdev"]);
    // Another binary: updated.
    let other = t.path("bin/rmdev");
    fs::create_dir_all(other.parent().unwrap()).unwrap();
    fs::copy(&bin, &other).unwrap();
    let j = t
        .rmdev(&[
            "--json",
            "libvirt",
            "install-hook",
            "--dir",
            ds,
            "--binary",
            other.to_str().unwrap(),
        ])
        .json();
    assert_eq!(j["action"], "updated");
    let other_c = fs::canonicalize(&other).unwrap();
    assert_eq!(j["binary"], other_c.to_str().unwrap());
    assert!(fs::read_to_string(&script)
        .unwrap()
        .contains(&format!("exec '{}' ", other_c.display())));

    // The installed script runs the hook as libvirt would.
    let run = |op: &str, input: &str| {
        use std::io::Write;
        let mut c = common::spawn(
            Command::new(&script)
                .args(["vm", op, "begin", "-"])
                .stdin(std::process::Stdio::piped()),
        );
        let _ = c.stdin.take().unwrap().write_all(input.as_bytes());
        c.wait_with_output().unwrap()
    };
    let o = run("start", "");
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
    let o = run("migrate", &domain_xml(&[], None));
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(o.stdout.is_empty());
    let o = run("migrate", "<garbage");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("malformed domain XML"));

    // Removal, twice.
    let o = t.rmdev(&["libvirt", "install-hook", "--dir", ds, "--remove"]);
    o.expect(0, "");
    assert!(o.stdout.contains(": removed"));
    assert!(!script.exists());
    let o = t.rmdev(&["libvirt", "install-hook", "--dir", ds, "--remove"]);
    assert!(
        o.stdout.contains("not installed; nothing to remove"),
        "{o:#?}"
    );
}

#[test]
fn install_hook_errors() {
    let t = host();
    let dir = t.path("qemu.d");
    let ds = dir.to_str().unwrap();
    // A script rmdev did not write is neither replaced nor removed.
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("50-rmdev"), "#!/bin/sh\nexit 0\n").unwrap();
    t.rmdev(&["libvirt", "install-hook", "--dir", ds]).expect(
        2,
        "was not written by rmdev libvirt install-hook; not touched",
    );
    t.rmdev(&["libvirt", "install-hook", "--dir", ds, "--remove"])
        .expect(2, "not touched");
    assert_eq!(
        fs::read_to_string(dir.join("50-rmdev")).unwrap(),
        "#!/bin/sh\nexit 0\n"
    );
    fs::remove_file(dir.join("50-rmdev")).unwrap();
    t.rmdev(&[
        "libvirt",
        "install-hook",
        "--dir",
        ds,
        "--binary",
        "/nonexistent/rmdev",
    ])
    .expect(2, "/nonexistent/rmdev");
    let plain = t.path("plain-file");
    fs::write(&plain, "").unwrap();
    t.rmdev(&[
        "libvirt",
        "install-hook",
        "--dir",
        ds,
        "--binary",
        plain.to_str().unwrap(),
    ])
    .expect(2, "not an executable file");
    t.rmdev(&[
        "libvirt",
        "install-hook",
        "--dir",
        ds,
        "--remove",
        "--binary",
        "/x",
    ])
    .expect(2, "cannot be used with");
    // A directory that cannot be created.
    t.rmdev(&["libvirt", "install-hook", "--dir", "/dev/null/qemu.d"])
        .expect(2, "/dev/null/qemu.d");
    assert!(!dir.join("50-rmdev").exists());
}
