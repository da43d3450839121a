// SPDX-License-Identifier: GPL-2.0

//! libvirt integration: the mdev compatibility check inside libvirt's
//! migration and restore path (`Documentation/rmdev.rst`, "libvirt").
//!
//! libvirt itself checks nothing about an mdev's state format; a target
//! that cannot load it fails late, while the stream is loaded. libvirt has
//! no source-side hook, but it carries a domain's `<metadata>` through
//! migrations and save images, and it runs the target's qemu hook with
//! `migrate begin` (incoming migration) and `restore begin` (restore) on the
//! domain XML, before it looks for the mdev; the hook may refuse (exit
//! non-zero) or rewrite the XML (standard output), and a hostdev's mdev
//! UUID is not part of libvirt's ABI check.
//!
//! So:
//!
//! - [`annotate`] (source host) records every mdev hostdev's
//!   `migration_version` in the domain's metadata, under [`NS_URI`], with
//!   `virsh metadata`;
//! - [`hook`] (target host) checks each recorded version against the mdev
//!   the XML names, by the target's own write check, and when that mdev
//!   cannot take it, picks a free compatible mdev or creates one on a
//!   compatible type and rewrites the UUID in place (every other byte of
//!   the XML is kept), or refuses with the reason;
//! - [`install_hook`] writes the hook script into libvirt's `qemu.d`.
//!
//! The metadata element, format [`FORMAT`] (as virsh sets it; libvirt puts
//! every element into the namespace, prefix [`NS_KEY`]):
//!
//! ```xml
//! <rmdev:mdevs xmlns:rmdev="urn:rmdev:libvirt:1" format="1" host="src">
//!   <rmdev:mdev uuid="..." alias="hostdev0" type="PARENT/TYPE"
//!               migration_version="..."/>
//! </rmdev:mdevs>
//! ```

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::compat;
use crate::error::{describe, Error, Result};
use crate::sysfs::{is_uuid, Holders, Mdev, MdevType, Sysfs, Target, VersionAttr};
use crate::wholefile;

/// The metadata namespace URI (fixed; the schema's version is the
/// `format` attribute).
pub const NS_URI: &str = "urn:rmdev:libvirt:1";
/// The namespace prefix (`virsh metadata --key`).
pub const NS_KEY: &str = "rmdev";
/// The metadata format this rmdev writes and reads.
pub const FORMAT: u32 = 1;
/// The largest domain XML read (bytes).
pub const MAX_XML: u64 = 16 << 20;
/// The most XML nodes parsed.
const MAX_NODES: u32 = 1_000_000;
/// The hook script's directory by default.
pub const HOOK_DIR: &str = "/etc/libvirt/hooks/qemu.d";
/// The hook script's name in it (libvirt runs `qemu.d` scripts in
/// alphabetical order).
pub const HOOK_FILE: &str = "50-rmdev";
/// The line that marks a hook script as written by rmdev.
const HOOK_MARK: &str = "# Written by rmdev libvirt install-hook.";
/// How long a created mdev may take to appear.
const CREATE_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- XML ---

/// Parses `text` as XML, without DTDs and with a node limit.
fn parse_xml(text: &str) -> std::result::Result<roxmltree::Document<'_>, String> {
    let opt = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(text, opt).map_err(|e| e.to_string())
}

/// Whether `n` is the element `name` in no namespace (libvirt's own).
fn is_el(n: &roxmltree::Node<'_, '_>, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name && n.tag_name().namespace().is_none()
}

/// Whether `n` is the element `name` in rmdev's namespace.
fn is_ours(n: &roxmltree::Node<'_, '_>, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some(NS_URI)
}

fn child<'a, 'i>(n: &roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| is_el(c, name))
}

/// The value of attribute `name` (no namespace) and its byte range in
/// `text`, checked to be the value's own bytes (no character references),
/// so that it can be replaced in place.
fn attr_range(
    text: &str,
    n: &roxmltree::Node<'_, '_>,
    name: &str,
) -> std::result::Result<Option<(String, Range<usize>)>, String> {
    let Some(a) = n
        .attributes()
        .find(|a| a.name() == name && a.namespace().is_none())
    else {
        return Ok(None);
    };
    let r = a.range_value();
    if text.get(r.clone()) != Some(a.value()) {
        return Err(format!(
            "attribute {name}='{}' uses character references: cannot rewrite it in place",
            a.value().escape_debug()
        ));
    }
    Ok(Some((a.value().to_string(), r)))
}

/// Escapes `s` for an XML attribute value.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// `text` with each range replaced; `None` if ranges overlap or are not on
/// character boundaries.
fn splice(text: &str, mut edits: Vec<(Range<usize>, String)>) -> Option<String> {
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (r, s) in edits {
        out.push_str(text.get(at..r.start)?);
        out.push_str(&s);
        at = r.end;
    }
    out.push_str(text.get(at..)?);
    Some(out)
}

