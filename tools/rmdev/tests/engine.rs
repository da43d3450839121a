// SPDX-License-Identifier: GPL-2.0

//! The migration engine (`rmdev::migrate`) against fake devices behind its
//! `MigrationDevice` trait: pre-copy convergence and its three ends, the
//! round budget against a device that never answers `ENOMSG`, EOF in
//! pre-copy, `ENOMSG` in stop-copy, a failed SET, cancelled migrations,
//! saves and loads, and how each device is left. The fakes follow the uAPI
//! as `Documentation/fsm.rst` describes it; what they produce is a byte
//! sequence the tests know, so what reached the target is checked byte for
//! byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::rc::Rc;

use rmdev::error::{Cause, Error, Failure, Role, EXIT_INTERRUPTED};
use rmdev::migrate::{
    self, Cancel, DataFd, MigrationDevice, NoProgress, Options, PrecopyEnd, CHUNK,
};
use rmdev::vfio::{state, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY};

const ALL: u64 = MIGRATION_STOP_COPY | MIGRATION_P2P | MIGRATION_PRE_COPY;
const KIB: usize = 1024;

/// The byte at position `i` of every fake source's stream.
fn byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// How a fake device behaves.
#[derive(Clone, Default)]
struct Behaviour {
    flags: u64,
    /// Initial bytes in pre-copy (and the whole state without it).
    initial: usize,
    /// Bytes the running device dirties after its n-th `ENOMSG` (the last
    /// value repeats).
    dirty: Vec<usize>,
    /// Bytes added to the stream in stop-copy, besides what is dirty.
    stop_extra: usize,
    /// Pre-copy reads never run dry: the device dirties as fast as it is
    /// read, and `PRECOPY_INFO` says this many dirty bytes.
    endless: Option<u64>,
    /// The data FD ends (EOF) in pre-copy once the initial bytes are read.
    eof_in_precopy: bool,
    /// The data FD answers `ENOMSG` in stop-copy.
    enomsg_in_stop_copy: bool,
    /// A SET to this state fails with `EIO` and leaves the device in ERROR.
    fail_set: Option<u32>,
    /// The target refuses the stream at RESUMING -> STOP with `EINVAL`.
    refuse_stream: bool,
    /// Cancels this token at the n-th data FD read.
    cancel_at_read: Option<(usize, Cancel)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    PreCopy,
    StopCopy,
    Resuming,
    Closed,
}

struct FdState {
    mode: Cell<Mode>,
    initial: Cell<usize>,
    dirty: Cell<usize>,
    stop_left: Cell<usize>,
    enomsgs: Cell<usize>,
    reads: Cell<usize>,
    pos: Cell<u64>,
}

struct Fake {
    b: Behaviour,
    state: Cell<u32>,
    fd: RefCell<Option<Rc<FdState>>>,
    resets: Cell<u32>,
    /// What a target was given, in order.
    received: Rc<RefCell<Vec<u8>>>,
    /// Every SET tried, in order.
    sets: RefCell<Vec<u32>>,
}

struct FakeFd {
    s: Rc<FdState>,
    b: Behaviour,
    received: Rc<RefCell<Vec<u8>>>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Fake {
    fn new(b: Behaviour) -> Self {
        Fake {
            b,
            state: Cell::new(state::RUNNING),
            fd: RefCell::new(None),
            resets: Cell::new(0),
            received: Rc::new(RefCell::new(Vec::new())),
            sets: RefCell::new(Vec::new()),
        }
    }

    fn open_fd(&self, mode: Mode, initial: usize, stop_left: usize) -> FakeFd {
        let s = Rc::new(FdState {
            mode: Cell::new(mode),
            initial: Cell::new(initial),
            dirty: Cell::new(0),
            stop_left: Cell::new(stop_left),
            enomsgs: Cell::new(0),
            reads: Cell::new(0),
            pos: Cell::new(0),
        });
        *self.fd.borrow_mut() = Some(s.clone());
        FakeFd {
            s,
            b: self.b.clone(),
            received: self.received.clone(),
        }
    }

    fn close_fd(&self) {
        if let Some(s) = self.fd.borrow_mut().take() {
            s.mode.set(Mode::Closed);
        }
    }

    fn with_fd(&self, f: impl FnOnce(&FdState)) {
        if let Some(s) = self.fd.borrow().as_ref() {
            f(s);
        }
    }
}

impl MigrationDevice for Fake {
    type DataFd = FakeFd;

