// SPDX-License-Identifier: GPL-2.0

//! The command line: arguments (clap), the commands, and their text and
//! JSON output. The binary (`main.rs`) only calls [`run`].

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use rmdev_logic::version::Version;

use crate::compat::{self, Verdict};
use crate::error::{Cause, Error, Failure, Left, Result, EXIT_INCOMPATIBLE, EXIT_OK};
use crate::libvirt;
use crate::manifest::Manifest;
use crate::migrate::{self, human_bytes, millis, Cancel, Options, Progress, Summary};
use crate::sysfs::{Sysfs, Target, VersionAttr};
use crate::vfio::{self, Device};
use crate::wholefile;

/// Check mdev migration compatibility and drive migrations.
///
/// rmdev reads the mdev sysfs tree (parents, types, mdevs and their
/// migration_version attributes), asks a target whether it accepts a
/// source by writing the source's version string into the target's
/// attribute, exports and matches manifests across hosts, and moves device
/// state through the VFIO migration uAPI.
///
/// Exit status: 0 compatible or done, 1 incompatible, 2 usage or system
/// error, 130 interrupted by a signal.
#[derive(Debug, Parser)]
#[command(name = "rmdev", version, max_term_width = 100)]
pub struct Cli {
    /// Print JSON instead of text (every command that reports).
    #[arg(long, global = true)]
    pub json: bool,
    /// Read sysfs under this directory instead of / (for tests and chroots).
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List parents, their types and the mdevs, with migration support.
    ///
    /// Reads sysfs only: no device is opened, so the migration flag set
    /// shows "not probed" unless --probe.
    List {
        /// Also open each idle migratable mdev briefly through its VFIO
        /// group to read its migration flag set (an mdev in use shows "in
        /// use"; a process opening the group at that instant gets EBUSY).
        #[arg(long)]
        probe: bool,
        /// Only the mdev with this UUID (mdevctl's -u); no parents or
        /// types are listed then.
        #[arg(short, long, value_name = "UUID")]
        uuid: Option<String>,
        /// Only this parent's types and mdevs (mdevctl's -p), e.g.
        /// 0000:00:1b.0 or rmdev_sample.
        #[arg(short, long, value_name = "PARENT")]
        parent: Option<String>,
        /// Only this type and its mdevs (mdevctl's -t), e.g.
        /// rmdev_sample-4m.
        #[arg(short = 't', long = "type", value_name = "TYPE")]
        type_id: Option<String>,
    },
    /// Print the migration_version string of a type or an mdev.
    ///
    /// (rmdev --version prints the tool's own version. The old name of
    /// this command, "version", is still accepted.)
    #[command(name = "migration-version", alias = "version")]
    MigrationVersion {
        /// The type or mdev.
        #[command(flatten)]
        named: Named,
    },
    /// Check whether TARGET can load SOURCE's state.
    ///
    /// Writes SOURCE's version string into TARGET's migration_version (the
    /// target's own rule answers). Exit 0 when compatible, 1 when not.
    Check {
        /// The source: an mdev UUID, PARENT/TYPE or sysfs path on this host,
        /// or an entry of the manifest given with --from.
        source: String,
        /// The target on this host: an mdev UUID, PARENT/TYPE or sysfs path.
        target: String,
        /// Look SOURCE up in this manifest (exported on the source host).
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Compare default-format strings with the default rule, without
        /// writing to sysfs (no root needed; not authoritative: a vendor
        /// rule may differ).
        #[arg(long)]
        offline: bool,
    },
    /// Write this host's manifest: types and mdevs with their versions.
    ///
    /// An entry a manifest's reader would refuse (a vendor's version
    /// string that is not a valid one, a name that is not printable) is
    /// left out, with a warning on standard error.
    Export {
        /// Write it to FILE instead of standard output (- for standard
        /// output). FILE is replaced whole, never left half-written.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The host name to record (default: this host's, which must not
        /// be empty).
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
    /// For each entry of a manifest, the local types and mdevs that accept it.
    ///
    /// Exit 0 when every migratable entry has a target, 1 when one has none.
    Match {
        /// The manifest exported on the source host (- for standard input).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Compare default-format strings with the default rule, without
        /// writing to sysfs (not authoritative: a vendor rule may differ).
        #[arg(long)]
        offline: bool,
    },
    /// Migrate the state of mdev SRC into mdev DST through the VFIO uAPI.
    ///
    /// Checks compatibility first and refuses (exit 1) unless --force.
    Migrate {
        /// The source mdev (UUID or sysfs path).
        src: String,
        /// The target mdev (UUID or sysfs path).
        dst: String,
        /// Migrate even if the check refuses.
        #[arg(long)]
        force: bool,
        /// The most pre-copy rounds.
        #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
        max_rounds: u32,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Save an mdev's state to a file, for a load on another host.
    Save {
        /// The mdev.
        #[command(flatten)]
        mdev: MdevArg,
        /// The file to write (it appears only once whole and checked).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Replace FILE if it exists (without, an existing FILE is an
        /// error, found before the device is touched).
        #[arg(long)]
        force: bool,
        /// The most pre-copy rounds.
        #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
        max_rounds: u32,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Load a saved state into an mdev.
    ///
    /// The file's envelope is checked whole, and its version against the
    /// mdev's, before the device is touched.
    Load {
        /// The mdev.
        #[command(flatten)]
        mdev: MdevArg,
        /// The file written by rmdev save.
        #[arg(short, long, value_name = "FILE")]
        input: PathBuf,
        /// Load even if the version check refuses.
        #[arg(long)]
        force: bool,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// libvirt integration: the mdev check in libvirt's migration and
    /// restore path.
    ///
    /// annotate (source host) records each mdev hostdev's migration_version
    /// in the domain's metadata; the hook (target host, installed with
    /// install-hook) checks it on incoming migrations and restores, and
    /// moves a hostdev to a compatible local mdev if needed.
    #[command(subcommand)]
    Libvirt(LibvirtCommand),
    /// Print a manual page (roff), or write them all into a directory.
    ///
    /// The pages are in section 8, like mdevctl's: rmdev(8), and one per
    /// subcommand, rmdev-list(8) to rmdev-libvirt-install-hook(8).
    Man {
        /// Write every page into DIR (as NAME.8) and list their paths,
        /// instead of printing one.
        #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
        dir: Option<PathBuf>,
        /// The subcommand whose page to print, e.g. "list" or "libvirt
        /// hook" (default: rmdev(8) itself).
        #[arg(value_name = "SUBCOMMAND")]
        subcommand: Vec<String>,
    },
    /// Print a shell completion script to standard output.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How a command names one type or mdev: in one word, or with mdevctl's
/// options.
#[derive(Debug, Args)]
pub struct Named {
    /// An mdev UUID, PARENT/TYPE, or a sysfs path.
    #[arg(value_name = "TARGET", required_unless_present_any = ["uuid", "parent"])]
    target: Option<String>,
    /// An mdev, by UUID (mdevctl's -u).
    #[arg(short, long, value_name = "UUID", conflicts_with_all = ["target", "parent"])]
    uuid: Option<String>,
    /// A type, by its parent (mdevctl's -p), with --type.
    #[arg(
        short,
        long,
        value_name = "PARENT",
        requires = "type_id",
        conflicts_with = "target"
    )]
    parent: Option<String>,
    /// A type, by its id (mdevctl's -t), with --parent.
    #[arg(short = 't', long = "type", value_name = "TYPE", requires = "parent")]
    type_id: Option<String>,
}

impl Named {
    fn resolve(&self, sys: &Sysfs) -> Result<Target> {
        match (&self.target, &self.uuid, &self.parent, &self.type_id) {
            (Some(t), ..) => sys.resolve(t),
            (None, Some(u), ..) => sys.mdev(u).map(Target::Mdev),
            (None, None, Some(p), Some(t)) => sys.mdev_type(p, t).map(Target::Type),
            // clap's rules above leave no other case.
            _ => Err(Error::Usage(
                "name a type or an mdev: TARGET, -u UUID, or -p PARENT -t TYPE".into(),
            )),
        }
    }
}

/// How a command names one mdev: in one word, or with mdevctl's -u.
#[derive(Debug, Args)]
pub struct MdevArg {
    /// The mdev's UUID or sysfs path.
    #[arg(value_name = "MDEV", required_unless_present = "uuid")]
    mdev: Option<String>,
    /// The mdev, by UUID (mdevctl's -u).
    #[arg(short, long, value_name = "UUID", conflicts_with = "mdev")]
    uuid: Option<String>,
}

impl MdevArg {
    fn resolve(&self, sys: &Sysfs) -> Result<crate::sysfs::Mdev> {
        match (&self.mdev, &self.uuid) {
            (Some(m), _) => mdev_target(sys, m),
            (None, Some(u)) => sys.mdev(u),
            (None, None) => Err(Error::Usage("name an mdev: MDEV or -u UUID".into())),
        }
    }
}

/// How to run virsh (annotate, migrate).
#[derive(Debug, Args)]
pub struct VirshArgs {
    /// The virsh program.
    #[arg(long, value_name = "PATH", default_value = "virsh")]
    pub virsh: PathBuf,
    /// The libvirt connection URI (virsh --connect), e.g. qemu:///system.
    #[arg(short = 'c', long, value_name = "URI")]
    pub connect: Option<String>,
}

impl VirshArgs {
    fn virsh(&self) -> libvirt::Virsh {
        libvirt::Virsh {
            program: self.virsh.clone(),
            connect: self.connect.clone(),
        }
    }
}

/// The `rmdev libvirt` commands.
#[derive(Debug, Subcommand)]
pub enum LibvirtCommand {
    /// Record the migration_version of each mdev hostdev of a running
    /// domain in its metadata (on the source host).
    ///
    /// Runs virsh dumpxml, reads each mdev's migration_version and sets the
    /// metadata with virsh metadata (--live, and --config for a persistent
    /// domain). The metadata travels with migrations and save images.
    Annotate {
        /// The domain (name, UUID or id).
        domain: String,
        /// How to run virsh.
        #[command(flatten)]
        virsh: VirshArgs,
    },
    /// Annotate DOMAIN, then run virsh migrate --live DOMAIN DESTURI [ARGS].
    ///
    /// Its exit status is virsh's.
    Migrate {
        /// The domain (name, UUID or id).
        domain: String,
        /// The destination's libvirt URI (virsh migrate --desturi).
        desturi: String,
        /// How to run virsh.
        #[command(flatten)]
        virsh: VirshArgs,
        /// More arguments for virsh migrate, after --.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// The qemu hook, as libvirt runs it: NAME OP SUBOP EXTRA, the domain
    /// XML on standard input (target host).
    ///
    /// Acts on "migrate begin" and "restore begin" only: checks each mdev
    /// hostdev against the version recorded by annotate, and prints the
    /// rewritten XML when a hostdev moves to another local mdev; exits 1
    /// with the reason when no local mdev can take one. Every other call:
    /// exit 0, no output.
    Hook {
        /// Read /proc here (who holds a VFIO group open).
        #[arg(long, value_name = "DIR", default_value = "/proc")]
        proc: PathBuf,
        /// Read running domains' status XML here.
        #[arg(long, value_name = "DIR", default_value = "/run/libvirt/qemu")]
        libvirt_run: PathBuf,
        /// NAME OP SUBOP EXTRA, as libvirt passes them.
        #[arg(
            value_name = "ARGS",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<String>,
    },
    /// Install the hook script in libvirt's qemu.d (or remove it).
    ///
    /// Writes DIR/50-rmdev, mode 0755, which runs BINARY libvirt hook.
    /// libvirtd (or virtqemud) reads hook scripts at start and on SIGHUP.
    InstallHook {
        /// The hook directory.
        #[arg(long, value_name = "DIR", default_value = libvirt::HOOK_DIR)]
        dir: PathBuf,
        /// The rmdev binary the script runs (default: this one).
        #[arg(long, value_name = "PATH", conflicts_with = "remove")]
        binary: Option<PathBuf>,
        /// Remove the script instead.
        #[arg(long)]
        remove: bool,
    },
}

/// Runs the command line `args`; the exit status.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> u8 {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // clap: 0 for --help and --version, 2 for usage errors.
            if !e.use_stderr() {
                return EXIT_OK;
            }
            if args.iter().any(|a| a == "--json") {
                let msg = usage_message(&e);
                println!("{}", serde_json::json!({ "error": msg, "exit_status": 2 }));
            }
            return crate::error::EXIT_ERROR;
        }
    };
    let json = cli.json;
    match execute(cli) {
        Ok(status) => status,
        Err(e) => {
            // A failure that a signal caused has its own status.
            let status = e.exit_status();
            if json {
                let mut v = serde_json::json!({ "error": e.to_string(), "exit_status": status });
                if let Some(o) = v.as_object_mut() {
                    match &e {
                        Error::Refused { verdict, .. } => {
                            o.insert("verdict".into(), verdict.clone());
                        }
                        Error::Migration(f) => {
                            o.insert("failure".into(), failure_json(f));
                        }
                        _ => {}
                    }
                }
                println!("{v}");
            }
            eprintln!("rmdev: {e}");
            status
        }
    }
}

/// A usage error in one line, naming the argument it is about.
fn usage_message(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let what = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    let mut msg = e.kind().to_string();
    if let Some(arg) = what(ContextKind::InvalidArg) {
        msg.push_str(": ");
        msg.push_str(&arg);
    }
    if let Some(v) = what(ContextKind::InvalidValue) {
        msg.push_str(&format!(" ('{v}')"));
    }
    if let Some(sub) = what(ContextKind::InvalidSubcommand) {
        msg.push_str(": ");
        msg.push_str(&sub);
    }
    msg
}

/// Whether `sig`'s action is "ignore" (as a shell leaves SIGINT for a
/// background job, or nohup SIGHUP).
fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: An all-zero `sigaction` is a valid value to be overwritten.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: A null new action only queries; `old` is a valid out pointer.
    let r = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    r == 0 && old.sa_sigaction == libc::SIG_IGN
}