/// An mdev hostdev of a domain XML:
/// `<hostdev mode='subsystem' type='mdev'><source><address uuid='...'/>`.
#[derive(Clone, Debug)]
pub struct Hostdev {
    /// Its place among the domain's mdev hostdevs, from 0.
    pub index: usize,
    /// `<alias name=.../>` (live XML has one).
    pub alias: Option<String>,
    /// The mdev's UUID.
    pub uuid: String,
    /// The UUID's bytes in the XML.
    pub uuid_range: Range<usize>,
    /// The `model` attribute (`vfio-pci`).
    pub model: Option<String>,
}

impl Hostdev {
    /// How messages name it: its alias, or `#N`.
    pub fn label(&self) -> String {
        self.alias
            .clone()
            .unwrap_or_else(|| format!("#{}", self.index))
    }
}

/// The `<domain>` element of a domain XML.
fn domain_of<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
) -> std::result::Result<roxmltree::Node<'a, 'i>, String> {
    let root = doc.root_element();
    if is_el(&root, "domain") {
        Ok(root)
    } else {
        Err(format!(
            "the root element is <{}>, not <domain>",
            root.tag_name().name()
        ))
    }
}

/// Every mdev hostdev in `domain/devices`.
fn mdev_hostdevs(
    text: &str,
    domain: &roxmltree::Node<'_, '_>,
) -> std::result::Result<Vec<Hostdev>, String> {
    let mut v = Vec::new();
    let Some(devices) = child(domain, "devices") else {
        return Ok(v);
    };
    for h in devices.children().filter(|c| is_el(c, "hostdev")) {
        if h.attribute("mode") != Some("subsystem") || h.attribute("type") != Some("mdev") {
            continue;
        }
        let index = v.len();
        let alias = child(&h, "alias").and_then(|a| a.attribute("name").map(str::to_string));
        let label = alias.clone().unwrap_or_else(|| format!("#{index}"));
        let addr = child(&h, "source").and_then(|s| child(&s, "address"));
        let (uuid, uuid_range) = addr
            .map(|a| attr_range(text, &a, "uuid"))
            .transpose()?
            .flatten()
            .ok_or_else(|| format!("mdev hostdev {label} has no <source><address uuid=.../>"))?;
        if !is_uuid(&uuid) {
            return Err(format!(
                "mdev hostdev {label}: '{}' is not a UUID",
                uuid.escape_debug()
            ));
        }
        v.push(Hostdev {
            index,
            alias,
            uuid,
            uuid_range,
            model: h.attribute("model").map(str::to_string),
        });
    }
    Ok(v)
}

/// One `<rmdev:mdev>` entry of the metadata, as read.
#[derive(Clone, Debug)]
pub struct MetaEntry {
    /// The source mdev's UUID.
    pub uuid: String,
    /// Its bytes in the XML.
    pub uuid_range: Range<usize>,
    /// The hostdev's alias on the source.
    pub alias: Option<String>,
    /// `PARENT/TYPE` on the source.
    pub mdev_type: Option<String>,
    /// The source mdev's `migration_version`; `None` when it had none.
    pub migration_version: Option<String>,
}

/// The rmdev metadata of a domain XML, as read.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// The source host's name, if recorded.
    pub host: Option<String>,
    /// The entries.
    pub entries: Vec<MetaEntry>,
}

/// The rmdev metadata in `domain/metadata`, if any. Elements and
/// attributes this rmdev does not know are ignored; another `format` is
/// refused.
fn metadata(
    text: &str,
    domain: &roxmltree::Node<'_, '_>,
) -> std::result::Result<Option<Metadata>, String> {
    let Some(mdevs) =
        child(domain, "metadata").and_then(|m| m.children().find(|c| is_ours(c, "mdevs")))
    else {
        return Ok(None);
    };
    match mdevs.attribute("format") {
        Some(f) if f == FORMAT.to_string() => {}
        Some(f) => {
            return Err(format!(
                "rmdev metadata format '{}' is not supported (this rmdev reads format {FORMAT})",
                f.escape_debug()
            ))
        }
        None => return Err("rmdev metadata without a format attribute".into()),
    }
    let mut entries = Vec::new();
    for m in mdevs.children().filter(|c| is_ours(c, "mdev")) {
        let (uuid, uuid_range) = attr_range(text, &m, "uuid")?
            .ok_or_else(|| "rmdev metadata: an <mdev> without uuid".to_string())?;
        if !is_uuid(&uuid) {
            return Err(format!(
                "rmdev metadata: '{}' is not a UUID",
                uuid.escape_debug()
            ));
        }
        let migration_version = match m.attribute("migration_version") {
            Some(v) => Some(
                compat::validate(v)
                    .map_err(|e| format!("rmdev metadata: mdev {uuid}: {e}"))?
                    .to_string(),
            ),
            None => None,
        };
        entries.push(MetaEntry {
            uuid,
            uuid_range,
            alias: m.attribute("alias").map(str::to_string),
            mdev_type: m.attribute("type").map(str::to_string),
            migration_version,
        });
    }
    Ok(Some(Metadata {
        host: mdevs.attribute("host").map(str::to_string),
        entries,
    }))
}

// ------------------------------------------------------ annotate ---

