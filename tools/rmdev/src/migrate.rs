// SPDX-License-Identifier: GPL-2.0

//! Driving a migration through the VFIO uAPI: between two local mdevs, or
//! split across hosts as a save to a file and a load from it.
//!
//! The sequence follows the uAPI (`Documentation/fsm.rst`): the target goes
//! to RESUMING first, so every byte the source produces can go straight
//! into the target's data FD; a source that offers PRE_COPY sends rounds
//! while it keeps running, until its dirty bytes stop shrinking (or reach
//! zero, or the round limit); then STOP_COPY to the end of the stream, the
//! target to STOP (where the framework checks the stream is whole) and
//! RUNNING. Downtime is the time from the source leaving its running
//! states to the target reaching RUNNING.
//!
//! On any failure, and when the operation's [`Cancel`] token is cancelled
//! (checked before every state change and every chunk of data), both
//! devices are put back in a defined state before the error is returned:
//! the source to RUNNING (by SET, or by a device reset if the SET fails),
//! the target reset (RUNNING, its data FD disabled). The error is typed
//! ([`Failure`]): what stopped the operation, with the errno, and the state
//! each device ended in.
//!
//! The engine is written once, over the [`MigrationDevice`] and [`DataFd`]
//! traits: `rmdev` and the lab's VF tests drive real VFIO devices with it,
//! the host tests (`tests/engine.rs`) fake devices.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rmdev_logic::envelope::{Parser, Sink, MAX_RECORD_PAYLOAD};
use rmdev_logic::version::VersionError;
use serde::Serialize;

use crate::error::{describe, Cause, Error, Failure, Left, Operation, Result, Role};
use crate::vfio::{self, state, Device};
use crate::wholefile::WholeFile;

/// The data FD read and write size (QEMU's buffer size).
pub const CHUNK: usize = 1 << 20;

/// What the engine needs of a device: the uAPI's migration calls. The
/// VFIO [`Device`] is one; the host tests drive the engine with a fake.
pub trait MigrationDevice {
    /// The device's migration data file.
    type DataFd: DataFd;
    /// `VFIO_DEVICE_FEATURE_MIGRATION`: the flag set.
    fn migration_flags(&self) -> io::Result<u64>;
    /// GET of the device state.
    fn state(&self) -> io::Result<u32>;
    /// SET of the device state: the data file, if the arc opens one.
    fn set_state(&self, state: u32) -> io::Result<Option<Self::DataFd>>;
    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> io::Result<()>;
    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
    fn data_size(&self) -> io::Result<u64>;
}

/// A migration data file.
pub trait DataFd {
    /// One `read(2)`.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// One `write(2)`.
    fn write(&self, data: &[u8]) -> io::Result<usize>;
    /// `VFIO_MIG_GET_PRECOPY_INFO`: (initial bytes, dirty bytes).
    fn precopy_info(&self) -> io::Result<(u64, u64)>;
}

impl MigrationDevice for Device {
    type DataFd = OwnedFd;
    fn migration_flags(&self) -> io::Result<u64> {
        Device::migration_flags(self)
    }
    fn state(&self) -> io::Result<u32> {
        Device::state(self)
    }
    fn set_state(&self, state: u32) -> io::Result<Option<OwnedFd>> {
        Device::set_state(self, state)
    }
    fn reset(&self) -> io::Result<()> {
        Device::reset(self)
    }
    fn data_size(&self) -> io::Result<u64> {
        Device::data_size(self)
    }
}

impl DataFd for OwnedFd {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        vfio::read_fd(self, buf)
    }
    fn write(&self, data: &[u8]) -> io::Result<usize> {
        vfio::write_fd(self, data)
    }
    fn precopy_info(&self) -> io::Result<(u64, u64)> {
        vfio::precopy_info(self)
    }
}

/// Cancels one migration, save or load: the engine stops at its next step
/// (at the latest after one more chunk of data) and takes the failure
/// path, which puts the devices back and leaves no file. Clones share the
/// request, so a signal handler or another thread can hold one.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    requested: Arc<AtomicBool>,
    why: Arc<OnceLock<&'static str>>,
}

impl Cancel {
    /// A token nobody has cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the operation to stop; `why` becomes the failure's cause (the
    /// first reason given wins). Whether it was already cancelled.
    pub fn cancel(&self, why: &'static str) -> bool {
        let _ = self.why.set(why);
        self.requested.swap(true, Ordering::SeqCst)
    }