/// A stopped migration, save or load in JSON: the operation, what
/// stopped it (the step and its errno, or a broken uAPI rule, or a
/// signal), and the state each device was left in.
fn failure_json(f: &Failure) -> serde_json::Value {
    let (cause, step) = match &f.cause {
        Cause::Step { step, .. } => ("step", Some(step.clone())),
        Cause::Protocol(_) => ("protocol", None),
        Cause::Cancelled(_) => ("cancelled", None),
    };
    let left = |l: &Option<Left>| {
        l.map(|l| {
            serde_json::json!({
                "state": l.state.ok().map(vfio::state_name),
                "state_errno_name": l.state.err().map(crate::error::errno_name),
                "reset": l.reset,
            })
        })
    };
    serde_json::json!({
        "operation": f.op.name(),
        "cause": cause,
        "step": step,
        "errno_name": f.errno().map(crate::error::errno_name),
        "source": left(&f.source),
        "target": left(&f.target),
    })
}

/// For the commands that move device state: SIGINT, SIGTERM and SIGHUP
/// cancel the operation (the returned token), which stops cleanly
/// (devices put back, no partial file) at its next step instead of the
/// process dying mid-stream; a second signal ends the process at once
/// (exit status 130), for an operator who will not wait for the devices
/// to be put back. A signal the caller left ignored stays ignored.
fn stop_on_signals() -> Cancel {
    let cancel = Cancel::new();
    let keep: Vec<libc::c_int> = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .filter(|&s| ignored(s))
        .collect();
    let on_signal = cancel.clone();
    let handler = move || {
        if on_signal.cancel("interrupted by a signal") {
            std::process::exit(i32::from(crate::error::EXIT_INTERRUPTED));
        }
    };
    if ctrlc::set_handler(handler).is_err() {
        return cancel;
    }
    for s in keep {
        // SAFETY: Setting a signal's action to SIG_IGN runs no code of ours.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
    cancel
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Usage(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn execute(cli: Cli) -> Result<u8> {
    let sys = Sysfs::new(&cli.root);
    let json = cli.json;
    match cli.command {
        Command::List {
            probe,
            uuid,
            parent,
            type_id,
        } => {
            let filter = ListFilter::new(uuid, parent, type_id)?;
            list(&sys, probe, &filter, json)
        }
        Command::MigrationVersion { named } => version(&named.resolve(&sys)?, json),
        Command::Check {
            source,
            target,
            from,
            offline,
        } => check(&sys, &source, &target, from.as_deref(), offline, json),
        Command::Export { output, host } => export(&sys, output.as_deref(), host.as_deref()),
        Command::Match { from, offline } => match_cmd(&sys, &from, offline, json),
        Command::Migrate {
            src,
            dst,
            force,
            max_rounds,
            no_progress,
        } => migrate_cmd(
            &sys,
            &src,
            &dst,
            force,
            max_rounds,
            no_progress || json,
            json,
        ),
        Command::Save {
            mdev,
            output,
            force,
            max_rounds,
            no_progress,
        } => {
            let m = mdev.resolve(&sys)?;
            let opts = Options {
                max_rounds,
                ..Options::default()
            };
            save_cmd(&sys, &m, &output, force, opts, no_progress || json, json)
        }
        Command::Load {
            mdev,
            input,
            force,
            no_progress,
        } => {
            let m = mdev.resolve(&sys)?;
            load_cmd(&sys, &m, &input, force, no_progress || json, json)
        }
        Command::Libvirt(cmd) => libvirt_cmd(&sys, cmd, json),
        Command::Man { dir, subcommand } => man(dir.as_deref(), &subcommand),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rmdev", &mut io::stdout());
            Ok(EXIT_OK)
        }
    }
}

/// The manual section of rmdev's pages (system administration tools,
/// like mdevctl's).
pub const MAN_SECTION: &str = "8";

/// Every manual page, as (file name, roff): rmdev.8 and one per
/// subcommand (rmdev-list.8, rmdev-libvirt-hook.8, ...), sorted by name.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), out)?;
        }
        let man = clap_mangen::Man::new(cmd)
            .section(MAN_SECTION)
            .source(concat!("rmdev ", env!("CARGO_PKG_VERSION")));
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        out.push((man.get_filename(), roff));
        Ok(())
    }
    // Built, the subcommands carry their page names (rmdev-list).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(cmd, &mut pages).map_err(|e| Error::io("manual pages", e))?;
    // By page name: rmdev before rmdev-check, rmdev-libvirt before
    // rmdev-libvirt-hook.
    let stem = |f: &str| f.rsplit_once('.').map_or(f, |(n, _)| n).to_string();
    pages.sort_by_key(|p| stem(&p.0));
    Ok(pages)
}