/// One mdev recorded by [`annotate`]. In JSON it is an mdev like every
/// command's: `uuid`, `parent`, `type` (the type's directory name) and
/// `migration_version`, with the hostdev's `alias`.
#[derive(Clone, Debug, Serialize)]
pub struct Recorded {
    /// The mdev's UUID.
    pub uuid: String,
    /// The hostdev's alias.
    pub alias: Option<String>,
    /// Its parent's name.
    pub parent: String,
    /// Its type's directory name.
    #[serde(rename = "type")]
    pub type_id: String,
    /// Its `migration_version`; `None`: it has none (not checked on the
    /// target).
    pub migration_version: Option<String>,
}

impl Recorded {
    /// Its type as `PARENT/TYPE` (the metadata's `type` attribute).
    pub fn type_label(&self) -> String {
        format!("{}/{}", self.parent, self.type_id)
    }
}

/// The metadata element [`annotate`] sets (without namespace: libvirt
/// puts every element into [`NS_URI`]).
pub fn metadata_element(host: &str, mdevs: &[Recorded]) -> String {
    let mut s = format!("<mdevs format=\"{FORMAT}\"");
    if !host.is_empty() {
        s += &format!(" host=\"{}\"", escape(host));
    }
    if mdevs.is_empty() {
        return s + "/>";
    }
    s += ">";
    for m in mdevs {
        s += &format!("<mdev uuid=\"{}\"", escape(&m.uuid));
        if let Some(a) = &m.alias {
            s += &format!(" alias=\"{}\"", escape(a));
        }
        s += &format!(" type=\"{}\"", escape(&m.type_label()));
        if let Some(v) = &m.migration_version {
            s += &format!(" migration_version=\"{}\"", escape(v));
        }
        s += "/>";
    }
    s + "</mdevs>"
}

/// How to run virsh.
#[derive(Clone, Debug)]
pub struct Virsh {
    /// The program.
    pub program: PathBuf,
    /// `--connect URI`, if given.
    pub connect: Option<String>,
}

/// What `virsh dominfo` says.
#[derive(Clone, Copy, Debug)]
pub struct DomInfo {
    /// Running (or paused): not "shut off".
    pub active: bool,
    /// Defined (a persistent configuration exists).
    pub persistent: bool,
}

impl Virsh {
    /// `virsh [--connect URI] ARGS` as a command.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(&self.program);
        if let Some(u) = &self.connect {
            c.arg("--connect").arg(u);
        }
        c.args(args);
        c
    }

    /// Runs virsh; its standard output, or an error with its standard
    /// error.
    fn run(&self, args: &[&str]) -> Result<String> {
        let what = format!("{} {}", self.program.display(), args.join(" "));
        let o = self.command(args).output().map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                " (is libvirt's client installed? --virsh names another)"
            } else {
                ""
            };
            Error::io(format!("{}{hint}", self.program.display()), e)
        })?;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            let status = o
                .status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| format!("exit status {c}"));
            return Err(Error::Io {
                path: what,
                source: io::Error::other(format!("failed ({status}): {}", err.trim())),
            });
        }
        String::from_utf8(o.stdout).map_err(|_| Error::Io {
            path: what,
            source: io::Error::other("output is not UTF-8"),
        })
    }

    /// `virsh dumpxml --domain DOMAIN` (the live XML of a running domain).
    pub fn dumpxml(&self, domain: &str) -> Result<String> {
        self.run(&["dumpxml", "--domain", domain])
    }

    /// `virsh dominfo --domain DOMAIN`: its state and persistence.
    pub fn dominfo(&self, domain: &str) -> Result<DomInfo> {
        let out = self.run(&["dominfo", "--domain", domain])?;
        let field = |name: &str| {
            out.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let state = field("State").ok_or_else(|| Error::Io {
            path: format!("virsh dominfo --domain {domain}"),
            source: io::Error::other("no State in its output"),
        })?;
        Ok(DomInfo {
            active: state != "shut off",
            persistent: field("Persistent").as_deref() == Some("yes"),
        })
    }

    /// `virsh metadata --domain DOMAIN --uri NS_URI --key rmdev --set XML`
    /// with `--live` and/or `--config`.
    pub fn set_metadata(&self, domain: &str, xml: &str, live: bool, config: bool) -> Result<()> {
        let mut args = vec![
            "metadata", "--domain", domain, "--uri", NS_URI, "--key", NS_KEY, "--set", xml,
        ];
        if live {
            args.push("--live");
        }
        if config {
            args.push("--config");
        }
        self.run(&args).map(|_| ())
    }
}

/// What [`annotate`] recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Annotation {
    /// The domain.
    pub domain: String,
    /// The namespace URI.
    pub uri: &'static str,
    /// The metadata format.
    pub format: u32,
    /// Set in the live definition.
    pub live: bool,
    /// Set in the persistent definition.
    pub config: bool,
    /// The mdevs recorded.
    pub mdevs: Vec<Recorded>,
    /// The element set.
    pub xml: String,
}

