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
//! On any failure both devices are put back in a defined state before the
//! error is returned: the source to RUNNING (by SET, or by a device reset if
//! the SET fails), the target reset (RUNNING, its data FD disabled). The
//! error says which state each ended in.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rmdev_logic::envelope::{Parser, Sink, MAX_RECORD_PAYLOAD};
use rmdev_logic::version::VersionError;
use serde::Serialize;

use crate::error::{describe, Error, Result, EXIT_INTERRUPTED};
use crate::vfio::{self, state, Device};
use crate::wholefile::WholeFile;

/// The data FD read and write size (QEMU's buffer size).
pub const CHUNK: usize = 1 << 20;

/// Set by [`interrupt`] (the CLI's SIGINT/SIGTERM/SIGHUP handler): the data
/// loops stop at their next chunk and take the failure path, which puts
/// the devices back and removes a half-written file.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks a running migration, save or load to stop; a second call ends the
/// process at once (exit status [`EXIT_INTERRUPTED`]), for an operator who
/// will not wait for the devices to be put back.
pub fn interrupt() {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    }
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupt() -> std::result::Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted by a signal".into())
    } else {
        Ok(())
    }
}

/// How a migration runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The most pre-copy rounds.
    pub max_rounds: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self { max_rounds: 8 }
    }
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

fn step<T>(r: io::Result<T>, what: &str) -> std::result::Result<T, String> {
    r.map_err(|e| format!("{what}: {}", describe(&e)))
}

/// Where saved bytes go.
trait Out {
    fn put(&mut self, data: &[u8]) -> std::result::Result<(), String>;
}

impl Out for OwnedFd {
    fn put(&mut self, data: &[u8]) -> std::result::Result<(), String> {
        step(
            vfio::write_all_fd(self, data),
            "write to the target's data FD",
        )
    }
}

impl Out for File {
    fn put(&mut self, data: &[u8]) -> std::result::Result<(), String> {
        step(self.write_all(data), "write to the file")
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
fn pump(
    fd: &OwnedFd,
    out: &mut dyn Out,
    buf: &mut [u8],
    budget: u64,
    progress: &dyn Progress,
) -> std::result::Result<(u64, PumpEnd), String> {
    let mut moved = 0u64;
    loop {
        check_interrupt()?;
        if moved >= budget {
            return Ok((moved, PumpEnd::Budget));
        }
        match vfio::read_fd(fd, buf) {
            Ok(0) => return Ok((moved, PumpEnd::Eof)),
            Ok(n) => {
                out.put(&buf[..n])?;
                moved += n as u64;
                progress.bytes(n as u64);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => {
                return Ok((moved, PumpEnd::NoMore))
            }
            Err(e) => return Err(format!("read from the source's data FD: {}", describe(&e))),
        }
    }
}

/// The source's flag set; a device without migration is an error.
fn flags_of(dev: &Device, who: &str) -> Result<u64> {
    dev.migration_flags().map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTTY) {
            Error::NotMigratable(format!("the {who} does not support migration (ENOTTY)"))
        } else {
            Error::Migration(format!(
                "{who}: VFIO_DEVICE_FEATURE_MIGRATION: {}",
                describe(&e)
            ))
        }
    })
}

