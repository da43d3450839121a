// SPDX-License-Identifier: GPL-2.0

//! The mdev sysfs model: parents, their types and the mdevs, with their
//! `migration_version` attributes, read from under a root directory.
//!
//! The root is `/` on a host; tests point it at a fake tree, as mdevctl's
//! `Environment` does. Paths used (all relative to the root):
//!
//! - `sys/class/mdev_bus/<parent>`: the parents (links to their devices);
//! - `<parent>/mdev_supported_types/<type>/{name,description,device_api,
//!   available_instances,migration_version}`;
//! - `sys/bus/mdev/devices/<uuid>`: the mdevs (links), each with an
//!   `mdev_type` link to its type directory and a `migration_version`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{describe, Error, Result};

/// The most bytes read from any attribute: sysfs attributes are at most a
/// page.
const ATTR_MAX: u64 = 4096;

/// A `migration_version` attribute as found.
///
/// In JSON it is the one shape every command uses for the concept (flatten
/// it into its type's or mdev's object): `"migration_version"`, the string
/// or `null` when the type or mdev does not migrate; and for an attribute
/// that exists but could not be read, `null` with
/// `"migration_version_error"`, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionAttr {
    /// No attribute: the type or mdev does not migrate (or its vendor is
    /// not an rmdev vendor).
    Absent,
    /// The version string (without the trailing newline).
    Present(String),
    /// The attribute exists but could not be read: the error.
    Unreadable(String),
}

impl Serialize for VersionAttr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("migration_version", &self.as_str())?;
        if let VersionAttr::Unreadable(e) = self {
            m.serialize_entry("migration_version_error", e)?;
        }
        m.end()
    }
}

impl VersionAttr {
    /// The string, if read.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            VersionAttr::Present(s) => Some(s),
            _ => None,
        }
    }

    /// Reads the attribute in directory `dir`.
    pub fn read(dir: &Path) -> VersionAttr {
        match read_attr(&dir.join("migration_version")) {
            Ok(s) => VersionAttr::Present(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => VersionAttr::Absent,
            Err(e) => VersionAttr::Unreadable(e.to_string()),
        }
    }
}

/// Reads a sysfs attribute (at most a page), without its trailing newline.
/// Non-UTF-8 content is an error (`InvalidData`).
pub fn read_attr(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    fs::File::open(path)?
        .take(ATTR_MAX + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > ATTR_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "longer than a page",
        ));
    }
    let mut s = String::from_utf8(buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))?;
    if s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

fn read_opt(path: &Path) -> Option<String> {
    read_attr(path).ok()
}

/// An mdev type of a parent.
#[derive(Clone, Debug, Serialize)]
pub struct MdevType {
    /// The parent's name (its directory name, as mdevctl's `-p`).
    pub parent: String,
    /// The type's directory name (mdevctl's `-t`).
    #[serde(rename = "type")]
    pub id: String,
    /// `name`, if present.
    pub name: Option<String>,
    /// `description`, if present.
    pub description: Option<String>,
    /// `device_api`, if present.
    pub device_api: Option<String>,
    /// `available_instances`, if present and a number.
    pub available_instances: Option<u64>,
    /// The `migration_version` attribute.
    #[serde(flatten)]
    pub migration_version: VersionAttr,
    /// The type's sysfs directory.
    pub path: PathBuf,
}

/// A parent device.
#[derive(Clone, Debug, Serialize)]
pub struct Parent {
    /// Its name in `/sys/class/mdev_bus`.
    pub name: String,
    /// Its sysfs directory.
    pub path: PathBuf,
    /// Its types, sorted by name.
    pub types: Vec<MdevType>,
}

/// An mdev.
#[derive(Clone, Debug, Serialize)]
pub struct Mdev {
    /// Its UUID.
    pub uuid: String,
    /// Its parent's name.
    pub parent: String,
    /// Its type's directory name.
    #[serde(rename = "type")]
    pub type_id: String,
    /// The `migration_version` attribute.
    #[serde(flatten)]
    pub migration_version: VersionAttr,
    /// The mdev's sysfs directory.
    pub path: PathBuf,
}