    /// Whether the operation was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn check(&self) -> std::result::Result<(), Cause> {
        if self.is_cancelled() {
            Err(Cause::Cancelled(
                self.why.get().copied().unwrap_or("cancelled"),
            ))
        } else {
            Ok(())
        }
    }
}

/// How a migration, save or load runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The most pre-copy rounds.
    pub max_rounds: u32,
    /// Stops the operation when cancelled.
    pub cancel: Cancel,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_rounds: 8,
            cancel: Cancel::new(),
        }
    }
}

/// Why pre-copy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrecopyEnd {
    /// Nothing initial left and nothing dirty.
    Converged,
    /// Nothing initial left, and the dirty bytes stopped shrinking.
    Stalled,
    /// The round limit ([`Options::max_rounds`]) was reached.
    MaxRounds,
}

/// What a migration, save or load did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// The source's migration flag set (save, migrate).
    pub flags: u64,
    /// Stream bytes moved in all.
    pub bytes: u64,
    /// Pre-copy rounds.
    pub precopy_rounds: u32,
    /// Why pre-copy ended; none without pre-copy (or for a load).
    pub precopy_end: Option<PrecopyEnd>,
    /// Bytes sent in pre-copy.
    pub precopy_bytes: u64,
    /// Bytes sent in stop-copy.
    pub stop_copy_bytes: u64,
    /// Time the source spent stopped until the target ran (migrate), or
    /// stopped until its stream ended (save), in seconds; none for a load,
    /// which has no source.
    pub downtime_s: Option<f64>,
    /// The whole operation, in seconds.
    pub total_s: f64,
    /// Bytes per second over the whole operation.
    pub throughput_bps: f64,
}

impl Summary {
    fn finish(&mut self, start: Instant) {
        let t = start.elapsed().as_secs_f64();
        self.total_s = t;
        self.throughput_bps = if t > 0.0 { self.bytes as f64 / t } else { 0.0 };
    }
}

/// Progress reports: the phase and the bytes moved so far in it.
pub trait Progress {
    /// A new phase begins; `total` is its expected size, if known.
    fn phase(&self, name: &str, total: Option<u64>);
    /// `n` more bytes moved.
    fn bytes(&self, n: u64);
}

/// A [`Progress`] that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn bytes(&self, _: u64) {}
}

/// A failed call as a [`Cause`].
fn step<T>(r: io::Result<T>, what: &str) -> std::result::Result<T, Cause> {
    r.map_err(|e| Cause::Step {
        step: what.to_string(),
        errno: e.raw_os_error(),
        detail: describe(&e),
    })
}

/// Writes all of `data` to a data file, retrying short writes.
fn write_all<F: DataFd + ?Sized>(fd: &F, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match fd.write(data) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where saved bytes go: a file, memory, a target's data file.
pub trait StreamOut {
    /// What a failed [`StreamOut::put`] was doing, for the error.
    fn what(&self) -> &'static str;
    /// Takes all of `data`.
    fn put(&mut self, data: &[u8]) -> io::Result<()>;
}

impl StreamOut for File {
    fn what(&self) -> &'static str {
        "write to the file"
    }
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data)
    }
}

impl StreamOut for Vec<u8> {
    fn what(&self) -> &'static str {
        "keep the stream in memory"
    }
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.try_reserve(data.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        self.extend_from_slice(data);
        Ok(())
    }
}

/// A target's data file as a [`StreamOut`].
struct TargetOut<'a, F: DataFd>(&'a F);

impl<F: DataFd> StreamOut for TargetOut<'_, F> {
    fn what(&self) -> &'static str {
        "write to the target's data FD"
    }
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(self.0, data)
    }
}

/// How a [`pump`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PumpEnd {
    /// EOF: the stream is complete.
    Eof,
    /// `ENOMSG`: nothing more for now (pre-copy).
    NoMore,
    /// The byte budget was used up.
    Budget,
}