fn man(dir: Option<&Path>, subcommand: &[String]) -> Result<u8> {
    let pages = man_pages()?;
    if let Some(dir) = dir {
        for (name, roff) in &pages {
            let path = dir.join(name);
            wholefile::write(&path, roff, 0o644)?;
            println!("{}", path.display());
        }
        return Ok(EXIT_OK);
    }
    let mut name = String::from("rmdev");
    for s in subcommand {
        name.push('-');
        name.push_str(s);
    }
    let file = format!("{name}.{MAN_SECTION}");
    let Some((_, roff)) = pages.iter().find(|(n, _)| *n == file) else {
        let known: Vec<&str> = pages
            .iter()
            .filter_map(|(n, _)| n.strip_suffix(&format!(".{MAN_SECTION}")))
            .collect();
        return Err(Error::Usage(format!(
            "no manual page {name}({MAN_SECTION}); the pages: {}",
            known.join(", ")
        )));
    };
    io::stdout()
        .write_all(roff)
        .map_err(|e| Error::io("stdout", e))?;
    Ok(EXIT_OK)
}

fn version_text(v: &VersionAttr) -> String {
    match v {
        VersionAttr::Absent => "(does not migrate)".into(),
        VersionAttr::Present(s) => s.clone(),
        VersionAttr::Unreadable(e) => format!("(unreadable: {e})"),
    }
}