/// What a command names as a source or target.
#[derive(Clone, Debug)]
pub enum Target {
    /// An mdev type.
    Type(MdevType),
    /// An mdev.
    Mdev(Mdev),
}

impl Target {
    /// The sysfs directory holding `migration_version`.
    pub fn dir(&self) -> &Path {
        match self {
            Target::Type(t) => &t.path,
            Target::Mdev(m) => &m.path,
        }
    }

    /// The attribute.
    pub fn version(&self) -> &VersionAttr {
        match self {
            Target::Type(t) => &t.migration_version,
            Target::Mdev(m) => &m.migration_version,
        }
    }

    /// How it is named in messages: `PARENT/TYPE` or the UUID.
    pub fn label(&self) -> String {
        match self {
            Target::Type(t) => format!("{}/{}", t.parent, t.id),
            Target::Mdev(m) => m.uuid.clone(),
        }
    }

    /// "type" or "mdev".
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Type(_) => "type",
            Target::Mdev(_) => "mdev",
        }
    }
}

/// Whether `s` can name one directory entry (no path, not `.` or `..`).
fn is_name(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && s != "." && s != ".."
}

/// Whether `s` is a UUID in the canonical 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `s` as the kernel names an mdev (lower-case 8-4-4-4-12 hex), from any
/// spelling of a UUID mdevctl accepts: either case, with or without the
/// hyphens, in braces, or as a `urn:uuid:` URN.
pub fn canonical_uuid(s: &str) -> Option<String> {
    let s = s.trim();
    let s = match s.get(..9) {
        Some(p) if p.eq_ignore_ascii_case("urn:uuid:") => &s[9..],
        _ => s,
    };
    let s = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or(s);
    let hex: String = if is_uuid(s) {
        s.chars().filter(|&c| c != '-').collect()
    } else if s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        s.to_string()
    } else {
        return None;
    };
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// A sysfs tree under a root directory.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/")
    }
}