/// Reads `fd` until `ENOMSG` (pre-copy: nothing more for now), EOF, or
/// `budget` bytes, passing every byte to `out`. The budget bounds a
/// pre-copy round against a device that dirties data as fast as it is
/// read and so never answers `ENOMSG`.
fn pump<F: DataFd>(
    fd: &F,
    out: &mut dyn StreamOut,
    buf: &mut [u8],
    budget: u64,
    opts: &Options,
    progress: &dyn Progress,
) -> std::result::Result<(u64, PumpEnd), Cause> {
    let mut moved = 0u64;
    loop {
        opts.cancel.check()?;
        if moved >= budget {
            return Ok((moved, PumpEnd::Budget));
        }
        match fd.read(buf) {
            Ok(0) => return Ok((moved, PumpEnd::Eof)),
            Ok(n) => {
                let what = out.what();
                step(out.put(&buf[..n]), what)?;
                moved += n as u64;
                progress.bytes(n as u64);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => {
                return Ok((moved, PumpEnd::NoMore))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return step(Err(e), "read from the source's data FD"),
        }
    }
}

/// The device's flag set; a device without migration is an error.
fn flags_of<D: MigrationDevice>(dev: &D, op: Operation, role: Role) -> Result<u64> {
    let who = match role {
        Role::Source => "source",
        Role::Target => "target",
    };
    dev.migration_flags().map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTTY) {
            Error::NotMigratable(format!("the {who} does not support migration (ENOTTY)"))
        } else {
            Error::Migration(Box::new(Failure {
                op,
                cause: Cause::Step {
                    step: format!("{who}: VFIO_DEVICE_FEATURE_MIGRATION"),
                    errno: e.raw_os_error(),
                    detail: describe(&e),
                },
                source: None,
                target: None,
            }))
        }
    })
}

/// Saves `src`'s state into `out`: pre-copy rounds if offered, then
/// stop-copy to the end. Leaves the source in STOP_COPY; returns when it
/// stopped running.
fn save_into<S: MigrationDevice>(
    src: &S,
    flags: u64,
    out: &mut dyn StreamOut,
    opts: &Options,
    progress: &dyn Progress,
    sum: &mut Summary,
) -> std::result::Result<Instant, Cause> {
    let mut buf = vec![0u8; CHUNK];
    if flags & vfio::MIGRATION_PRE_COPY != 0 {
        let fd = step(src.set_state(state::PRE_COPY), "source to PRE_COPY")?.ok_or(
            Cause::Protocol("source to PRE_COPY returned no data FD".into()),
        )?;
        let mut last_dirty = u64::MAX;
        loop {
            let (initial, dirty) = step(fd.precopy_info(), "VFIO_MIG_GET_PRECOPY_INFO")?;
            let expected = initial.saturating_add(dirty);
            progress.phase(
                &format!("pre-copy round {}", sum.precopy_rounds + 1),
                Some(expected),
            );
            // Twice what the device announced (its estimate leaves out the
            // stream's own framing), and at least one chunk.
            let budget = expected.saturating_mul(2).max(CHUNK as u64);
            let (n, end) = pump(&fd, out, &mut buf, budget, opts, progress)?;
            if end == PumpEnd::Eof {
                return Err(Cause::Protocol(
                    "the source's data FD ended in pre-copy".into(),
                ));
            }
            sum.precopy_rounds += 1;
            sum.precopy_bytes += n;
            let (initial, dirty) = step(fd.precopy_info(), "VFIO_MIG_GET_PRECOPY_INFO")?;
            let end = if initial == 0 && dirty == 0 {
                Some(PrecopyEnd::Converged)
            } else if initial == 0 && dirty >= last_dirty {
                Some(PrecopyEnd::Stalled)
            } else if sum.precopy_rounds >= opts.max_rounds {
                Some(PrecopyEnd::MaxRounds)
            } else {
                None
            };
            if end.is_some() {
                sum.precopy_end = end;
                break;
            }
            last_dirty = dirty;
        }
        if flags & vfio::MIGRATION_P2P != 0 {
            step(src.set_state(state::PRE_COPY_P2P), "source to PRE_COPY_P2P")?;
        }
        opts.cancel.check()?;
        let stopped = Instant::now();
        let again = step(src.set_state(state::STOP_COPY), "source to STOP_COPY")?;
        if again.is_some() {
            return Err(Cause::Protocol(
                "source to STOP_COPY returned a second data FD".into(),
            ));
        }
        progress.phase("stop-copy", src.data_size().ok());
        sum.stop_copy_bytes = pump_to_eof(&fd, out, &mut buf, opts, progress)?;
        Ok(stopped)
    } else {
        opts.cancel.check()?;
        let stopped = Instant::now();
        let fd = step(src.set_state(state::STOP_COPY), "source to STOP_COPY")?.ok_or(
            Cause::Protocol("source to STOP_COPY returned no data FD".into()),
        )?;
        progress.phase("stop-copy", src.data_size().ok());
        sum.stop_copy_bytes = pump_to_eof(&fd, out, &mut buf, opts, progress)?;
        Ok(stopped)
    }
}

