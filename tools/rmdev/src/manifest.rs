// SPDX-License-Identifier: GPL-2.0

//! The manifest: a host's mdev types and mdevs with their version strings,
//! exported as JSON on one host and matched on another.
//!
//! Schema (`Documentation/rmdev.rst`, "The manifest"), version
//! [`SCHEMA_VERSION`]:
//!
//! ```json
//! { "schema": "rmdev-manifest", "schema_version": 1,
//!   "host": "src-host", "rmdev_version": "0.1.0",
//!   "types": [ { "parent": "rmdev_sample", "type": "rmdev_sample-4m",
//!                "name": "...", "migration_version": "..." } ],
//!   "mdevs": [ { "uuid": "...", "parent": "...", "type": "...",
//!                "migration_version": "..." } ] }
//! ```
//!
//! `migration_version` is `null` for what does not migrate. Reading is
//! defensive: at most [`MAX_BYTES`], UTF-8, the schema name and version
//! checked, every field required, every version string through the same
//! input rules as the sysfs attribute. Unknown fields are ignored, so a
//! newer rmdev may add fields without a new schema version.

use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::compat::validate;
use crate::error::{Error, Result};
use crate::sysfs::{is_uuid, Sysfs, VersionAttr};

/// The `schema` value.
pub const SCHEMA: &str = "rmdev-manifest";
/// The schema version this rmdev writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// The largest manifest read (bytes).
pub const MAX_BYTES: u64 = 16 << 20;
/// The most entries (types and mdevs) a manifest may hold: `match` does a
/// sysfs write per entry and local target.
pub const MAX_ENTRIES: usize = 100_000;

/// A type in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeEntry {
    /// The parent's name.
    pub parent: String,
    /// The type's directory name.
    #[serde(rename = "type")]
    pub type_id: String,
    /// The type's `name`, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// The type's version string, `null` if it does not migrate.
    #[serde(deserialize_with = "required")]
    pub migration_version: Option<String>,
}

/// An mdev in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdevEntry {
    /// Its UUID.
    pub uuid: String,
    /// Its parent's name.
    pub parent: String,
    /// Its type's directory name.
    #[serde(rename = "type")]
    pub type_id: String,
    /// Its version string, `null` if it does not migrate.
    #[serde(deserialize_with = "required")]
    pub migration_version: Option<String>,
}

/// A nullable field that must be present (serde would read a missing
/// `Option` as `None`: "does not migrate" is not what a missing key says).
fn required<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Option::deserialize(d)
}

/// A manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The exporting host's name.
    pub host: String,
    /// The rmdev that wrote it.
    pub rmdev_version: String,
    /// Every type of every parent.
    pub types: Vec<TypeEntry>,
    /// Every mdev.
    pub mdevs: Vec<MdevEntry>,
}

/// A source entry: a type or an mdev of a manifest.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// "type" or "mdev".
    pub kind: &'static str,
    /// `PARENT/TYPE` or the UUID.
    pub id: String,
    /// Its version string.
    pub migration_version: Option<String>,
}

/// This host's name (`/proc/sys/kernel/hostname`), or empty.
pub(crate) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Names are printed and matched: printable ASCII, as sysfs has them.
fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl TypeEntry {
    /// What [`Manifest::parse`] requires of a type entry.
    fn check(&self) -> std::result::Result<(), String> {
        if !name_ok(&self.parent) || !name_ok(&self.type_id) || self.type_id.contains('/') {
            return Err(format!(
                "type {:?}/{:?}: bad parent or type name",
                self.parent, self.type_id
            ));
        }
        if self.name.as_deref().is_some_and(|n| !name_ok(n)) {
            return Err(format!(
                "type {}/{}: name not printable ASCII",
                self.parent, self.type_id
            ));
        }
        if let Some(v) = &self.migration_version {
            validate(v).map_err(|e| format!("type {}/{}: {e}", self.parent, self.type_id))?;
        }
        Ok(())
    }
}

impl MdevEntry {
    /// What [`Manifest::parse`] requires of an mdev entry.
    fn check(&self) -> std::result::Result<(), String> {
        if !is_uuid(&self.uuid) {
            return Err(format!("mdev {:?}: not a UUID", self.uuid));
        }
        if !name_ok(&self.parent) || !name_ok(&self.type_id) {
            return Err(format!("mdev {}: bad parent or type name", self.uuid));
        }
        if let Some(v) = &self.migration_version {
            validate(v).map_err(|e| format!("mdev {}: {e}", self.uuid))?;
        }
        Ok(())
    }
}