fn dir_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    Ok(v)
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Sysfs {
    /// The tree under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `/sys/class/mdev_bus` under the root.
    fn bus_class(&self) -> PathBuf {
        self.root.join("sys/class/mdev_bus")
    }

    /// `/sys/bus/mdev/devices` under the root.
    pub fn devices_dir(&self) -> PathBuf {
        self.root.join("sys/bus/mdev/devices")
    }

    /// The process directory under the same root (`/proc`), where
    /// [`Holders`] looks.
    pub fn proc_dir(&self) -> PathBuf {
        self.root.join("proc")
    }

    /// The names of every parent. A host without the mdev module has none.
    pub fn parent_names(&self) -> Result<Vec<String>> {
        match dir_names(&self.bus_class()) {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(self.bus_class(), e)),
        }
    }

    /// The parent `name` with its types.
    pub fn parent(&self, name: &str) -> Result<Parent> {
        let path = self.parent_path(name)?;
        let tdir = path.join("mdev_supported_types");
        let ids = dir_names(&tdir).map_err(|e| Error::io(&tdir, e))?;
        let types = ids
            .into_iter()
            .map(|id| self.type_at(name, &tdir.join(&id)))
            .collect();
        Ok(Parent {
            name: name.to_string(),
            path,
            types,
        })
    }

    /// The parent `name`'s device directory.
    fn parent_path(&self, name: &str) -> Result<PathBuf> {
        if !is_name(name) {
            return Err(Error::NotFound(format!("no parent named '{name}'")));
        }
        fs::canonicalize(self.bus_class().join(name))
            .map_err(|_| Error::NotFound(format!("no parent named '{name}'")))
    }

    fn type_at(&self, parent: &str, dir: &Path) -> MdevType {
        MdevType {
            parent: parent.to_string(),
            id: name_of(dir),
            name: read_opt(&dir.join("name")),
            description: read_opt(&dir.join("description")),
            device_api: read_opt(&dir.join("device_api")),
            available_instances: read_opt(&dir.join("available_instances"))
                .and_then(|s| s.trim().parse().ok()),
            migration_version: VersionAttr::read(dir),
            path: dir.to_path_buf(),
        }
    }

    /// Every parent with its types.
    pub fn parents(&self) -> Result<Vec<Parent>> {
        self.parent_names()?
            .iter()
            .map(|n| self.parent(n))
            .collect()
    }

    /// The type `id` of `parent`.
    pub fn mdev_type(&self, parent: &str, id: &str) -> Result<MdevType> {
        // Only this type's attributes are read, not every type's.
        let dir = self
            .parent_path(parent)?
            .join("mdev_supported_types")
            .join(id);
        if !is_name(id) || !dir.is_dir() {
            return Err(Error::NotFound(format!(
                "parent '{parent}' has no mdev type '{id}'"
            )));
        }
        Ok(self.type_at(parent, &dir))
    }

    /// The mdev `uuid`.
    pub fn mdev(&self, uuid: &str) -> Result<Mdev> {
        let Some(uuid) = canonical_uuid(uuid) else {
            return Err(Error::Usage(format!("'{uuid}' is not a UUID")));
        };
        let link = self.devices_dir().join(&uuid);
        let path =
            fs::canonicalize(&link).map_err(|_| Error::NotFound(format!("no mdev {uuid}")))?;
        self.mdev_at(&uuid, &path)
    }

    fn mdev_at(&self, uuid: &str, path: &Path) -> Result<Mdev> {
        let tlink = path.join("mdev_type");
        let tdir = fs::canonicalize(&tlink).map_err(|e| Error::io(&tlink, e))?;
        // <parent dir>/mdev_supported_types/<type>; the parent's name is
        // the one in mdev_bus, which is its directory's name.
        let parent_dir = tdir
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| Error::NotFound(format!("{}: no parent", tdir.display())))?;
        Ok(Mdev {
            uuid: uuid.to_string(),
            parent: name_of(parent_dir),
            type_id: name_of(&tdir),
            migration_version: VersionAttr::read(path),
            path: path.to_path_buf(),
        })
    }

    /// Every mdev, sorted by UUID. Entries that vanish while listing are
    /// skipped.
    pub fn mdevs(&self) -> Result<Vec<Mdev>> {
        let dir = self.devices_dir();
        let names = match dir_names(&dir) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        Ok(names
            .iter()
            .filter(|n| is_uuid(n))
            .filter_map(|n| self.mdev(n).ok())
            .collect())
    }

    /// Resolves what a command names: a UUID, `PARENT/TYPE`, or a sysfs
    /// path (a type directory, an mdev directory, or either's
    /// `migration_version` file).
    pub fn resolve(&self, spec: &str) -> Result<Target> {
        if canonical_uuid(spec).is_some() {
            return self.mdev(spec).map(Target::Mdev);
        }
        if spec.starts_with('/') || spec.starts_with('.') {
            return self.resolve_path(Path::new(spec));
        }
        if let Some((parent, id)) = spec.split_once('/') {
            if !id.contains('/') {
                return self.mdev_type(parent, id).map(Target::Type);
            }
        }
        Err(Error::Usage(format!(
            "'{spec}' is not an mdev UUID, a PARENT/TYPE or a sysfs path"
        )))
    }

    fn resolve_path(&self, p: &Path) -> Result<Target> {
        let mut dir =
            fs::canonicalize(p).map_err(|e| Error::NotFound(format!("{}: {e}", p.display())))?;
        if name_of(&dir) == "migration_version" {
            dir.pop();
        }
        if dir.join("mdev_type").exists() {
            return self.mdev_at(&name_of(&dir), &dir).map(Target::Mdev);
        }
        let in_types = dir
            .parent()
            .is_some_and(|d| name_of(d) == "mdev_supported_types");
        if in_types {
            let parent_dir = dir.parent().and_then(Path::parent).unwrap_or(&dir);
            return Ok(Target::Type(self.type_at(&name_of(parent_dir), &dir)));
        }
        Err(Error::Usage(format!(
            "{}: not an mdev type or mdev directory",
            p.display()
        )))
    }
}