/// Reads a stop-copy data FD to its end; `ENOMSG` there breaks the uAPI.
fn pump_to_eof<F: DataFd>(
    fd: &F,
    out: &mut dyn StreamOut,
    buf: &mut [u8],
    opts: &Options,
    progress: &dyn Progress,
) -> std::result::Result<u64, Cause> {
    match pump(fd, out, buf, u64::MAX, opts, progress)? {
        (n, PumpEnd::Eof) => Ok(n),
        (_, _) => Err(Cause::Protocol(
            "the source's data FD answered ENOMSG in STOP_COPY".into(),
        )),
    }
}

/// Ends a target's RESUMING once the whole stream is written: STOP (where
/// the framework checks the stream is whole), then RUNNING.
fn finish_resume<T: MigrationDevice>(dst: &T, opts: &Options) -> std::result::Result<(), Cause> {
    opts.cancel.check()?;
    step(
        dst.set_state(state::STOP),
        "target to STOP (end of the stream)",
    )?;
    step(dst.set_state(state::RUNNING), "target to RUNNING")?;
    Ok(())
}

/// The state `dev` is in now, or the errno of the GET.
fn state_now<D: MigrationDevice>(dev: &D) -> std::result::Result<u32, i32> {
    dev.state()
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Puts the source back to RUNNING: a SET, or a reset if that fails.
fn recover_source<S: MigrationDevice>(src: &S) -> Left {
    let reset = if src.set_state(state::RUNNING).is_err() {
        Some(src.reset().is_ok())
    } else {
        None
    };
    Left {
        role: Role::Source,
        reset,
        state: state_now(src),
    }
}

/// Resets the target (RUNNING, data FD disabled).
fn recover_target<T: MigrationDevice>(dst: &T) -> Left {
    let reset = Some(dst.reset().is_ok());
    Left {
        role: Role::Target,
        reset,
        state: state_now(dst),
    }
}

fn failed(op: Operation, cause: Cause, source: Option<Left>, target: Option<Left>) -> Error {
    Error::Migration(Box::new(Failure {
        op,
        cause,
        source,
        target,
    }))
}

/// The start of an operation on `dev`: its flag set (a device without
/// migration is an error), a cancellation already requested (nothing
/// touched), the clock, an empty summary.
fn begin<D: MigrationDevice>(
    dev: &D,
    op: Operation,
    role: Role,
    opts: &Options,
) -> Result<(Instant, Summary)> {
    let flags = flags_of(dev, op, role)?;
    opts.cancel.check().map_err(|c| failed(op, c, None, None))?;
    Ok((
        Instant::now(),
        Summary {
            flags,
            ..Default::default()
        },
    ))
}

/// Migrates `src` into `dst` (both open). On failure or cancellation both
/// are recovered and the error says how they were left.
pub fn migrate<S: MigrationDevice, T: MigrationDevice>(
    src: &S,
    dst: &T,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let (start, mut sum) = begin(src, Operation::Migrate, Role::Source, opts)?;
    flags_of(dst, Operation::Migrate, Role::Target)?;
    let flags = sum.flags;
    let run = |sum: &mut Summary| -> std::result::Result<Instant, Cause> {
        let dst_fd = step(dst.set_state(state::RESUMING), "target to RESUMING")?.ok_or(
            Cause::Protocol("target to RESUMING returned no data FD".into()),
        )?;
        let stopped = save_into(src, flags, &mut TargetOut(&dst_fd), opts, progress, sum)?;
        progress.phase("resume", None);
        finish_resume(dst, opts)?;
        Ok(stopped)
    };
    match run(&mut sum) {
        Ok(stopped) => {
            sum.downtime_s = Some(stopped.elapsed().as_secs_f64());
            // The source's state now lives in the target; stop the source
            // (closing it later returns it to RUNNING, the framework's rule).
            // It is already stopped (STOP_COPY): a failure here changes
            // nothing for the target, which runs.
            let _ = src.set_state(state::STOP);
            sum.bytes = sum.precopy_bytes + sum.stop_copy_bytes;
            sum.finish(start);
            Ok(sum)
        }
        Err(cause) => Err(failed(
            Operation::Migrate,
            cause,
            Some(recover_source(src)),
            Some(recover_target(dst)),
        )),
    }
}

/// Saves `src` into `out` (any [`StreamOut`]: memory, a file, a pipe).
/// The source stays stopped afterwards (closing it returns it to RUNNING);
/// on failure or cancellation it is put back to RUNNING. What `out` holds
/// after a failure is a partial stream: dropping it is the caller's part.
pub fn save_to<S: MigrationDevice>(
    src: &S,
    out: &mut dyn StreamOut,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let (start, mut sum) = begin(src, Operation::Save, Role::Source, opts)?;
    let flags = sum.flags;
    match save_into(src, flags, out, opts, progress, &mut sum) {
        Ok(stopped) => {
            sum.downtime_s = Some(stopped.elapsed().as_secs_f64());
            sum.bytes = sum.precopy_bytes + sum.stop_copy_bytes;
            let _ = src.set_state(state::STOP);
            sum.finish(start);
            Ok(sum)
        }
        Err(cause) => Err(failed(
            Operation::Save,
            cause,
            Some(recover_source(src)),
            None,
        )),
    }
}

/// Saves `src` into the file `path`. The file appears only when the whole
/// stream was read and its envelope checked; on failure the source is put
/// back to RUNNING and no file is left.
///
/// An existing file at `path` is replaced if `replace`, and is otherwise
/// an error (found at the end, by the rename: the caller checks first).
pub fn save<S: MigrationDevice>(
    src: &S,
    path: &Path,
    replace: bool,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    flags_of(src, Operation::Save, Role::Source)?;
    // Owner-only, like a core file: device state may hold guest memory.
    let mut pending = WholeFile::create(path, 0o600)?;
    let sum = {
        let file = pending.file()?;
        save_to(src, file, opts, progress)?
    };
    // What the device produced must be a whole stream, or nobody should
    // ever be offered it.
    if let Err(e) = verify_file(pending.tmp_path()) {
        return Err(Error::BadStream(format!(
            "the source produced a stream that does not check ({e}); {}, no file written",
            recover_source(src)
        )));
    }
    let committed = if replace {
        pending.commit()
    } else {
        pending.commit_new()
    };
    if let Err(e) = committed {
        return Err(failed(
            Operation::Save,
            Cause::Step {
                step: format!("keep the file {}", path.display()),
                errno: None,
                detail: e.to_string(),
            },
            Some(recover_source(src)),
            None,
        ));
    }
    // Saved: the source stays stopped until it is closed (the framework
    // then returns it to RUNNING), as after a migration.
    Ok(sum)
}

/// What a whole, checked stream file holds.
#[derive(Clone, Debug, Serialize)]
pub struct StreamInfo {
    /// The source's version string, from the header.
    pub source_version: String,
    /// The stream's length.
    pub bytes: u64,
    /// Its DATA records.
    pub records: u64,
}

struct Collect {
    version: String,
    records: u64,
}

impl Sink for Collect {
    type Error = ();
    fn check_version(&mut self, source: &str) -> std::result::Result<(), VersionError> {
        self.version = source.to_string();
        Ok(())
    }
    fn record(&mut self, _: u16, _: &[u8]) -> std::result::Result<(), ()> {
        self.records += 1;
        Ok(())
    }
}

/// Opens a stream file for a load: a regular file (a pipe could not be
/// read twice, once to check and once to load).
pub fn open_stream(path: &Path) -> Result<File> {
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, and no
    // signal ends a blocked open(2) (SA_RESTART). A regular file ignores it.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Usage(format!(
            "{}: not a regular file (a stream file is read twice: checked, then loaded)",
            path.display()
        )));
    }
    Ok(f)
}