/// The flag set of an idle mdev, read through the VFIO uAPI.
fn mdev_flags(sys: &Sysfs, uuid: &str) -> std::result::Result<u64, String> {
    match Device::open_in(&sys.devices_dir(), uuid) {
        Ok(dev) => dev.migration_flags().map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTTY) {
                "none".into()
            } else {
                crate::error::describe(&e)
            }
        }),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err("in use".into()),
        Err(e) => Err(format!("not opened: {}", crate::error::describe(&e))),
    }
}

/// What the flag set column says when `list` did not open the devices.
pub const NOT_PROBED: &str = "not probed (use --probe)";
/// What the flag set column says for an mdev another process holds.
pub const IN_USE: &str = "not probed (in use)";

/// What `list` shows: everything, or what mdevctl's -u, -p and -t keep.
#[derive(Debug, Default)]
pub struct ListFilter {
    uuid: Option<String>,
    parent: Option<String>,
    type_id: Option<String>,
}

impl ListFilter {
    fn new(uuid: Option<String>, parent: Option<String>, type_id: Option<String>) -> Result<Self> {
        let uuid = match uuid {
            Some(u) => Some(
                crate::sysfs::canonical_uuid(&u)
                    .ok_or_else(|| Error::Usage(format!("'{u}' is not a UUID")))?,
            ),
            None => None,
        };
        Ok(ListFilter {
            uuid,
            parent,
            type_id,
        })
    }

    fn keeps_parent(&self, parent: &str) -> bool {
        self.parent.as_deref().is_none_or(|p| p == parent)
    }

    fn keeps(&self, parent: &str, type_id: &str) -> bool {
        self.keeps_parent(parent) && self.type_id.as_deref().is_none_or(|t| t == type_id)
    }

    fn keeps_mdev(&self, m: &crate::sysfs::Mdev) -> bool {
        self.uuid.as_deref().is_none_or(|u| u == m.uuid) && self.keeps(&m.parent, &m.type_id)
    }
}