    fn migration_flags(&self) -> io::Result<u64> {
        Ok(self.b.flags)
    }

    fn state(&self) -> io::Result<u32> {
        Ok(self.state.get())
    }

    fn set_state(&self, to: u32) -> io::Result<Option<FakeFd>> {
        self.sets.borrow_mut().push(to);
        let from = self.state.get();
        if self.b.fail_set == Some(to) || from == state::ERROR {
            self.state.set(state::ERROR);
            self.close_fd();
            return Err(errno(if from == state::ERROR {
                libc::EINVAL
            } else {
                libc::EIO
            }));
        }
        let fd = match (from, to) {
            (state::RUNNING, state::PRE_COPY) => {
                Some(self.open_fd(Mode::PreCopy, self.b.initial, 0))
            }
            (state::PRE_COPY, state::PRE_COPY_P2P) => None,
            (state::PRE_COPY | state::PRE_COPY_P2P, state::STOP_COPY) => {
                let extra = self.b.stop_extra;
                self.with_fd(|s| {
                    s.mode.set(Mode::StopCopy);
                    s.stop_left.set(s.initial.get() + s.dirty.get() + extra);
                });
                None
            }
            (state::RUNNING | state::STOP, state::STOP_COPY) => {
                Some(self.open_fd(Mode::StopCopy, 0, self.b.initial + self.b.stop_extra))
            }
            (state::RUNNING | state::STOP, state::RESUMING) => {
                self.received.borrow_mut().clear();
                Some(self.open_fd(Mode::Resuming, 0, 0))
            }
            (state::RESUMING, state::STOP) => {
                self.close_fd();
                if self.b.refuse_stream {
                    self.state.set(state::ERROR);
                    return Err(errno(libc::EINVAL));
                }
                None
            }
            (_, state::STOP | state::RUNNING) => {
                self.close_fd();
                None
            }
            _ => panic!("the engine asked for an arc the uAPI does not have: {from} -> {to}"),
        };
        self.state.set(to);
        Ok(fd)
    }

    fn reset(&self) -> io::Result<()> {
        self.resets.set(self.resets.get() + 1);
        self.close_fd();
        self.state.set(state::RUNNING);
        Ok(())
    }

    fn data_size(&self) -> io::Result<u64> {
        Ok((self.b.initial + self.b.stop_extra) as u64)
    }
}

impl FakeFd {
    fn produce(&self, buf: &mut [u8], n: usize) -> usize {
        let pos = self.s.pos.get();
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = byte(pos + i as u64);
        }
        self.s.pos.set(pos + n as u64);
        n
    }
}