/// Saves `src`'s state into `out`: pre-copy rounds if offered, then
/// stop-copy to the end. Leaves the source in STOP_COPY.
fn save_into(
    src: &Device,
    flags: u64,
    out: &mut dyn Out,
    opts: Options,
    progress: &dyn Progress,
    sum: &mut Summary,
) -> std::result::Result<Instant, String> {
    let mut buf = vec![0u8; CHUNK];
    if flags & vfio::MIGRATION_PRE_COPY != 0 {
        let fd = step(src.set_state(state::PRE_COPY), "source to PRE_COPY")?
            .ok_or("source to PRE_COPY returned no data FD")?;
        let mut last_dirty = u64::MAX;
        loop {
            let (initial, dirty) = step(vfio::precopy_info(&fd), "VFIO_MIG_GET_PRECOPY_INFO")?;
            let expected = initial.saturating_add(dirty);
            progress.phase(
                &format!("pre-copy round {}", sum.precopy_rounds + 1),
                Some(expected),
            );
            // Twice what the device announced (its estimate leaves out the
            // stream's own framing), and at least one chunk.
            let budget = expected.saturating_mul(2).max(CHUNK as u64);
            let (n, end) = pump(&fd, out, &mut buf, budget, progress)?;
            if end == PumpEnd::Eof {
                return Err("the source's data FD ended in pre-copy".into());
            }
            sum.precopy_rounds += 1;
            sum.precopy_bytes += n;
            let (initial, dirty) = step(vfio::precopy_info(&fd), "VFIO_MIG_GET_PRECOPY_INFO")?;
            // Converged: nothing dirty, no progress, or enough rounds.
            if (initial == 0 && (dirty == 0 || dirty >= last_dirty))
                || sum.precopy_rounds >= opts.max_rounds
            {
                break;
            }
            last_dirty = dirty;
        }
        if flags & vfio::MIGRATION_P2P != 0 {
            step(src.set_state(state::PRE_COPY_P2P), "source to PRE_COPY_P2P")?;
        }
        check_interrupt()?;
        let stopped = Instant::now();
        let again = step(src.set_state(state::STOP_COPY), "source to STOP_COPY")?;
        if again.is_some() {
            return Err("source to STOP_COPY returned a second data FD".into());
        }
        progress.phase("stop-copy", src.data_size().ok());
        sum.stop_copy_bytes = pump_to_eof(&fd, out, &mut buf, progress)?;
        Ok(stopped)
    } else {
        let stopped = Instant::now();
        let fd = step(src.set_state(state::STOP_COPY), "source to STOP_COPY")?
            .ok_or("source to STOP_COPY returned no data FD")?;
        progress.phase("stop-copy", src.data_size().ok());
        sum.stop_copy_bytes = pump_to_eof(&fd, out, &mut buf, progress)?;
        Ok(stopped)
    }
}

/// Reads a stop-copy data FD to its end; `ENOMSG` there breaks the uAPI.
fn pump_to_eof(
    fd: &OwnedFd,
    out: &mut dyn Out,
    buf: &mut [u8],
    progress: &dyn Progress,
) -> std::result::Result<u64, String> {
    match pump(fd, out, buf, u64::MAX, progress)? {
        (n, PumpEnd::Eof) => Ok(n),
        (_, _) => Err("the source's data FD answered ENOMSG in STOP_COPY".into()),
    }
}

/// Ends a target's RESUMING once the whole stream is written: STOP (where
/// the framework checks the stream is whole), then RUNNING.
fn finish_resume(dst: &Device) -> std::result::Result<(), String> {
    check_interrupt()?;
    step(
        dst.set_state(state::STOP),
        "target to STOP (end of the stream)",
    )?;
    step(dst.set_state(state::RUNNING), "target to RUNNING")?;
    Ok(())
}

/// Puts the source back to RUNNING: a SET, or a reset if that fails. The
/// state it ended in, in words.
fn recover_source(src: &Device) -> String {
    if src.set_state(state::RUNNING).is_err() {
        let _ = src.reset();
    }
    match src.state() {
        Ok(s) => format!("source {}", vfio::state_name(s)),
        Err(e) => format!("source state unknown ({})", describe(&e)),
    }
}

/// Resets the target (RUNNING, data FD disabled). The state it ended in.
fn recover_target(dst: &Device) -> String {
    let how = match dst.reset() {
        Ok(()) => "target reset",
        Err(_) => "target reset failed",
    };
    match dst.state() {
        Ok(s) => format!("{how}, {}", vfio::state_name(s)),
        Err(e) => format!("{how}, state unknown ({})", describe(&e)),
    }
}