fn list(sys: &Sysfs, probe: bool, filter: &ListFilter, json: bool) -> Result<u8> {
    #[derive(Serialize)]
    struct MdevRow {
        #[serde(flatten)]
        mdev: crate::sysfs::Mdev,
        in_use: Option<String>,
        migration_flags: Option<u64>,
        migration_flags_names: Option<String>,
        migration_flags_error: Option<String>,
    }
    #[derive(Serialize)]
    struct Listing {
        parents: Vec<crate::sysfs::Parent>,
        mdevs: Vec<MdevRow>,
    }
    let mut parents = Vec::new();
    // -u names one mdev: its parent's types are not what was asked.
    if filter.uuid.is_none() {
        for mut p in sys.parents()? {
            if !filter.keeps_parent(&p.name) {
                continue;
            }
            p.types.retain(|ty| filter.keeps(&p.name, &ty.id));
            // -t: only the parents that have the type.
            if filter.type_id.is_none() || !p.types.is_empty() {
                parents.push(p);
            }
        }
    }
    // Who holds which mdev, seen in /proc without opening anything.
    let holders = crate::sysfs::Holders::scan(&sys.proc_dir());
    let mdevs: Vec<MdevRow> = sys
        .mdevs()?
        .into_iter()
        .filter(|m| filter.keeps_mdev(m))
        .map(|m| {
            // Without --probe nothing is opened: opening a device's group,
            // even briefly, can make a QEMU starting at that instant fail
            // with EBUSY. With it, an mdev a process holds is not opened
            // either.
            let in_use = holders.of(&m);
            let flags = if m.migration_version == VersionAttr::Absent {
                Err("none".to_string())
            } else if in_use.is_some() {
                Err(IN_USE.to_string())
            } else if probe {
                mdev_flags(sys, &m.uuid)
            } else {
                Err(NOT_PROBED.to_string())
            };
            MdevRow {
                in_use,
                migration_flags: flags.as_ref().ok().copied(),
                migration_flags_names: flags.as_ref().ok().map(|f| vfio::flags_name(*f)),
                migration_flags_error: flags.err(),
                mdev: m,
            }
        })
        .collect();
    if json {
        print_json(&Listing { parents, mdevs })?;
        return Ok(EXIT_OK);
    }
    for p in &parents {
        println!("{}", p.name);
        for t in &p.types {
            let avail = t
                .available_instances
                .map_or("?".to_string(), |n| n.to_string());
            println!(
                "  {}  {}  available {}  migration_version {}",
                t.id,
                t.device_api.as_deref().unwrap_or("-"),
                avail,
                version_text(&t.migration_version)
            );
        }
    }
    if parents.is_empty() && filter.uuid.is_none() {
        if filter.parent.is_some() || filter.type_id.is_some() {
            println!("no mdev parent or type matches");
        } else {
            println!("no mdev parents");
        }
    }
    if mdevs.is_empty() && filter.uuid.is_some() {
        println!("no mdev matches");
    }
    for m in &mdevs {
        let flags = match (&m.migration_flags_names, &m.migration_flags_error) {
            (Some(n), _) => n.clone(),
            (None, Some(e)) => e.clone(),
            (None, None) => "-".into(),
        };
        println!(
            "{} {}/{}  flags {}  migration_version {}",
            m.mdev.uuid,
            m.mdev.parent,
            m.mdev.type_id,
            flags,
            version_text(&m.mdev.migration_version)
        );
        if let Some(u) = &m.in_use {
            println!("  {u}");
        }
    }
    Ok(EXIT_OK)
}

fn version(t: &Target, json: bool) -> Result<u8> {
    let v = local_version(t)?;
    if json {
        print_json(&serde_json::json!({
            "kind": t.kind(), "id": t.label(), "migration_version": v,
        }))?;
    } else {
        println!("{v}");
    }
    Ok(EXIT_OK)
}

/// A source's version string and how it is named.
struct Source {
    label: String,
    origin: String,
    version: String,
}

fn local_version(t: &Target) -> Result<String> {
    match t.version() {
        VersionAttr::Present(s) => Ok(s.clone()),
        VersionAttr::Absent => Err(Error::NotMigratable(format!(
            "{} {} has no migration_version: it does not migrate",
            t.kind(),
            t.label()
        ))),
        VersionAttr::Unreadable(e) => Err(Error::io(
            t.dir().join("migration_version"),
            io::Error::other(e.clone()),
        )),
    }
}

fn source_of(sys: &Sysfs, spec: &str, from: Option<&Path>) -> Result<Source> {
    match from {
        Some(path) => {
            let m = Manifest::load(path)?;
            let e = m.find(spec)?;
            let version = e.migration_version.ok_or_else(|| {
                Error::NotMigratable(format!(
                    "{} {} of host '{}' does not migrate",
                    e.kind, e.id, m.host
                ))
            })?;
            Ok(Source {
                label: e.id,
                origin: format!("manifest of host '{}'", m.host),
                version,
            })
        }
        None => {
            let t = sys.resolve(spec)?;
            Ok(Source {
                label: t.label(),
                origin: "this host".into(),
                version: local_version(&t)?,
            })
        }
    }
}

fn print_verdict(src: &Source, target: &str, v: &Verdict) {
    if v.compatible {
        println!(
            "compatible: {target} accepts {} ({})",
            src.label, src.version
        );
    } else {
        println!(
            "incompatible: {target} refuses {} ({})",
            src.label, src.version
        );
        if !v.reason.is_empty() {
            println!("  reason: {}", v.reason);
        }
        if let Some(d) = &v.detail {
            println!("  detail: {d}");
        }
    }
}

fn check(
    sys: &Sysfs,
    source: &str,
    target: &str,
    from: Option<&Path>,
    offline: bool,
    json: bool,
) -> Result<u8> {
    let src = source_of(sys, source, from)?;
    let tgt = sys.resolve(target)?;
    let start = Instant::now();
    let v = if offline {
        compat::validate(&src.version)?;
        let tv = local_version(&tgt)?;
        compat::offline(&tv, &src.version).ok_or_else(|| {
            Error::Usage(format!(
                "--offline: '{}' or '{tv}' is not in the default format: only {}'s own rule \
                 (the write check, as root) can decide",
                src.version,
                tgt.label()
            ))
        })?
    } else {
        compat::check(&src.version, &tgt)?
    };
    if json {
        print_json(&serde_json::json!({
            "source": { "id": src.label, "origin": src.origin, "migration_version": src.version },
            "target": { "kind": tgt.kind(), "id": tgt.label(),
                        "migration_version": tgt.version().as_str() },
            "verdict": v,
            "elapsed_s": start.elapsed().as_secs_f64(),
        }))?;
    } else {
        print_verdict(&src, &tgt.label(), &v);
    }
    Ok(if v.compatible {
        EXIT_OK
    } else {
        EXIT_INCOMPATIBLE
    })
}