/// Checks the envelope of the stream in `path` (see [`verify`]).
pub fn verify_file(path: &Path) -> std::result::Result<StreamInfo, String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    verify(&mut f)
}

/// Checks the envelope of the stream in `f` from its start with the parser
/// the kernel runs (`core/logic`): header, every record's checksum, the END
/// record, nothing after it.
pub fn verify(f: &mut File) -> std::result::Result<StreamInfo, String> {
    f.rewind().map_err(|e| e.to_string())?;
    let mut parser = Parser::new(vec![0u8; MAX_RECORD_PAYLOAD]);
    let mut sink = Collect {
        version: String::new(),
        records: 0,
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n], &mut sink).map_err(|e| match e {
            rmdev_logic::envelope::StreamError::Envelope(env) => {
                format!("{env} at byte {}", parser.offset())
            }
            rmdev_logic::envelope::StreamError::Vendor(()) => "refused".into(),
        })?;
    }
    parser
        .finish()
        .map_err(|e| format!("{e} at byte {}", parser.offset()))?;
    Ok(StreamInfo {
        source_version: sink.version,
        bytes: parser.offset(),
        records: sink.records,
    })
}

/// Loads the stream file `f`, already checked with [`verify`], into `dst`
/// from its start (see [`load_from`]). The same open file is checked and
/// loaded, so what is loaded is what was checked.
pub fn load<T: MigrationDevice>(
    dst: &T,
    f: &mut File,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    flags_of(dst, Operation::Load, Role::Target)?;
    step(f.rewind(), "rewind the file").map_err(|c| failed(Operation::Load, c, None, None))?;
    let len = f.metadata().map(|m| m.len()).ok();
    load_from(dst, f, len, opts, progress)
}