impl Sysfs {
    /// Creates an mdev `uuid` of type `t` by writing the UUID to the type's
    /// `create` (one `write(2)`, as `echo -n UUID > create` does), then
    /// waits up to `wait` for `/sys/bus/mdev/devices/<uuid>` to appear (the
    /// kernel creates it before the write returns; the wait covers slower
    /// emulations). The mdev is transient: it lives until removed or the
    /// next boot, as mdevctl's `start` without `define` leaves it.
    pub fn create_mdev(&self, t: &MdevType, uuid: &str, wait: Duration) -> Result<Mdev> {
        if !is_uuid(uuid) {
            return Err(Error::Usage(format!("'{uuid}' is not a UUID")));
        }
        let path = t.path.join("create");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match f.write(uuid.as_bytes()) {
            Ok(n) if n == uuid.len() => {}
            Ok(n) => {
                return Err(Error::io(
                    &path,
                    io::Error::other(format!("short write ({n} of {} bytes)", uuid.len())),
                ))
            }
            Err(e) => return Err(Error::io(&path, e)),
        }
        drop(f);
        let deadline = Instant::now() + wait;
        loop {
            match self.mdev(uuid) {
                Ok(m) => return Ok(m),
                Err(Error::NotFound(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(Error::NotFound(_)) => {
                    return Err(Error::NotFound(format!(
                        "wrote {uuid} to {} but mdev {uuid} did not appear in {}",
                        path.display(),
                        self.devices_dir().display()
                    )))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the mdev `m` (writes `1` to its `remove`).
    pub fn remove_mdev(&self, m: &Mdev) -> Result<()> {
        let path = m.path.join("remove");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.write_all(b"1").map_err(|e| Error::io(&path, e))
    }
}

impl Mdev {
    /// The device nodes a process holds open while it uses this mdev: its
    /// IOMMU group's `/dev/vfio/<group>` and, where the kernel has VFIO
    /// device cdevs, `/dev/vfio/devices/vfioN`. Names only (from sysfs);
    /// nothing is opened.
    pub fn vfio_nodes(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Ok(link) = fs::read_link(self.path.join("iommu_group")) {
            if let Some(n) = link.file_name().and_then(|n| n.to_str()) {
                v.push(format!("/dev/vfio/{n}"));
            }
        }
        if let Ok(names) = dir_names(&self.path.join("vfio-dev")) {
            v.extend(
                names
                    .into_iter()
                    .filter(|n| n.starts_with("vfio"))
                    .map(|n| format!("/dev/vfio/devices/{n}")),
            );
        }
        v
    }

    /// Its type's `device_api` (`vfio-pci`), if readable.
    pub fn device_api(&self) -> Option<String> {
        read_opt(&self.path.join("mdev_type").join("device_api"))
    }
}

/// Who holds which VFIO device node open, from `<proc>/*/fd`: found
/// without opening any device (as root every process is seen; other users
/// see only their own processes).
#[derive(Debug, Default)]
pub struct Holders {
    proc_dir: PathBuf,
    /// Device node → the PIDs holding it open.
    nodes: HashMap<String, Vec<u32>>,
}

impl Holders {
    /// Every `/dev/vfio/...` link of `<proc_dir>/*/fd/*`, this process's
    /// own left out.
    pub fn scan(proc_dir: &Path) -> Holders {
        let mut nodes: HashMap<String, Vec<u32>> = HashMap::new();
        let me = std::process::id();
        for e in fs::read_dir(proc_dir).into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(t) = fs::read_link(fd.path()) else {
                    continue;
                };
                if let Some(t) = t.to_str().filter(|t| t.starts_with("/dev/vfio/")) {
                    let pids = nodes.entry(t.to_string()).or_default();
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
        }
        Holders {
            proc_dir: proc_dir.to_path_buf(),
            nodes,
        }
    }

    /// Why `m` is in use, if a process holds one of its VFIO nodes open:
    /// `in use: /dev/vfio/N is held open by process PID (COMM)`.
    pub fn of(&self, m: &Mdev) -> Option<String> {
        m.vfio_nodes().into_iter().find_map(|node| {
            let pids = self.nodes.get(&node)?;
            let pid = pids.first().copied().unwrap_or_default();
            let comm = read_attr(&self.proc_dir.join(format!("{pid}/comm")))
                .unwrap_or_else(|_| "?".into());
            let more = match pids.len() {
                0 | 1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            Some(format!(
                "in use: {node} is held open by process {pid} ({comm}){more}"
            ))
        })
    }
}

/// The result of writing a version string to a `migration_version`.
#[derive(Debug)]
pub enum WriteCheck {
    /// The write returned the full count: compatible.
    Accepted,
    /// The write failed with this errno: incompatible.
    Refused(io::Error),
    /// The target has no `migration_version`: it does not migrate.
    NoAttribute,
}

/// Writes `version` and a newline to the `migration_version` in `dir`, in
/// one `write(2)` at offset 0 as the attribute requires. A missing
/// attribute is an answer (the target does not migrate); any other error
/// opening the file (permissions, not a file) is a system error.
pub fn write_check(dir: &Path, version: &str) -> Result<WriteCheck> {
    let path = dir.join("migration_version");
    let mut f = match fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(WriteCheck::NoAttribute),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(Error::Permission(format!(
                "{}: {}: the write check needs root (--offline compares \
                 default-format strings without writing)",
                path.display(),
                describe(&e)
            )))
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let line = format!("{version}\n");
    match f.write(line.as_bytes()) {
        Ok(n) if n == line.len() => Ok(WriteCheck::Accepted),
        Ok(n) => Ok(WriteCheck::Refused(io::Error::other(format!(
            "short write ({n} of {} bytes)",
            line.len()
        )))),
        Err(e) => Ok(WriteCheck::Refused(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::{canonical_uuid, is_uuid};

    #[test]
    fn every_spelling_mdevctl_accepts() {
        let want = Some("0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b".to_string());
        for s in [
            "0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "0F2B1C9E-1C2D-4E5F-8A9B-0C1D2E3F4A5B",
            "0f2b1c9e1c2d4e5f8a9b0c1d2e3f4a5b",
            "0F2B1C9E1C2D4E5F8A9B0C1D2E3F4A5B",
            "{0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b}",
            "urn:uuid:0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "URN:UUID:0F2B1C9E-1C2D-4E5F-8A9B-0C1D2E3F4A5B",
        ] {
            assert_eq!(canonical_uuid(s), want, "{s}");
        }
        for s in [
            "",
            "0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5",
            "0f2b1c9e1c2d4e5f8a9b0c1d2e3f4a5",
            "0f2b1c9e-1c2d4e5f-8a9b-0c1d2e3f4a5b",
            "{0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "urn:uuid:",
            "0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5g",
            "rmdev_sample/rmdev_sample-4m",
        ] {
            assert_eq!(canonical_uuid(s), None, "{s}");
        }
    }

    #[test]
    fn uuids() {
        assert!(is_uuid("0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert!(is_uuid("0F2B1C9E-1C2D-4E5F-8A9B-0C1D2E3F4A5B"));
        assert!(!is_uuid("0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5"));
        assert!(!is_uuid("0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5bb"));
        assert!(!is_uuid("0f2b1c9e_1c2d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_uuid("0f2b1c9e-1c2d-4e5f-8a9b-0c1d2e3f4a5g"));
        assert!(!is_uuid(""));
    }
}