/// Records the `migration_version` of every mdev hostdev of `domain` (its
/// live XML) in its metadata: live if it runs, and in its persistent
/// definition too if it has one. An mdev without the attribute is recorded
/// without a version (the target's hook does not check it); one that is
/// missing here, or whose attribute cannot be read, fails.
pub fn annotate(sys: &Sysfs, virsh: &Virsh, domain: &str) -> Result<Annotation> {
    let info = virsh.dominfo(domain)?;
    let xml = virsh.dumpxml(domain)?;
    let bad = |e: String| Error::Usage(format!("virsh dumpxml --domain {domain}: {e}"));
    let doc = parse_xml(&xml).map_err(bad)?;
    let dom = domain_of(&doc).map_err(bad)?;
    let hostdevs = mdev_hostdevs(&xml, &dom).map_err(bad)?;
    let mut mdevs = Vec::new();
    for h in &hostdevs {
        let m = sys.mdev(&h.uuid).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "hostdev {}: no mdev {} on this host",
                h.label(),
                h.uuid
            )),
            e => e,
        })?;
        let migration_version = match &m.migration_version {
            VersionAttr::Present(v) => Some(compat::validate(v)?.to_string()),
            VersionAttr::Absent => None,
            VersionAttr::Unreadable(e) => {
                return Err(Error::io(
                    m.path.join("migration_version"),
                    io::Error::other(e.clone()),
                ))
            }
        };
        mdevs.push(Recorded {
            uuid: h.uuid.clone(),
            alias: h.alias.clone(),
            parent: m.parent.clone(),
            type_id: m.type_id.clone(),
            migration_version,
        });
    }
    let element = metadata_element(&crate::manifest::hostname(), &mdevs);
    let (live, config) = (info.active, info.persistent);
    virsh.set_metadata(domain, &element, live, config)?;
    Ok(Annotation {
        domain: domain.to_string(),
        uri: NS_URI,
        format: FORMAT,
        live,
        config,
        mdevs,
        xml: element,
    })
}

// ---------------------------------------------------------- hook ---

/// Whether the hook acts on `OP SUBOP`: an incoming migration's or a
/// restore's first call, the ones whose standard output may replace the
/// domain XML.
pub fn hook_acts(op: &str, subop: &str) -> bool {
    matches!((op, subop), ("migrate", "begin") | ("restore", "begin"))
}