fn export(sys: &Sysfs, output: Option<&Path>, host: Option<&str>) -> Result<u8> {
    let mut skipped = Vec::new();
    let m = Manifest::export(sys, host, &mut skipped)?;
    for why in &skipped {
        eprintln!("rmdev: warning: left out of the manifest: {why}");
    }
    let text = serde_json::to_string_pretty(&m).map_err(|e| Error::Usage(e.to_string()))? + "\n";
    match output {
        Some(p) if p != Path::new("-") => wholefile::write(p, text.as_bytes(), 0o644)?,
        _ => print!("{text}"),
    }
    Ok(EXIT_OK)
}

fn match_cmd(sys: &Sysfs, from: &Path, offline: bool, json: bool) -> Result<u8> {
    #[derive(Serialize)]
    struct Candidate {
        kind: &'static str,
        id: String,
        verdict: Verdict,
    }
    #[derive(Serialize)]
    struct Row {
        kind: &'static str,
        id: String,
        migration_version: String,
        accepted_by: Vec<String>,
        candidates: Vec<Candidate>,
        undecided: Vec<String>,
    }
    let m = Manifest::load(from)?;
    let mut locals: Vec<Target> = Vec::new();
    for p in sys.parents()? {
        locals.extend(p.types.into_iter().map(Target::Type));
    }
    locals.extend(sys.mdevs()?.into_iter().map(Target::Mdev));
    locals.retain(|t| t.version().as_str().is_some());
    // Offline, each string is parsed once, not once per pair.
    let parsed: Vec<Option<Version<'_>>> = locals
        .iter()
        .map(|t| t.version().as_str().and_then(|v| Version::parse(v).ok()))
        .collect();
    let mut rows = Vec::new();
    for e in m.entries() {
        let Some(version) = e.migration_version.clone() else {
            continue;
        };
        let source = Version::parse(&version).ok();
        let mut row = Row {
            kind: e.kind,
            id: e.id,
            migration_version: version.clone(),
            accepted_by: Vec::new(),
            candidates: Vec::new(),
            undecided: Vec::new(),
        };
        for (t, target) in locals.iter().zip(&parsed) {
            let verdict = if offline {
                let (Some(target), Some(source)) = (target, &source) else {
                    row.undecided.push(t.label());
                    continue;
                };
                if !json {
                    // The text names only the targets that accept.
                    if target.accepts(source).is_ok() {
                        row.accepted_by.push(t.label());
                    }
                    continue;
                }
                compat::offline_parsed(target, source)
            } else {
                compat::check(&version, t)?
            };
            if verdict.compatible {
                row.accepted_by.push(t.label());
            }
            row.candidates.push(Candidate {
                kind: t.kind(),
                id: t.label(),
                verdict,
            });
        }
        rows.push(row);
    }
    let all_matched = rows.iter().all(|r| !r.accepted_by.is_empty());
    if json {
        print_json(&serde_json::json!({
            "source_host": m.host,
            "method": if offline { "offline" } else { "write" },
            "authoritative": !offline,
            "entries": rows,
        }))?;
    } else {
        println!(
            "entries of host '{}' and the local types and mdevs that accept them:",
            m.host
        );
        if offline {
            println!(
                "(offline: default-format strings compared with the default rule; not \
                 authoritative, a vendor's own rule may differ: run without --offline on this host to be sure)"
            );
        }
        for r in &rows {
            let acc = if !r.accepted_by.is_empty() {
                r.accepted_by.join(", ")
            } else if r.undecided.is_empty() {
                "no local target".to_string()
            } else {
                "undecided offline (check on this host without --offline)".to_string()
            };
            println!("{} {} ({}): {acc}", r.kind, r.id, r.migration_version);
            if !r.undecided.is_empty() {
                println!(
                    "  not comparable offline (not in the default format): {}",
                    r.undecided.join(", ")
                );
            }
        }
    }
    Ok(if all_matched {
        EXIT_OK
    } else {
        EXIT_INCOMPATIBLE
    })
}

/// A progress bar on standard error when it is a terminal.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new(hidden: bool) -> Bar {
        if hidden || !io::stderr().is_terminal() {
            return Bar(None);
        }
        let pb = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>18} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        Bar(Some(pb))
    }

    fn done(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        if let Some(pb) = &self.0 {
            pb.set_message(name.to_string());
            pb.set_position(0);
            pb.set_length(total.unwrap_or(0));
        }
    }
    fn bytes(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(n);
            if pb.position() > pb.length().unwrap_or(0) {
                pb.set_length(pb.position());
            }
        }
    }
}

/// Runs `f` with a progress bar (unless `hidden`), cleared afterwards.
fn with_progress<T>(hidden: bool, f: impl FnOnce(&dyn Progress) -> Result<T>) -> Result<T> {
    let bar = Bar::new(hidden);
    let r = f(&bar);
    bar.done();
    r
}

fn mdev_target(sys: &Sysfs, spec: &str) -> Result<crate::sysfs::Mdev> {
    match sys.resolve(spec)? {
        Target::Mdev(m) => Ok(m),
        Target::Type(t) => Err(Error::Usage(format!(
            "{}/{} is an mdev type: name an mdev (UUID or sysfs path)",
            t.parent, t.id
        ))),
    }
}