/// Loads the stream `input` into `dst`: RESUMING, the stream in 1 MiB
/// writes, STOP (where the framework checks the stream is whole), RUNNING.
/// `len` is the stream's size, if known (for progress). On failure or
/// cancellation the target is reset.
pub fn load_from<T: MigrationDevice>(
    dst: &T,
    input: &mut dyn Read,
    len: Option<u64>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let (start, mut sum) = begin(dst, Operation::Load, Role::Target, opts)?;
    let mut run = |sum: &mut Summary| -> std::result::Result<(), Cause> {
        let fd = step(dst.set_state(state::RESUMING), "target to RESUMING")?.ok_or(
            Cause::Protocol("target to RESUMING returned no data FD".into()),
        )?;
        progress.phase("load", len);
        let mut buf = vec![0u8; CHUNK];
        loop {
            opts.cancel.check()?;
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return step(Err(e), "read the stream"),
            };
            step(
                write_all(&fd, &buf[..n]),
                &format!("write to the target's data FD at byte {}", sum.bytes),
            )?;
            sum.bytes += n as u64;
            progress.bytes(n as u64);
        }
        finish_resume(dst, opts)?;
        Ok(())
    };
    match run(&mut sum) {
        Ok(()) => {
            sum.stop_copy_bytes = sum.bytes;
            sum.finish(start);
            Ok(sum)
        }
        Err(cause) => Err(failed(
            Operation::Load,
            cause,
            None,
            Some(recover_target(dst)),
        )),
    }
}

/// Formats a byte count for people (`4.0 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Formats a duration in milliseconds.
pub fn millis(s: f64) -> String {
    format!(
        "{:.1} ms",
        Duration::from_secs_f64(s.max(0.0)).as_secs_f64() * 1000.0
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rmdev_logic::envelope::Encoder;

    fn stream(version: &str, payloads: &[&[u8]]) -> Vec<u8> {
        let (mut enc, header) = Encoder::new(version).unwrap();
        let mut s = header.as_bytes().to_vec();
        for p in payloads {
            s.extend_from_slice(&enc.begin(1, p.len()).unwrap());
            enc.payload(p).unwrap();
            s.extend_from_slice(p);
            s.extend_from_slice(&enc.end_record().unwrap());
        }
        s.extend_from_slice(&enc.end().unwrap());
        s
    }

    #[test]
    fn verifies_whole_streams_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let good = stream("v:t:1.0", &[b"hello", b"world"]);
        fs::write(&p, &good).unwrap();
        let info = verify_file(&p).unwrap();
        assert_eq!(info.source_version, "v:t:1.0");
        assert_eq!(info.records, 2);
        assert_eq!(info.bytes, good.len() as u64);
        // Every truncation and a bit flip in every byte are refused.
        for cut in 0..good.len() {
            fs::write(&p, &good[..cut]).unwrap();
            assert!(verify_file(&p).is_err(), "cut at {cut}");
        }
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&p, &bad).unwrap();
            assert!(verify_file(&p).is_err(), "flip at {at}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        fs::write(&p, &trailing).unwrap();
        assert!(verify_file(&p).unwrap_err().contains("after"), "trailing");
    }

    #[test]
    fn formats() {
        assert_eq!(human_bytes(655), "655 B");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
        assert_eq!(millis(0.0365), "36.5 ms");
    }
}