/// Migrates `src` into `dst` (both open). On failure both are recovered and
/// the error says how they were left.
pub fn migrate(
    src: &Device,
    dst: &Device,
    opts: Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let flags = flags_of(src, "source")?;
    flags_of(dst, "target")?;
    let start = Instant::now();
    let mut sum = Summary {
        flags,
        ..Default::default()
    };
    let run = |sum: &mut Summary| -> std::result::Result<Instant, String> {
        let mut dst_fd = step(dst.set_state(state::RESUMING), "target to RESUMING")?
            .ok_or("target to RESUMING returned no data FD")?;
        let stopped = save_into(src, flags, &mut dst_fd, opts, progress, sum)?;
        progress.phase("resume", None);
        finish_resume(dst)?;
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
        Err(e) => Err(Error::Migration(format!(
            "migration failed: {e}; {}, {}",
            recover_source(src),
            recover_target(dst)
        ))),
    }
}

/// Saves `src` into the file `path`. The file appears only when the whole
/// stream was read and its envelope checked; on failure the source is put
/// back to RUNNING and no file is left.
///
/// An existing file at `path` is replaced if `replace`, and is otherwise
/// an error (found at the end, by the rename: the caller checks first).
pub fn save(
    src: &Device,
    path: &Path,
    replace: bool,
    opts: Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let flags = flags_of(src, "source")?;
    // Owner-only, like a core file: device state may hold guest memory.
    let mut pending = WholeFile::create(path, 0o600)?;
    let start = Instant::now();
    let mut sum = Summary {
        flags,
        ..Default::default()
    };
    let result = (|| -> std::result::Result<Instant, String> {
        let file = pending.file().map_err(|e| e.to_string())?;
        let stopped = save_into(src, flags, file, opts, progress, &mut sum)?;
        Ok(stopped)
    })();
    let stopped = match result {
        Ok(s) => s,
        Err(e) => {
            return Err(Error::Migration(format!(
                "save failed: {e}; {}, no file written",
                recover_source(src)
            )))
        }
    };
    sum.downtime_s = Some(stopped.elapsed().as_secs_f64());
    sum.bytes = sum.precopy_bytes + sum.stop_copy_bytes;
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
        return Err(Error::Migration(format!(
            "save failed: {e}; {}, no file written",
            recover_source(src)
        )));
    }
    // Saved: the source stays stopped until it is closed (the framework
    // then returns it to RUNNING), as after a migration.
    let _ = src.set_state(state::STOP);
    sum.finish(start);
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
/// from its start (RESUMING, the file in 1 MiB writes, STOP, RUNNING). The
/// same open file is checked and loaded, so what is loaded is what was
/// checked. On failure the target is reset.
pub fn load(dst: &Device, f: &mut File, progress: &dyn Progress) -> Result<Summary> {
    let flags = flags_of(dst, "target")?;
    let start = Instant::now();
    let mut sum = Summary {
        flags,
        ..Default::default()
    };
    f.rewind()
        .map_err(|e| Error::Migration(format!("rewind the file: {e}")))?;
    let len = f.metadata().map(|m| m.len()).ok();
    let mut run = |sum: &mut Summary| -> std::result::Result<(), String> {
        let fd = step(dst.set_state(state::RESUMING), "target to RESUMING")?
            .ok_or("target to RESUMING returned no data FD")?;
        progress.phase("load", len);
        let mut buf = vec![0u8; CHUNK];
        loop {
            check_interrupt()?;
            let n = step(f.read(&mut buf), "read the file")?;
            if n == 0 {
                break;
            }
            step(
                vfio::write_all_fd(&fd, &buf[..n]),
                &format!("write to the target's data FD at byte {}", sum.bytes),
            )?;
            sum.bytes += n as u64;
            progress.bytes(n as u64);
        }
        finish_resume(dst)?;
        Ok(())
    };
    match run(&mut sum) {
        Ok(()) => {
            sum.stop_copy_bytes = sum.bytes;
            sum.finish(start);
            Ok(sum)
        }
        Err(e) => Err(Error::Migration(format!(
            "load failed: {e}; {}",
            recover_target(dst)
        ))),
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