/// Opens `m` for a command that moves its state. An mdev another process
/// holds (EBUSY) names the holder; a user who may not open it (EACCES,
/// EPERM) is told what needs root and what works without it.
fn open_mdev(sys: &Sysfs, m: &crate::sysfs::Mdev) -> Result<Device> {
    Device::open_in(&sys.devices_dir(), &m.uuid).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => {
            let who = crate::sysfs::Holders::scan(&sys.proc_dir())
                .of(m)
                .unwrap_or_else(|| "in use by another process".into());
            Error::Io {
                path: format!("open mdev {} ({who}; nothing was changed)", m.uuid),
                source: e,
            }
        }
        Some(libc::EACCES | libc::EPERM) => Error::Permission(format!(
            "open mdev {}: {}: opening an mdev's VFIO group needs root (or the \
             ownership of its /dev/vfio node that libvirt gives QEMU); list, \
             export, match --offline and check --offline work without",
            m.uuid,
            crate::error::describe(&e)
        )),
        _ => Error::Io {
            path: format!("open mdev {}", m.uuid),
            source: e,
        },
    })
}

fn print_summary(what: &str, s: &Summary, json: bool, extra: serde_json::Value) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(s).map_err(|e| Error::Usage(e.to_string()))?;
        if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            obj.extend(more.clone());
        }
        return print_json(&v);
    }
    println!("{what}: {}", extra_text(&extra));
    let why = match s.precopy_end {
        Some(migrate::PrecopyEnd::Converged) => ", converged",
        Some(migrate::PrecopyEnd::Stalled) => ", dirty data stopped shrinking",
        Some(migrate::PrecopyEnd::MaxRounds) => ", round limit reached",
        None => "",
    };
    println!(
        "  flags {}, {} moved ({} in {} pre-copy round{}{why}, {} in stop-copy)",
        vfio::flags_name(s.flags),
        human_bytes(s.bytes),
        human_bytes(s.precopy_bytes),
        s.precopy_rounds,
        if s.precopy_rounds == 1 { "" } else { "s" },
        human_bytes(s.stop_copy_bytes)
    );
    let downtime = s
        .downtime_s
        .map(|d| format!("downtime {}, ", millis(d)))
        .unwrap_or_default();
    println!(
        "  {downtime}total {}, throughput {}/s",
        millis(s.total_s),
        human_bytes(s.throughput_bps as u64)
    );
    Ok(())
}

fn extra_text(v: &serde_json::Value) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().map_or(v.to_string(), str::to_string)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn refuse_unless_forced(verdict: &Verdict, force: bool, what: &str) -> Result<()> {
    if verdict.compatible {
        return Ok(());
    }
    let why = match &verdict.detail {
        Some(d) => format!("{} ({d})", verdict.reason),
        None => verdict.reason.clone(),
    };
    if force {
        eprintln!("rmdev: warning: {what}: {why}; going on (--force)");
        Ok(())
    } else {
        Err(Error::Refused {
            message: format!("{what}: {why}; nothing was changed (--force to try anyway)"),
            verdict: serde_json::to_value(verdict).unwrap_or_default(),
        })
    }
}

fn migrate_cmd(
    sys: &Sysfs,
    src: &str,
    dst: &str,
    force: bool,
    max_rounds: u32,
    no_progress: bool,
    json: bool,
) -> Result<u8> {
    let cancel = stop_on_signals();
    let (ms, md) = (mdev_target(sys, src)?, mdev_target(sys, dst)?);
    if ms.uuid == md.uuid {
        return Err(Error::Usage("source and target are the same mdev".into()));
    }
    let sv = local_version(&Target::Mdev(ms.clone()))?;
    let verdict = compat::check(&sv, &Target::Mdev(md.clone()))?;
    refuse_unless_forced(&verdict, force, &format!("{} refuses {}", md.uuid, ms.uuid))?;
    let (ds, dd) = (open_mdev(sys, &ms)?, open_mdev(sys, &md)?);
    let s = with_progress(no_progress, |bar| {
        migrate::migrate(&ds, &dd, &Options { max_rounds, cancel }, bar)
    })?;
    print_summary(
        "migrated",
        &s,
        json,
        serde_json::json!({ "source": ms.uuid, "target": md.uuid }),
    )?;
    Ok(EXIT_OK)
}

fn save_cmd(
    sys: &Sysfs,
    m: &crate::sysfs::Mdev,
    output: &Path,
    replace: bool,
    opts: Options,
    no_progress: bool,
    json: bool,
) -> Result<u8> {
    let opts = Options {
        cancel: stop_on_signals(),
        ..opts
    };
    local_version(&Target::Mdev(m.clone()))?;
    // Before the device is touched (the save itself renames without
    // replacing, so a file that appears meanwhile is kept too).
    if !replace && fs::symlink_metadata(output).is_ok() {
        return Err(Error::Usage(format!(
            "{} exists: the device was not touched (--force replaces it)",
            output.display()
        )));
    }
    let dev = open_mdev(sys, m)?;
    let s = with_progress(no_progress, |bar| {
        migrate::save(&dev, output, replace, &opts, bar)
    })?;
    print_summary(
        "saved",
        &s,
        json,
        serde_json::json!({ "source": m.uuid, "file": output.display().to_string() }),
    )?;
    Ok(EXIT_OK)
}