/// Reads a domain XML to its end (at most [`MAX_XML`] bytes, UTF-8).
pub fn read_xml(r: impl Read) -> Result<String> {
    let mut buf = Vec::new();
    r.take(MAX_XML + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("standard input", e))?;
    if buf.len() as u64 > MAX_XML {
        return Err(Error::Usage(format!(
            "the domain XML is larger than {} MiB",
            MAX_XML >> 20
        )));
    }
    String::from_utf8(buf).map_err(|e| {
        Error::Usage(format!(
            "the domain XML is not UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Where the hook looks: sysfs, `/proc` (who holds a VFIO node open) and
/// libvirt's run directory (the status XML of running domains).
#[derive(Clone, Debug)]
pub struct HostView {
    /// The sysfs tree.
    pub sys: Sysfs,
    /// `/proc`.
    pub proc_dir: PathBuf,
    /// `/run/libvirt/qemu`.
    pub run_dir: PathBuf,
}

/// Who uses which mdev: processes holding VFIO nodes open, and running
/// domains naming mdevs. Read without opening any device.
struct Users {
    /// The processes holding VFIO nodes open.
    holders: Holders,
    /// Lower-case mdev UUID → the running domain naming it.
    domains: HashMap<String, String>,
}

impl Users {
    fn scan(view: &HostView, own: &str) -> Users {
        Users {
            holders: Holders::scan(&view.proc_dir),
            domains: scan_domains(&view.run_dir, own),
        }
    }

    /// Why `m` is not free, if it is not.
    fn busy(&self, m: &Mdev) -> Option<String> {
        self.holders.of(m).or_else(|| {
            self.domains
                .get(&m.uuid.to_ascii_lowercase())
                .map(|d| format!("in use by running domain '{d}'"))
        })
    }
}

/// The mdevs named by running domains' status XML (`<run_dir>/*.xml`),
/// except domain `own`'s. Unreadable or malformed files are skipped: this
/// is a second opinion after the `/proc` scan.
fn scan_domains(run_dir: &Path, own: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let Ok(dir) = fs::read_dir(run_dir) else {
        return map;
    };
    for e in dir.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("xml") {
            continue;
        }
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if stem == own {
            continue;
        }
        let Ok(text) = fs::File::open(&p).and_then(|f| {
            let mut s = String::new();
            f.take(MAX_XML).read_to_string(&mut s).map(|_| s)
        }) else {
            continue;
        };
        let Ok(doc) = parse_xml(&text) else {
            continue;
        };
        let name = doc
            .descendants()
            .find(|n| is_el(n, "domain"))
            .and_then(|d| child(&d, "name"))
            .and_then(|n| n.text())
            .map(str::to_string)
            .unwrap_or(stem);
        if name == own {
            continue;
        }
        for h in doc.descendants().filter(|n| is_el(n, "hostdev")) {
            if h.attribute("type") != Some("mdev") {
                continue;
            }
            if let Some(u) = child(&h, "source")
                .and_then(|s| child(&s, "address"))
                .and_then(|a| a.attribute("uuid"))
            {
                map.insert(u.to_ascii_lowercase(), name.clone());
            }
        }
    }
    map
}

/// What the hook decided for one hostdev.
enum Plan {
    /// The named mdev accepts the source's version.
    Keep,
    /// Use this free mdev instead.
    Use(Mdev),
    /// Create an mdev of this type.
    Create(MdevType),
}

struct Job {
    hostdev: Hostdev,
    entry: MetaEntry,
    version: String,
    /// Why the named mdev cannot take the state (for Use and Create).
    why: String,
    plan: Plan,
}

/// What the hook did: the rewritten XML (`None`: unchanged), notes for
/// standard error, and, when it refuses, one line per hostdev no local
/// mdev can take.
#[derive(Debug, Default)]
pub struct HookResult {
    /// The whole domain XML rewritten, or `None` to leave it unchanged.
    pub output: Option<String>,
    /// What was checked and chosen, for standard error.
    pub notes: Vec<String>,
    /// Why the migration or restore must stop (empty: go on).
    pub refused: Vec<String>,
}

/// A new random (version 4) UUID.
pub fn new_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::io("/dev/urandom", e))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Whether `t`'s `device_api` fits the hostdev's `model` (libvirt requires
/// them equal); unknown on either side fits.
fn api_fits(api: Option<&str>, model: Option<&str>) -> bool {
    match (api, model) {
        (Some(a), Some(m)) => a == m,
        _ => true,
    }
}

/// The recorded `PARENT/TYPE` split.
fn recorded_type(e: &MetaEntry) -> (&str, &str) {
    e.mdev_type
        .as_deref()
        .and_then(|t| t.split_once('/'))
        .unwrap_or(("", ""))
}

/// The metadata entry of hostdev `h`: the one with its UUID and alias,
/// else its UUID, else its alias (a hook before this one may have changed
/// the UUID), among those no other hostdev has; marks it claimed.
fn find_entry<'a>(
    entries: &'a [MetaEntry],
    h: &Hostdev,
    claimed: &mut [bool],
) -> Option<&'a MetaEntry> {
    let same_uuid = |e: &MetaEntry| e.uuid.eq_ignore_ascii_case(&h.uuid);
    let same_alias = |e: &MetaEntry| h.alias.is_some() && e.alias == h.alias;
    let tests: [&dyn Fn(&MetaEntry) -> bool; 3] =
        [&|e| same_uuid(e) && same_alias(e), &same_uuid, &same_alias];
    for test in tests {
        let found = entries
            .iter()
            .zip(claimed.iter())
            .position(|(e, c)| !*c && test(e));
        if let Some(i) = found {
            if let Some(c) = claimed.get_mut(i) {
                *c = true;
            }
            return entries.get(i);
        }
    }
    None
}

/// The write check as the hook words it: `Ok(())` when `t` accepts
/// `version`, else why not.
fn accepts(version: &str, t: &Target) -> std::result::Result<(), String> {
    match compat::check(version, t) {
        Ok(v) if v.compatible => Ok(()),
        Ok(v) => {
            let mut why = match v.errno {
                Some(_) => {
                    let e = io::Error::from_raw_os_error(v.errno.unwrap_or_default());
                    format!("{} {} refused it: {}", t.kind(), t.label(), describe(&e))
                }
                None => format!("{} {}: {}", t.kind(), t.label(), v.reason),
            };
            if let Some(d) = v.detail {
                why += &format!(" ({d})");
            }
            Err(why)
        }
        Err(e) => Err(format!("{} {}: {e}", t.kind(), t.label())),
    }
}

/// The hook on `migrate begin` / `restore begin` for domain `name` with
/// domain XML `xml`: see the module's documentation. An `Err` is a
/// malformed XML or metadata, or a system error; a refusal is a result
/// with [`HookResult::refused`] set. Nothing is created unless every
/// hostdev can be placed; what was created is removed again if a later
/// step fails.
pub fn hook(view: &HostView, name: &str, xml: &str) -> Result<HookResult> {
    let bad = |e: String| Error::Usage(format!("malformed domain XML: {e}"));
    let doc = parse_xml(xml).map_err(bad)?;
    let dom = domain_of(&doc).map_err(bad)?;
    let hostdevs = mdev_hostdevs(xml, &dom).map_err(bad)?;
    let mut res = HookResult::default();
    if hostdevs.is_empty() {
        return Ok(res);
    }
    let Some(meta) = metadata(xml, &dom).map_err(bad)? else {
        res.notes.push(format!(
            "domain '{name}' has no rmdev metadata (run rmdev libvirt annotate on the source \
             host): nothing was checked"
        ));
        return Ok(res);
    };
    let from = meta
        .host
        .as_deref()
        .map_or(String::new(), |h| format!(" (recorded on host '{h}')"));
    let named: HashSet<String> = hostdevs
        .iter()
        .map(|h| h.uuid.to_ascii_lowercase())
        .collect();
    let users = Users::scan(view, name);
    // Lower-case UUID → the hostdev it was given to.
    let mut taken: HashMap<String, String> = HashMap::new();
    let mut pool: Option<(Vec<Mdev>, Vec<MdevType>)> = None;
    // Type directory → instances planned on it.
    let mut planned: HashMap<PathBuf, u64> = HashMap::new();
    let mut jobs = Vec::new();
    // Entries already matched to a hostdev.
    let mut claimed = vec![false; meta.entries.len()];
    for h in &hostdevs {
        let key = h.uuid.to_ascii_lowercase();
        let Some(entry) = find_entry(&meta.entries, h, &mut claimed) else {
            res.notes.push(format!(
                "hostdev {}: mdev {} has no entry in the rmdev metadata: not checked",
                h.label(),
                h.uuid
            ));
            taken.entry(key).or_insert_with(|| h.label());
            continue;
        };
        let Some(version) = entry.migration_version.clone() else {
            res.notes.push(format!(
                "hostdev {}: its source mdev had no migration_version{from}: not checked",
                h.label()
            ));
            taken.entry(key).or_insert_with(|| h.label());
            continue;
        };
        // The named mdev.
        let why = match view.sys.mdev(&h.uuid) {
            Err(Error::NotFound(_)) => format!("no such mdev {}", h.uuid),
            Err(e) => format!("mdev {}: {e}", h.uuid),
            Ok(m) => {
                if let Some(other) = taken.get(&key) {
                    format!("mdev {} is also named by hostdev {other}", m.uuid)
                } else if let Some(b) = users.busy(&m) {
                    format!("mdev {} is {b}", m.uuid)
                } else if !api_fits(m.device_api().as_deref(), h.model.as_deref()) {
                    format!(
                        "mdev {} has device_api '{}', the hostdev's model is '{}'",
                        m.uuid,
                        m.device_api().unwrap_or_default(),
                        h.model.clone().unwrap_or_default()
                    )
                } else {
                    match accepts(&version, &Target::Mdev(m.clone())) {
                        Ok(()) => {
                            res.notes.push(format!(
                                "hostdev {}: mdev {} accepts '{version}'",
                                h.label(),
                                m.uuid
                            ));
                            taken.insert(key, h.label());
                            jobs.push(Job {
                                hostdev: h.clone(),
                                entry: entry.clone(),
                                version,
                                why: String::new(),
                                plan: Plan::Keep,
                            });
                            continue;
                        }
                        Err(why) => why,
                    }
                }
            }
        };
        // Another free mdev, or a type with room.
        if pool.is_none() {
            let types: Vec<MdevType> = view
                .sys
                .parents()?
                .into_iter()
                .flat_map(|p| p.types)
                .collect();
            pool = Some((view.sys.mdevs()?, types));
        }
        let (mdevs, types) = match &pool {
            Some((m, t)) => (m, t),
            None => continue,
        };
        let (rp, rt) = recorded_type(entry);
        let mut cands: Vec<&Mdev> = mdevs
            .iter()
            .filter(|m| {
                let k = m.uuid.to_ascii_lowercase();
                !named.contains(&k) && !taken.contains_key(&k)
            })
            // Unreadable attributes still get the (authoritative) write check.
            .filter(|m| m.migration_version != VersionAttr::Absent)
            .collect();
        cands.sort_by_key(|m| (m.type_id != rt, m.parent != rp, m.uuid.clone()));
        let chosen = cands.into_iter().find(|m| {
            users.busy(m).is_none()
                && api_fits(m.device_api().as_deref(), h.model.as_deref())
                && accepts(&version, &Target::Mdev((*m).clone())).is_ok()
        });
        if let Some(m) = chosen {
            taken.insert(m.uuid.to_ascii_lowercase(), h.label());
            jobs.push(Job {
                hostdev: h.clone(),
                entry: entry.clone(),
                version,
                why,
                plan: Plan::Use(m.clone()),
            });
            continue;
        }
        let mut tcands: Vec<&MdevType> = types
            .iter()
            .filter(|t| t.migration_version != VersionAttr::Absent)
            .filter(|t| {
                let used = planned.get(&t.path).copied().unwrap_or(0);
                t.available_instances.unwrap_or(0) > used
            })
            .collect();
        tcands.sort_by_key(|t| (t.id != rt, t.parent != rp, t.parent.clone(), t.id.clone()));
        let chosen = tcands.into_iter().find(|t| {
            api_fits(t.device_api.as_deref(), h.model.as_deref())
                && accepts(&version, &Target::Type((*t).clone())).is_ok()
        });
        if let Some(t) = chosen {
            *planned.entry(t.path.clone()).or_insert(0) += 1;
            jobs.push(Job {
                hostdev: h.clone(),
                entry: entry.clone(),
                version,
                why,
                plan: Plan::Create(t.clone()),
            });
            continue;
        }
        res.refused.push(format!(
            "hostdev {} (mdev {}): no local mdev accepts '{version}'{from}: {why}; no free mdev \
             or type with available instances accepts it",
            h.label(),
            h.uuid
        ));
    }
    if !res.refused.is_empty() {
        return Ok(res);
    }
    // Every hostdev has a place: create what is planned, then rewrite.
    let mut created: Vec<Mdev> = Vec::new();
    let mut edits = Vec::new();
    for job in &jobs {
        let (new, how) = match &job.plan {
            Plan::Keep => continue,
            Plan::Use(m) => (
                m.uuid.clone(),
                format!("using free mdev {} ({}/{})", m.uuid, m.parent, m.type_id),
            ),
            Plan::Create(t) => match create_checked(view, t, &job.version) {
                Ok(m) => {
                    let how = format!("created mdev {} on {}/{}", m.uuid, t.parent, t.id);
                    let u = m.uuid.clone();
                    created.push(m);
                    (u, how)
                }
                Err(e) => {
                    let undone = undo(view, &created);
                    return Err(Error::Libvirt(format!(
                        "hostdev {} (mdev {}): {e}{undone}",
                        job.hostdev.label(),
                        job.hostdev.uuid
                    )));
                }
            },
        };
        res.notes.push(format!(
            "hostdev {}: {}; {how}, which accepts '{}'",
            job.hostdev.label(),
            job.why,
            job.version
        ));
        edits.push((job.hostdev.uuid_range.clone(), new.clone()));
        edits.push((job.entry.uuid_range.clone(), new));
    }
    if edits.is_empty() {
        return Ok(res);
    }
    match splice(xml, edits) {
        Some(out) => res.output = Some(out),
        None => {
            let undone = undo(view, &created);
            return Err(Error::Usage(format!(
                "cannot rewrite the domain XML (overlapping attributes){undone}"
            )));
        }
    }
    Ok(res)
}

/// Creates an mdev of `t` and checks that it accepts `version` (a device
/// rule may differ from its type's); removes it again if not.
fn create_checked(view: &HostView, t: &MdevType, version: &str) -> Result<Mdev> {
    let uuid = new_uuid()?;
    let m = view.sys.create_mdev(t, &uuid, CREATE_WAIT)?;
    if let Err(why) = accepts(version, &Target::Mdev(m.clone())) {
        let undone = undo(view, std::slice::from_ref(&m));
        return Err(Error::Incompatible(format!("created {why}{undone}")));
    }
    Ok(m)
}

/// Removes the mdevs this hook created; what to add to the message.
fn undo(view: &HostView, created: &[Mdev]) -> String {
    let mut s = String::new();
    for m in created {
        match view.sys.remove_mdev(m) {
            Ok(()) => s += &format!("; removed the mdev {} it had created", m.uuid),
            Err(e) => s += &format!("; could not remove the mdev {} it had created: {e}", m.uuid),
        }
    }
    s
}

// -------------------------------------------------- install-hook ---

/// The hook script that runs `binary`.
pub fn hook_script(binary: &Path) -> Result<String> {
    let b = binary
        .to_str()
        .ok_or_else(|| Error::Usage(format!("{}: the path is not UTF-8", binary.display())))?;
    if !binary.is_absolute() {
        return Err(Error::Usage(format!("{b}: not an absolute path")));
    }
    let quoted = format!("'{}'", b.replace('\'', r"'\''"));
    Ok(format!(
        "#!/bin/sh\n\
         {HOOK_MARK}\n\
         # libvirt runs it on every qemu hook call; rmdev acts on incoming migrations\n\
         # and restores (migrate begin, restore begin): see rmdev's documentation,\n\
         # section libvirt. Remove it with: rmdev libvirt install-hook --remove\n\
         exec {quoted} libvirt hook -- \"$@\"\n"
    ))
}

/// What [`install_hook`] or [`remove_hook`] did.
#[derive(Clone, Debug, Serialize)]
pub struct HookInstall {
    /// The script's path.
    pub path: PathBuf,
    /// `installed`, `updated`, `unchanged`, `removed` or `absent`.
    pub action: &'static str,
    /// The binary it runs (install only).
    pub binary: Option<PathBuf>,
}

/// The existing script at `path`, if any; refuses one rmdev did not write.
fn existing_script(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(b) => {
            let s = String::from_utf8_lossy(&b).into_owned();
            if !s.lines().any(|l| l == HOOK_MARK) {
                return Err(Error::Usage(format!(
                    "{}: exists and was not written by rmdev libvirt install-hook; not touched",
                    path.display()
                )));
            }
            Ok(Some(s))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The binary the hook should run: `binary`, or this executable, as a
/// canonical path to an executable file.
pub fn hook_binary(binary: Option<&Path>) -> Result<PathBuf> {
    let b = match binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe().map_err(|e| Error::io("the running executable", e))?,
    };
    let c = fs::canonicalize(&b).map_err(|e| Error::io(&b, e))?;
    let meta = fs::metadata(&c).map_err(|e| Error::io(&c, e))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::Usage(format!(
            "{}: not an executable file",
            c.display()
        )));
    }
    Ok(c)
}

/// Writes the hook script `dir/50-rmdev` (mode 0755) running `binary`:
/// creates `dir` if missing, writes a temporary file (not executable until
/// complete) and renames it over the script. Idempotent.
pub fn install_hook(dir: &Path, binary: &Path) -> Result<HookInstall> {
    let text = hook_script(binary)?;
    let path = dir.join(HOOK_FILE);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    let old = existing_script(&path)?;
    let mode_ok = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o755);
    let action = match &old {
        Some(s) if *s == text && mode_ok => "unchanged",
        Some(_) => "updated",
        None => "installed",
    };
    if action != "unchanged" {
        wholefile::write(&path, text.as_bytes(), 0o755)?;
    }
    Ok(HookInstall {
        path,
        action,
        binary: Some(binary.to_path_buf()),
    })
}