impl DataFd for FakeFd {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &self.s;
        s.reads.set(s.reads.get() + 1);
        if let Some((at, cancel)) = &self.b.cancel_at_read {
            if s.reads.get() == *at {
                cancel.cancel("cancelled by the test");
            }
        }
        match s.mode.get() {
            Mode::PreCopy => {
                if self.b.endless.is_some() {
                    return Ok(self.produce(buf, buf.len()));
                }
                let left = s.initial.get() + s.dirty.get();
                if left == 0 {
                    if self.b.eof_in_precopy {
                        return Ok(0);
                    }
                    // Nothing for now; the running device dirties more.
                    let i = s.enomsgs.get();
                    s.enomsgs.set(i + 1);
                    let more = self
                        .b
                        .dirty
                        .get(i)
                        .or(self.b.dirty.last())
                        .copied()
                        .unwrap_or(0);
                    s.dirty.set(more);
                    return Err(errno(libc::ENOMSG));
                }
                let n = buf.len().min(left);
                let from_initial = n.min(s.initial.get());
                s.initial.set(s.initial.get() - from_initial);
                s.dirty.set(s.dirty.get() - (n - from_initial));
                Ok(self.produce(buf, n))
            }
            Mode::StopCopy => {
                if self.b.enomsg_in_stop_copy {
                    return Err(errno(libc::ENOMSG));
                }
                let n = buf.len().min(s.stop_left.get());
                s.stop_left.set(s.stop_left.get() - n);
                Ok(self.produce(buf, n))
            }
            Mode::Resuming => Err(errno(libc::EINVAL)),
            Mode::Closed => Err(errno(libc::ENODEV)),
        }
    }

    fn write(&self, data: &[u8]) -> io::Result<usize> {
        match self.s.mode.get() {
            Mode::Resuming => {
                // Short writes, as a data FD may answer.
                let n = data.len().min(300 * KIB);
                self.received.borrow_mut().extend_from_slice(&data[..n]);
                Ok(n)
            }
            Mode::Closed => Err(errno(libc::ENODEV)),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    fn precopy_info(&self) -> io::Result<(u64, u64)> {
        if self.s.mode.get() != Mode::PreCopy {
            return Err(errno(libc::EINVAL));
        }
        if let Some(dirty) = self.b.endless {
            return Ok((0, dirty));
        }
        Ok((self.s.initial.get() as u64, self.s.dirty.get() as u64))
    }
}

/// The first `n` bytes every fake source produces.
fn expected(n: usize) -> Vec<u8> {
    (0..n as u64).map(byte).collect()
}

fn opts(max_rounds: u32) -> Options {
    Options {
        max_rounds,
        ..Options::default()
    }
}

fn failure(e: Error) -> Failure {
    match e {
        Error::Migration(f) => *f,
        other => panic!("not a migration failure: {other}"),
    }
}

fn source(b: Behaviour) -> Fake {
    Fake::new(Behaviour { flags: ALL, ..b })
}

fn target() -> Fake {
    Fake::new(Behaviour {
        flags: ALL,
        ..Behaviour::default()
    })
}

#[test]
fn converges_when_nothing_is_dirty() {
    let src = source(Behaviour {
        initial: 3 * CHUNK + 5,
        dirty: vec![0],
        stop_extra: 100,
        ..Behaviour::default()
    });
    let dst = target();
    let s = migrate::migrate(&src, &dst, &opts(8), &NoProgress).unwrap();
    assert_eq!(s.precopy_rounds, 1);
    assert_eq!(s.precopy_end, Some(PrecopyEnd::Converged));
    assert_eq!(s.precopy_bytes, (3 * CHUNK + 5) as u64);
    assert_eq!(s.stop_copy_bytes, 100);
    assert_eq!(s.bytes, s.precopy_bytes + s.stop_copy_bytes);
    assert_eq!(*dst.received.borrow(), expected(3 * CHUNK + 105));
    assert_eq!(dst.state.get(), state::RUNNING);
    // The source stays stopped (its state lives in the target now).
    assert_eq!(src.state.get(), state::STOP);
    assert_eq!(
        *src.sets.borrow(),
        [
            state::PRE_COPY,
            state::PRE_COPY_P2P,
            state::STOP_COPY,
            state::STOP
        ]
    );
    assert_eq!(
        *dst.sets.borrow(),
        [state::RESUMING, state::STOP, state::RUNNING]
    );
    assert!(s.downtime_s.unwrap() >= 0.0);
}

#[test]
fn stops_when_dirty_data_stops_shrinking() {
    // 32 KiB dirtied after every round, as the sample's precopy_dirty_pages=8.
    let src = source(Behaviour {
        initial: 4 << 20,
        dirty: vec![32 * KIB],
        ..Behaviour::default()
    });
    let dst = target();
    let s = migrate::migrate(&src, &dst, &opts(8), &NoProgress).unwrap();
    assert_eq!(s.precopy_rounds, 2);
    assert_eq!(s.precopy_end, Some(PrecopyEnd::Stalled));
    assert_eq!(s.precopy_bytes, ((4 << 20) + 32 * KIB) as u64);
    // What was dirtied last goes in stop-copy.
    assert_eq!(s.stop_copy_bytes, (32 * KIB) as u64);
    assert_eq!(*dst.received.borrow(), expected((4 << 20) + 64 * KIB));
}

#[test]
fn stops_at_the_round_limit() {
    // Shrinking, but never to nothing: only the limit ends pre-copy.
    let src = source(Behaviour {
        initial: CHUNK,
        dirty: vec![500 * KIB, 400 * KIB, 300 * KIB, 200 * KIB, 100 * KIB],
        ..Behaviour::default()
    });
    let dst = target();
    let s = migrate::migrate(&src, &dst, &opts(3), &NoProgress).unwrap();
    assert_eq!(s.precopy_rounds, 3);
    assert_eq!(s.precopy_end, Some(PrecopyEnd::MaxRounds));
    assert_eq!(s.precopy_bytes, (CHUNK + 900 * KIB) as u64);
    assert_eq!(s.stop_copy_bytes, (300 * KIB) as u64);
    assert_eq!(*dst.received.borrow(), expected(CHUNK + 1200 * KIB));
    // A limit of one round.
    let src = source(Behaviour {
        initial: CHUNK,
        dirty: vec![500 * KIB],
        ..Behaviour::default()
    });
    let s = migrate::migrate(&src, &target(), &opts(1), &NoProgress).unwrap();
    assert_eq!(
        (s.precopy_rounds, s.precopy_end),
        (1, Some(PrecopyEnd::MaxRounds))
    );
}

#[test]
fn a_round_is_bounded_when_the_device_never_runs_dry() {
    // PRECOPY_INFO says 3 MiB dirty; reads never answer ENOMSG. A round
    // takes twice the announced bytes, then pre-copy stalls.
    let src = source(Behaviour {
        endless: Some(3 << 20),
        ..Behaviour::default()
    });
    let dst = target();
    let s = migrate::migrate(&src, &dst, &opts(8), &NoProgress).unwrap();
    assert_eq!(s.precopy_rounds, 2);
    assert_eq!(s.precopy_end, Some(PrecopyEnd::Stalled));
    assert_eq!(s.precopy_bytes, 2 * (6 << 20));
    assert_eq!(dst.received.borrow().len() as u64, s.bytes);
}

#[test]
fn without_pre_copy_everything_goes_in_stop_copy() {
    let src = Fake::new(Behaviour {
        flags: MIGRATION_STOP_COPY,
        initial: 2 * CHUNK + 1,
        ..Behaviour::default()
    });
    let dst = target();
    let s = migrate::migrate(&src, &dst, &opts(8), &NoProgress).unwrap();
    assert_eq!(
        (s.precopy_rounds, s.precopy_end, s.precopy_bytes),
        (0, None, 0)
    );
    assert_eq!(s.stop_copy_bytes, (2 * CHUNK + 1) as u64);
    assert_eq!(*dst.received.borrow(), expected(2 * CHUNK + 1));
    assert_eq!(*src.sets.borrow(), [state::STOP_COPY, state::STOP]);
}

#[test]
fn eof_in_pre_copy_is_a_broken_device() {
    let src = source(Behaviour {
        initial: CHUNK,
        eof_in_precopy: true,
        ..Behaviour::default()
    });
    let dst = target();
    let f = failure(migrate::migrate(&src, &dst, &opts(8), &NoProgress).unwrap_err());
    assert_eq!(
        f.cause,
        Cause::Protocol("the source's data FD ended in pre-copy".into())
    );
    assert_eq!(
        f.to_string(),
        "migration failed: the source's data FD ended in pre-copy; \
         source RUNNING, target reset, RUNNING"
    );
    assert_eq!(
        (src.state.get(), dst.state.get()),
        (state::RUNNING, state::RUNNING)
    );
    assert_eq!((src.resets.get(), dst.resets.get()), (0, 1));
}

#[test]
fn enomsg_in_stop_copy_is_a_broken_device() {
    let src = Fake::new(Behaviour {
        flags: MIGRATION_STOP_COPY,
        initial: 10,
        enomsg_in_stop_copy: true,
        ..Behaviour::default()
    });
    let f = failure(migrate::migrate(&src, &target(), &opts(8), &NoProgress).unwrap_err());
    assert_eq!(
        f.cause,
        Cause::Protocol("the source's data FD answered ENOMSG in STOP_COPY".into())
    );
}

#[test]
fn a_failed_set_names_its_step_and_errno_and_the_reset_recovers() {
    let src = source(Behaviour {
        initial: CHUNK,
        dirty: vec![0],
        fail_set: Some(state::STOP_COPY),
        ..Behaviour::default()
    });
    let dst = target();
    let f = failure(migrate::migrate(&src, &dst, &opts(8), &NoProgress).unwrap_err());
    assert_eq!(f.errno(), Some(libc::EIO));
    assert!(matches!(&f.cause, Cause::Step { step, .. } if step == "source to STOP_COPY"));
    // The SET back to RUNNING fails in ERROR: the reset brings it back.
    let left = f.source.unwrap();
    assert_eq!(
        (left.role, left.reset, left.state),
        (Role::Source, Some(true), Ok(state::RUNNING))
    );
    assert_eq!(src.resets.get(), 1);
    assert_eq!(f.target.unwrap().reset, Some(true));
    assert_eq!(Error::Migration(Box::new(f)).exit_status(), 2);
}

#[test]
fn a_refused_stream_resets_the_target() {
    let src = source(Behaviour {
        initial: CHUNK,
        dirty: vec![0],
        ..Behaviour::default()
    });
    let dst = Fake::new(Behaviour {
        flags: ALL,
        refuse_stream: true,
        ..Behaviour::default()
    });
    let f = failure(migrate::migrate(&src, &dst, &opts(8), &NoProgress).unwrap_err());
    assert_eq!(f.errno(), Some(libc::EINVAL));
    assert!(
        matches!(&f.cause, Cause::Step { step, .. } if step == "target to STOP (end of the stream)")
    );
    assert_eq!(dst.resets.get(), 1);
    assert_eq!(
        (src.state.get(), dst.state.get()),
        (state::RUNNING, state::RUNNING)
    );
}

#[test]
fn a_cancelled_migration_puts_both_devices_back() {
    let cancel = Cancel::new();
    let src = source(Behaviour {
        initial: 8 * CHUNK,
        dirty: vec![0],
        cancel_at_read: Some((3, cancel.clone())),
        ..Behaviour::default()
    });
    let dst = target();
    let o = Options {
        cancel,
        ..Options::default()
    };
    let e = migrate::migrate(&src, &dst, &o, &NoProgress).unwrap_err();
    assert_eq!(e.exit_status(), EXIT_INTERRUPTED);
    let f = failure(e);
    assert!(f.cancelled());
    assert_eq!(
        f.to_string(),
        "migration failed: cancelled by the test; source RUNNING, target reset, RUNNING"
    );
    // It stopped at its next chunk: three reads, not eight.
    assert_eq!(dst.received.borrow().len(), 3 * CHUNK);
    assert_eq!(
        (src.state.get(), dst.state.get()),
        (state::RUNNING, state::RUNNING)
    );
}

#[test]
fn a_cancelled_operation_touches_nothing_before_it_starts() {
    let cancel = Cancel::new();
    assert!(!cancel.cancel("before"));
    // A second request says so (the CLI exits at once on it).
    assert!(cancel.cancel("again"));
    let src = source(Behaviour {
        initial: CHUNK,
        ..Behaviour::default()
    });
    let dst = target();
    let o = Options {
        cancel,
        ..Options::default()
    };
    let f = failure(migrate::migrate(&src, &dst, &o, &NoProgress).unwrap_err());
    assert_eq!(f.cause, Cause::Cancelled("before"));
    assert_eq!((f.source, f.target), (None, None));
    assert!(src.sets.borrow().is_empty() && dst.sets.borrow().is_empty());
    let mut out = Vec::new();
    assert!(failure(migrate::save_to(&src, &mut out, &o, &NoProgress).unwrap_err()).cancelled());
    assert!(out.is_empty());
    let mut input: &[u8] = &[1, 2, 3];
    assert!(
        failure(migrate::load_from(&dst, &mut input, None, &o, &NoProgress).unwrap_err())
            .cancelled()
    );
    assert!(src.sets.borrow().is_empty() && dst.sets.borrow().is_empty());
}

#[test]
fn saves_into_memory_and_loads_it_back() {
    let src = source(Behaviour {
        initial: CHUNK + 7,
        dirty: vec![4 * KIB],
        ..Behaviour::default()
    });
    let mut out = Vec::new();
    let s = migrate::save_to(&src, &mut out, &opts(8), &NoProgress).unwrap();
    assert_eq!(out, expected(CHUNK + 7 + 8 * KIB));
    assert_eq!(s.bytes, out.len() as u64);
    assert_eq!(src.state.get(), state::STOP);
    let dst = target();
    let l = migrate::load_from(
        &dst,
        &mut out.as_slice(),
        Some(out.len() as u64),
        &opts(8),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(*dst.received.borrow(), out);
    assert_eq!(
        (l.bytes, l.downtime_s, l.precopy_end),
        (out.len() as u64, None, None)
    );
    assert_eq!(dst.state.get(), state::RUNNING);
}

/// A stream source that cancels the load after its first read.
struct CancellingReader {
    data: Vec<u8>,
    at: usize,
    cancel: Cancel,
}

impl Read for CancellingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.cancel.cancel("cancelled by the test");
        Ok(n)
    }
}