impl Manifest {
    /// This host's manifest, under the host name `host` (this host's own
    /// if `None`). An attribute that exists but cannot be read fails the
    /// export: writing `null` would say "does not migrate". It holds only
    /// what [`Manifest::parse`] accepts: an entry that it would refuse (a
    /// vendor's version string that is not a valid one, a name that is not
    /// printable) is left out and named in `skipped`, so that one odd
    /// device never makes the whole manifest unreadable.
    pub fn export(sys: &Sysfs, host: Option<&str>, skipped: &mut Vec<String>) -> Result<Manifest> {
        let host = host.map_or_else(hostname, str::to_string);
        if !name_ok(&host) {
            return Err(Error::Usage(format!(
                "host name {host:?} is empty, too long or not printable ASCII (a manifest's \
                 reader refuses it): set the host's name, or give one with --host"
            )));
        }
        fn version(v: &VersionAttr, dir: &Path) -> Result<Option<String>> {
            match v {
                VersionAttr::Present(s) => Ok(Some(s.clone())),
                VersionAttr::Absent => Ok(None),
                VersionAttr::Unreadable(e) => Err(Error::io(
                    dir.join("migration_version"),
                    std::io::Error::other(e.clone()),
                )),
            }
        }
        let mut types = Vec::new();
        for t in sys.parents()?.into_iter().flat_map(|p| p.types) {
            let e = TypeEntry {
                migration_version: version(&t.migration_version, &t.path)?,
                parent: t.parent,
                type_id: t.id,
                name: t.name,
            };
            match e.check() {
                Ok(()) => types.push(e),
                Err(why) => skipped.push(why),
            }
        }
        let mut mdevs = Vec::new();
        for m in sys.mdevs()? {
            let e = MdevEntry {
                migration_version: version(&m.migration_version, &m.path)?,
                uuid: m.uuid,
                parent: m.parent,
                type_id: m.type_id,
            };
            match e.check() {
                Ok(()) => mdevs.push(e),
                Err(why) => skipped.push(why),
            }
        }
        Ok(Manifest {
            schema: SCHEMA.into(),
            schema_version: SCHEMA_VERSION,
            host,
            rmdev_version: env!("CARGO_PKG_VERSION").into(),
            types,
            mdevs,
        })
    }

    /// Reads and checks the manifest in `path` (`-` for standard input).
    pub fn load(path: &Path) -> Result<Manifest> {
        let bad = |reason: String| Error::Manifest {
            path: path.display().to_string(),
            reason,
        };
        let mut bytes = Vec::new();
        let reader: Box<dyn Read> = if path == Path::new("-") {
            Box::new(std::io::stdin())
        } else {
            Box::new(fs::File::open(path).map_err(|e| Error::io(path, e))?)
        };
        reader
            .take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(bad(format!("larger than {} MiB", MAX_BYTES >> 20)));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| bad(format!("not UTF-8 (at byte {})", e.valid_up_to())))?;
        Self::parse(text).map_err(bad)
    }

    /// Parses and checks a manifest's text.
    pub fn parse(text: &str) -> std::result::Result<Manifest, String> {
        // The schema first, so that another schema version gets a clear
        // message rather than a missing-field error.
        #[derive(Deserialize)]
        struct Head {
            schema: Option<serde_json::Value>,
            schema_version: Option<serde_json::Value>,
        }
        let head: Head = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if head.schema.as_ref().and_then(|v| v.as_str()) != Some(SCHEMA) {
            return Err(format!(
                "not an rmdev manifest (\"schema\" is not \"{SCHEMA}\")"
            ));
        }
        match head.schema_version.as_ref().and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(format!(
                "schema version {v} is not supported (this rmdev reads version {SCHEMA_VERSION})"
            ))
            }
            None => return Err("\"schema_version\" missing or not a number".into()),
        }
        let m: Manifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if m.types.len() + m.mdevs.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        if !name_ok(&m.host) {
            return Err("\"host\": empty, too long or not printable ASCII".into());
        }
        // A manifest is one host's word: an entry that does not check
        // refuses the whole file (export never writes one).
        for t in &m.types {
            t.check()?;
        }
        for d in &m.mdevs {
            d.check()?;
        }
        Ok(m)
    }

    /// Every entry, types first.
    pub fn entries(&self) -> Vec<Entry> {
        let types = self.types.iter().map(|t| Entry {
            kind: "type",
            id: format!("{}/{}", t.parent, t.type_id),
            migration_version: t.migration_version.clone(),
        });
        let mdevs = self.mdevs.iter().map(|m| Entry {
            kind: "mdev",
            id: m.uuid.clone(),
            migration_version: m.migration_version.clone(),
        });
        types.chain(mdevs).collect()
    }

    /// The entry named `id` (a UUID or `PARENT/TYPE`).
    pub fn find(&self, id: &str) -> Result<Entry> {
        self.entries()
            .into_iter()
            .find(|e| e.id == id || (is_uuid(id) && e.id.eq_ignore_ascii_case(id)))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no entry '{id}' in the manifest of host '{}'",
                    self.host
                ))
            })
    }
}