fn load_cmd(
    sys: &Sysfs,
    m: &crate::sysfs::Mdev,
    input: &Path,
    force: bool,
    no_progress: bool,
    json: bool,
) -> Result<u8> {
    let opts = Options {
        cancel: stop_on_signals(),
        ..Options::default()
    };
    let mut file = migrate::open_stream(input)?;
    let info = migrate::verify(&mut file).map_err(|e| {
        Error::BadStream(format!(
            "{}: not a whole rmdev migration stream: {e}; the device was not touched",
            input.display()
        ))
    })?;
    let verdict = compat::check(&info.source_version, &Target::Mdev(m.clone()))?;
    refuse_unless_forced(
        &verdict,
        force,
        &format!(
            "{} refuses the file's source version {}",
            m.uuid, info.source_version
        ),
    )?;
    let dev = open_mdev(sys, m)?;
    let s = with_progress(no_progress, |bar| {
        migrate::load(&dev, &mut file, &opts, bar)
    })?;
    print_summary(
        "loaded",
        &s,
        json,
        serde_json::json!({ "target": m.uuid, "file": input.display().to_string(),
                            "source_version": info.source_version }),
    )?;
    Ok(EXIT_OK)
}

fn libvirt_cmd(sys: &Sysfs, cmd: LibvirtCommand, json: bool) -> Result<u8> {
    match cmd {
        LibvirtCommand::Annotate { domain, virsh } => {
            let a = libvirt::annotate(sys, &virsh.virsh(), &domain)?;
            if json {
                print_json(&a)?;
            } else {
                print_annotation(&a, &mut io::stdout());
            }
            Ok(EXIT_OK)
        }
        LibvirtCommand::Migrate {
            domain,
            desturi,
            virsh,
            args,
        } => {
            let v = virsh.virsh();
            let a = libvirt::annotate(sys, &v, &domain)?;
            // Standard output is virsh's from here on.
            print_annotation(&a, &mut io::stderr());
            let mut argv = vec![
                "migrate".to_string(),
                "--live".into(),
                "--domain".into(),
                domain,
                "--desturi".into(),
                desturi,
            ];
            argv.extend(args);
            let e = std::os::unix::process::CommandExt::exec(&mut v.command(&argv));
            Err(Error::io(&v.program, e))
        }
        LibvirtCommand::Hook {
            proc,
            libvirt_run,
            args,
        } => Ok(hook_cmd(
            libvirt::HostView {
                sys: sys.clone(),
                proc_dir: proc,
                run_dir: libvirt_run,
            },
            &args,
        )),
        LibvirtCommand::InstallHook {
            dir,
            binary,
            remove,
        } => {
            let r = if remove {
                libvirt::remove_hook(&dir)?
            } else {
                let b = libvirt::hook_binary(binary.as_deref())?;
                libvirt::install_hook(&dir, &b)?
            };
            if json {
                print_json(&r)?;
                return Ok(EXIT_OK);
            }
            let p = r.path.display();
            match r.action {
                "absent" => println!("{p}: not installed; nothing to remove"),
                "unchanged" => println!("{p}: already installed, unchanged"),
                a => println!("{p}: {a}"),
            }
            if r.action != "absent" && r.action != "unchanged" {
                println!(
                    "libvirt reads hook scripts when it starts: restart libvirtd (or virtqemud), \
                     or send it SIGHUP (systemctl reload libvirtd), for this to take effect"
                );
            }
            Ok(EXIT_OK)
        }
    }
}

fn print_annotation(a: &libvirt::Annotation, out: &mut dyn Write) {
    let mut place = Vec::new();
    if a.live {
        place.push("live");
    }
    if a.config {
        place.push("config");
    }
    let _ = writeln!(
        out,
        "annotated domain '{}' ({}): {} mdev hostdev{} recorded under {}",
        a.domain,
        place.join(" and "),
        a.mdevs.len(),
        if a.mdevs.len() == 1 { "" } else { "s" },
        a.uri
    );
    for m in &a.mdevs {
        let v = match &m.migration_version {
            Some(v) => format!("'{v}'"),
            None => "no migration_version: not checked on the target".into(),
        };
        let _ = writeln!(
            out,
            "  {} mdev {} {} {v}",
            m.alias.as_deref().unwrap_or("(no alias)"),
            m.uuid,
            m.type_label()
        );
    }
}

/// The hook: exit 0 and nothing on standard output unless it acts; then
/// 0 with the XML unchanged (empty output) or rewritten (the whole XML), or
/// 1 with the reason on standard error. Never an error exit through
/// [`run`], which could print JSON on standard output.
fn hook_cmd(view: libvirt::HostView, args: &[String]) -> u8 {
    let (name, op, subop) = match args {
        [n, o, s, ..] => (n.as_str(), o.as_str(), s.as_str()),
        _ => return EXIT_OK,
    };
    if !libvirt::hook_acts(op, subop) {
        return EXIT_OK;
    }
    let fail = |msg: String| {
        eprintln!("rmdev: domain '{name}' ({op} {subop}): {msg}");
        EXIT_INCOMPATIBLE
    };
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return fail(
            "standard input is a terminal: the hook reads the domain XML from standard input, \
             as libvirt provides it"
                .into(),
        );
    }
    let xml = match libvirt::read_xml(stdin.lock()) {
        Ok(x) => x,
        Err(e) => return fail(e.to_string()),
    };
    let res = match libvirt::hook(&view, name, &xml) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    for n in &res.notes {
        eprintln!("rmdev: {n}");
    }
    if !res.refused.is_empty() {
        for r in &res.refused {
            eprintln!("rmdev: {r}");
        }
        eprintln!(
            "rmdev: domain '{name}': refused ({op} {subop}): nothing was changed on this host"
        );
        return EXIT_INCOMPATIBLE;
    }
    if let Some(out) = res.output {
        let mut so = io::stdout().lock();
        if let Err(e) = so.write_all(out.as_bytes()).and_then(|()| so.flush()) {
            return fail(format!("writing the domain XML: {e}"));
        }
    }
    EXIT_OK
}