#[test]
fn a_cancelled_load_resets_the_target() {
    let cancel = Cancel::new();
    let mut input = CancellingReader {
        data: expected(3 * CHUNK),
        at: 0,
        cancel: cancel.clone(),
    };
    let dst = target();
    let o = Options {
        cancel,
        ..Options::default()
    };
    let f = failure(migrate::load_from(&dst, &mut input, None, &o, &NoProgress).unwrap_err());
    assert!(f.cancelled());
    assert_eq!(
        f.to_string(),
        "load failed: cancelled by the test; target reset, RUNNING"
    );
    assert_eq!(f.source, None);
    assert_eq!(dst.received.borrow().len(), CHUNK);
    assert_eq!((dst.resets.get(), dst.state.get()), (1, state::RUNNING));
}

/// A 4 MiB source whose second data read cancels the operation, and the
/// options holding that token.
fn cancelling_source() -> (Fake, Options) {
    let cancel = Cancel::new();
    let src = source(Behaviour {
        initial: 4 * CHUNK,
        dirty: vec![0],
        cancel_at_read: Some((2, cancel.clone())),
        ..Behaviour::default()
    });
    let o = Options {
        cancel,
        ..Options::default()
    };
    (src, o)
}

#[test]
fn a_cancelled_save_puts_the_source_back() {
    let (src, o) = cancelling_source();
    let mut out = Vec::new();
    let f = failure(migrate::save_to(&src, &mut out, &o, &NoProgress).unwrap_err());
    assert_eq!(
        f.to_string(),
        "save failed: cancelled by the test; source RUNNING, no file written"
    );
    assert_eq!(src.state.get(), state::RUNNING);
}

#[test]
fn a_file_save_leaves_no_file_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let (src, o) = cancelling_source();
    let e = migrate::save(&src, &path, false, &o, &NoProgress).unwrap_err();
    assert_eq!(e.exit_status(), EXIT_INTERRUPTED);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A stream that is not an rmdev envelope is never kept either.
    let src = source(Behaviour {
        initial: CHUNK,
        dirty: vec![0],
        ..Behaviour::default()
    });
    let e = migrate::save(&src, &path, false, &opts(8), &NoProgress).unwrap_err();
    assert!(matches!(e, Error::BadStream(_)), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(src.state.get(), state::RUNNING);
}