/// Removes the hook script `dir/50-rmdev`, if rmdev wrote it. Idempotent.
pub fn remove_hook(dir: &Path) -> Result<HookInstall> {
    let path = dir.join(HOOK_FILE);
    let action = match existing_script(&path)? {
        Some(_) => {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            "removed"
        }
        None => "absent",
    };
    Ok(HookInstall {
        path,
        action,
        binary: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn element_round_trip() {
        let rec = [
            Recorded {
                uuid: "11111111-2222-4333-8444-555555555555".into(),
                alias: Some("hostdev0".into()),
                parent: "p".into(),
                type_id: "t".into(),
                migration_version: Some("v:t:1.0:a=<&>".into()),
            },
            Recorded {
                uuid: "66666666-7777-4888-9999-aaaaaaaaaaaa".into(),
                alias: None,
                parent: "p".into(),
                type_id: "u".into(),
                migration_version: None,
            },
        ];
        let el = metadata_element("h\"st", &rec);
        assert!(el.starts_with("<mdevs format=\"1\" host=\"h&quot;st\">"));
        // As libvirt stores it: every element in the namespace.
        let stored = el
            .replace(
                "<mdevs ",
                &format!("<rmdev:mdevs xmlns:rmdev=\"{NS_URI}\" "),
            )
            .replace("<mdev ", "<rmdev:mdev ")
            .replace("</mdevs>", "</rmdev:mdevs>");
        let xml = format!("<domain><metadata>{stored}</metadata></domain>");
        let doc = parse_xml(&xml).unwrap();
        let m = metadata(&xml, &doc.root_element()).unwrap().unwrap();
        assert_eq!(m.host.as_deref(), Some("h\"st"));
        assert_eq!(m.entries.len(), 2);
        assert_eq!(
            m.entries[0].migration_version.as_deref(),
            Some("v:t:1.0:a=<&>")
        );
        assert_eq!(m.entries[0].alias.as_deref(), Some("hostdev0"));
        assert_eq!(&xml[m.entries[1].uuid_range.clone()], rec[1].uuid);
        assert!(m.entries[1].migration_version.is_none());
        assert_eq!(metadata_element("", &[]), "<mdevs format=\"1\"/>");
    }

    #[test]
    fn metadata_formats() {
        let doc = |f: &str| {
            format!("<domain><metadata><r:mdevs xmlns:r='{NS_URI}' {f}/></metadata></domain>")
        };
        let read = |x: &str| {
            let d = parse_xml(x).unwrap();
            metadata(x, &d.root_element())
        };
        assert!(read(&doc("format='1'")).unwrap().is_some());
        assert!(read(&doc("format='2'"))
            .unwrap_err()
            .contains("format '2' is not supported"));
        assert!(read(&doc("")).unwrap_err().contains("without a format"));
        // Another namespace is not ours.
        let x = "<domain><metadata><r:mdevs xmlns:r='urn:other' format='1'/></metadata></domain>";
        assert!(read(x).unwrap().is_none());
    }

    #[test]
    fn splices_and_uuids() {
        assert_eq!(
            splice("abcdef", vec![(3..4, "X".into()), (0..1, "Y".into())]).as_deref(),
            Some("YbcXef")
        );
        assert!(splice("ab", vec![(0..9, "X".into())]).is_none());
        let u = new_uuid().unwrap();
        assert!(is_uuid(&u));
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid().unwrap());
    }

    #[test]
    fn script_quotes_the_binary() {
        let s = hook_script(Path::new("/opt/it's/rmdev")).unwrap();
        assert!(s.contains("exec '/opt/it'\\''s/rmdev' libvirt hook -- \"$@\"\n"));
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(hook_script(Path::new("rmdev")).is_err());
    }

    #[test]
    fn acts_only_on_migrate_and_restore_begin() {
        assert!(hook_acts("migrate", "begin"));
        assert!(hook_acts("restore", "begin"));
        for (o, s) in [
            ("prepare", "begin"),
            ("start", "begin"),
            ("started", "begin"),
            ("stopped", "end"),
            ("release", "end"),
            ("migrate", "end"),
            ("reconnect", "begin"),
            ("attach", "begin"),
        ] {
            assert!(!hook_acts(o, s), "{o} {s}");
        }
    }
}
