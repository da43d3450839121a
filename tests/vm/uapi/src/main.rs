// SPDX-License-Identifier: GPL-2.0

//! In-VM tests of rmdev through the real uAPI: mdevs created through sysfs,
//! VFIO device FDs, the migration features, real data moved through real
//! data FDs. Run by `tests/vm/t-sample-*.sh` in the lab, with `rmdev_sample`
//! loaded. The expected FSM behaviour comes from the oracle file transcribed
//! from Linux 6.12 (`core/logic/tests/data/fsm-oracle.txt`), not from the
//! state machine code the kernel module runs.
//!
//! Its save, resume and load sequences are an independent uAPI client on
//! purpose: they are the conformance tests of the kernel side, checking
//! every step's errno and `PRECOPY_INFO` between steps, and writing the
//! device between pre-copy rounds; a bug shared with the tool's engine
//! (`rmdev::migrate`) must not hide here. The engine itself is tested on
//! the host against fake devices (`tools/rmdev/tests/engine.rs`) and in the
//! lab by `t-rmdev` and by `migrate-mdev` (the VF vendor's migrations).
//!
//! Usage: `rmdev-vm-test [--flags N] <test>...`; `rmdev-vm-test list`. An
//! unknown test or option exits with status 2; a test that does not apply
//! to the flag set prints `skip`.

mod campaign;
mod igbvf;

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rmdev::vfio::{self, Device};
use rmdev_logic::envelope::Encoder;
use rmdev_logic::fsm::{FlagSet, State};

/// A test failure, with what was expected.
type TestResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

/// `Err(errno)` expected from `$e`.
macro_rules! expect_errno {
    ($e:expr, $errno:expr, $what:expr) => {
        match $e {
            Ok(_) => {
                return Err(format!(
                    "{}: succeeded, expected {}",
                    $what,
                    errno_name($errno)
                ))
            }
            Err(err) if err.raw_os_error() == Some($errno) => {}
            Err(err) => {
                return Err(format!(
                    "{}: got {}, expected {}",
                    $what,
                    err,
                    errno_name($errno)
                ))
            }
        }
    };
}

mod guest_memory;
mod vf_bench;
mod vf_rx;
mod vf_traffic;

fn errno_name(e: i32) -> String {
    format!("{} (errno {e})", io::Error::from_raw_os_error(e))
}

fn ctx<T>(r: io::Result<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

const PARENT: &str = "/sys/class/mdev_bus/rmdev_sample";
const PAGE: usize = 4096;

/// The sample's types: (sysfs type name, memory size).
const TYPES: [(&str, usize); 3] = [
    ("rmdev_sample-16k", 16 << 10),
    ("rmdev_sample-4m", 4 << 20),
    ("rmdev_sample-256m", 256 << 20),
];

fn type_size(ty: &str) -> usize {
    TYPES.iter().find(|t| t.0 == ty).map_or(0, |t| t.1)
}

/// A UUID that is unique per call.
fn new_uuid() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-7e57-4000-8000-{:012x}", std::process::id(), n)
}

/// An mdev created through sysfs, removed on drop.
struct Mdev {
    uuid: String,
    ty: &'static str,
}

impl Mdev {
    fn create(ty: &'static str) -> Result<Mdev, String> {
        let uuid = new_uuid();
        ctx(
            fs::write(format!("{PARENT}/mdev_supported_types/{ty}/create"), &uuid),
            &format!("create {ty}"),
        )?;
        Ok(Mdev { uuid, ty })
    }

    fn open(&self) -> Result<Device, String> {
        ctx(Device::open(&self.uuid), &format!("open {}", self.uuid))
    }

    fn size(&self) -> usize {
        type_size(self.ty)
    }
}

impl Drop for Mdev {
    fn drop(&mut self) {
        let _ = fs::write(format!("/sys/bus/mdev/devices/{}/remove", self.uuid), "1");
    }
}

/// The flag set under test, from `--flags`.
fn flag_set(bits: u32) -> Result<FlagSet, String> {
    FlagSet::from_bits(bits).map_err(|e| format!("--flags {bits}: {e}"))
}

/// The uAPI states a SET may name: the 8 states and two out of range.
const TARGETS: [u32; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 0xffff];

/// Linux 6.12's next-step table, transcribed independently of the code
/// under test.
const ORACLE: &str = include_str!("../../../../core/logic/tests/data/fsm-oracle.txt");

/// The uAPI's state names, in `enum vfio_device_mig_state` order.
const NAMES: [&str; 8] = [
    "ERROR",
    "STOP",
    "RUNNING",
    "STOP_COPY",
    "RESUMING",
    "RUNNING_P2P",
    "PRE_COPY",
    "PRE_COPY_P2P",
];

/// The oracle's next step from `cur` towards `target` for `flags`: `None`
/// where the kernel refuses (`EINVAL`, with or without a warning).
fn oracle_next(flags: u32, cur: &str, target: &str) -> Result<Option<&'static str>, String> {
    let want = format!("{flags:#x} {cur} {target} ");
    let line = ORACLE
        .lines()
        .find(|l| l.starts_with(&want))
        .ok_or_else(|| format!("the oracle has no line '{want}'"))?;
    let result = line[want.len()..].trim();
    Ok(if result.contains("EINVAL") {
        None
    } else {
        NAMES.iter().copied().find(|n| *n == result)
    })
}

/// How many SETs `t_fsm` must check for `flags`, counted in the oracle
/// alone: every state the oracle lets the flag set be in (a current state
/// with no `WARN+EINVAL` line; ERROR is never driven to) times every target.
fn oracle_set_count(flags: u32) -> usize {
    let prefix = format!("{flags:#x} ");
    let supported = NAMES
        .iter()
        .filter(|cur| **cur != "ERROR")
        .filter(|cur| {
            let mut lines = ORACLE
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .filter(|l| l[prefix.len()..].split(' ').next() == Some(**cur))
                .peekable();
            lines.peek().is_some() && lines.all(|l| !l.contains("WARN"))
        })
        .count();
    supported * TARGETS.len()
}

/// What the kernel should do for SET `target` from `cur`, by walking the
/// oracle: the state reached and whether a data FD comes back, or `None`
/// for `-EINVAL` with no arc taken.
fn predict(flags: FlagSet, cur: State, target: u32) -> Result<Option<(u32, bool)>, String> {
    let Some(&goal) = NAMES.get(target as usize) else {
        return Ok(None);
    };
    let start = NAMES[cur.raw() as usize];
    let (mut now, mut prev, mut arcs) = (start, start, 0);
    while now != goal {
        match oracle_next(flags.bits(), now, goal)? {
            None => return Ok(None),
            Some(next) => (prev, now) = (now, next),
        }
        arcs += 1;
        if arcs > NAMES.len() {
            return Err(format!("the oracle's path {start}->{goal} does not end"));
        }
    }
    // The uAPI: a SET returns a data FD when its last arc starts a session,
    // into a saving state from outside them, or into RESUMING.
    let saving = |s: &str| matches!(s, "STOP_COPY" | "PRE_COPY" | "PRE_COPY_P2P");
    let fd = arcs > 0 && ((saving(now) && !saving(prev)) || now == "RESUMING");
    let reached = NAMES.iter().position(|n| *n == now).unwrap_or(0) as u32;
    Ok(Some((reached, fd)))
}

/// Drives `dev` from RUNNING (after a reset) to `state`: the data FD that
/// SET returned, if any. In RESUMING it writes `stream` (a valid stream for
/// the device), so that leaving RESUMING through STOP can succeed.
fn drive_to(
    dev: &Device,
    flags: FlagSet,
    state: State,
    stream: &[u8],
) -> Result<Option<OwnedFd>, String> {
    ctx(dev.reset(), "reset")?;
    ensure!(
        ctx(dev.state(), "GET")? == State::Running.raw(),
        "not RUNNING after reset"
    );
    if state == State::Running {
        return Ok(None);
    }
    let fd = ctx(
        dev.set_state(state.raw()),
        &format!("SET {state} from RUNNING ({flags})"),
    )?;
    if let (State::Resuming, Some(fd)) = (state, &fd) {
        ctx(write_all_fd(fd, stream, 65536), "write stream in RESUMING")?;
    }
    Ok(fd)
}

/// A valid stop-copy stream of `dev`, which is left in RUNNING.
fn stream_of(dev: &Device) -> Result<Vec<u8>, String> {
    ctx(dev.reset(), "reset")?;
    let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no save FD")?;
    let mut stream = Vec::new();
    read_to_eof(&fd, &mut stream)?;
    ctx(dev.reset(), "reset")?;
    Ok(stream)
}

fn fd_mode(fd: &OwnedFd) -> i32 {
    // SAFETY: F_GETFL on a valid descriptor.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) & libc::O_ACCMODE }
}

/// `VFIO_DEVICE_FEATURE_MIGRATION` and friends report the flag set.
fn t_features(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let got = ctx(dev.migration_flags(), "GET MIGRATION")?;
    ensure!(
        got == u64::from(flags.bits()),
        "MIGRATION flags {got:#x}, expected {:#x}",
        flags.bits()
    );
    ctx(
        dev.probe(vfio::FEATURE_MIGRATION, vfio::FEATURE_GET),
        "PROBE MIGRATION GET",
    )?;
    expect_errno!(
        dev.probe(vfio::FEATURE_MIGRATION, vfio::FEATURE_SET),
        libc::EINVAL,
        "PROBE MIGRATION SET"
    );
    let size = ctx(dev.data_size(), "GET MIG_DATA_SIZE")?;
    ensure!(
        size as usize >= m.size(),
        "MIG_DATA_SIZE {size} < memory {}",
        m.size()
    );
    ensure!(
        ctx(dev.state(), "GET")? == State::Running.raw(),
        "initial state not RUNNING"
    );
    Ok(())
}

/// SET from every reachable state to every state behaves as the oracle says.
fn t_fsm(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let stream = stream_of(&dev)?;
    let mut checked = 0;
    for cur in State::ALL {
        if cur == State::Error || !flags.supports(cur) {
            continue;
        }
        for target in TARGETS {
            drive_to(&dev, flags, cur, &stream)?;
            let what = format!("{flags}: SET {target} from {cur}");
            match predict(flags, cur, target)? {
                Some((reached, want_fd)) => {
                    let fd = ctx(dev.set_state(target), &what)?;
                    let now = ctx(dev.state(), "GET")?;
                    ensure!(
                        now == reached,
                        "{what}: state {now}, expected {}",
                        NAMES[reached as usize]
                    );
                    ensure!(
                        fd.is_some() == want_fd,
                        "{what}: data FD {}, expected {}",
                        fd.is_some(),
                        want_fd
                    );
                    if let Some(fd) = fd {
                        let want = if reached == State::Resuming.raw() {
                            libc::O_WRONLY
                        } else {
                            libc::O_RDONLY
                        };
                        ensure!(
                            fd_mode(&fd) == want,
                            "{what}: data FD access mode {}",
                            fd_mode(&fd)
                        );
                    }
                }
                None => {
                    expect_errno!(dev.set_state(target), libc::EINVAL, &what);
                    let now = ctx(dev.state(), "GET")?;
                    ensure!(now == cur.raw(), "{what}: refused but state moved to {now}");
                }
            }
            checked += 1;
        }
    }
    let want = oracle_set_count(flags.bits());
    ensure!(
        checked == want,
        "{flags}: {checked} SETs checked, the oracle has {want}"
    );
    println!("  {checked} SETs match the oracle");
    ctx(dev.reset(), "reset")?;
    Ok(())
}

/// Reads a save FD to its end (stop-copy) into `out`.
fn read_to_eof(fd: &OwnedFd, out: &mut Vec<u8>) -> TestResult {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = ctx(vfio::read_fd(fd, &mut buf), "read save FD")?;
        if n == 0 {
            return Ok(());
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Reads what pre-copy has now, until `ENOMSG`.
fn read_precopy(fd: &OwnedFd, out: &mut Vec<u8>) -> TestResult {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match vfio::read_fd(fd, &mut buf) {
            Ok(0) => return Err("read returned 0 (EOF) in pre-copy".into()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => return Ok(()),
            Err(e) => return Err(format!("pre-copy read: {e}")),
        }
    }
}

fn write_all_fd(fd: &OwnedFd, data: &[u8], chunk: usize) -> io::Result<()> {
    for piece in data.chunks(chunk.max(1)) {
        let mut off = 0;
        while off < piece.len() {
            off += vfio::write_fd(fd, &piece[off..])?;
        }
    }
    Ok(())
}

/// A deterministic pattern for `len` bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn read_memory(dev: &Device, size: usize) -> Result<Vec<u8>, String> {
    let mut mem = vec![0u8; size];
    ctx(dev.read_at(vfio::BAR2, 0, &mut mem), "read BAR2")?;
    Ok(mem)
}

/// Saves `src` with pre-copy (when the flag set has it) while its memory
/// keeps changing, then stop-copy. Returns the stream.
fn save(src: &Device, flags: FlagSet, size: usize) -> Result<Vec<u8>, String> {
    let mut stream = Vec::new();
    if flags.supports(State::PreCopy) {
        let fd = ctx(src.set_state(State::PreCopy.raw()), "SET PRE_COPY")?
            .ok_or("no save FD from RUNNING->PRE_COPY")?;
        let (initial, dirty) = ctx(vfio::precopy_info(&fd), "PRECOPY_INFO")?;
        ensure!(
            initial as usize >= size,
            "initial_bytes {initial} < memory {size}"
        );
        ensure!(dirty == 0, "dirty_bytes {dirty} at start of pre-copy");
        for round in 0..3u64 {
            read_precopy(&fd, &mut stream)?;
            // The guest keeps running: change a few pages.
            for page in 0..4 {
                let at = ((round as usize * 7 + page * 3) * PAGE) % size;
                ctx(
                    src.write_at(vfio::BAR2, at as u64, &pattern(100 + round, 100)),
                    "write BAR2",
                )?;
            }
            let (_, dirty) = ctx(vfio::precopy_info(&fd), "PRECOPY_INFO")?;
            ensure!(
                dirty > 0,
                "dirty_bytes 0 after writes in pre-copy round {round}"
            );
        }
        if flags.supports(State::PreCopyP2p) {
            ctx(src.set_state(State::PreCopyP2p.raw()), "SET PRE_COPY_P2P")?;
        }
        let again = ctx(src.set_state(State::StopCopy.raw()), "SET STOP_COPY")?;
        ensure!(again.is_none(), "PRE_COPY->STOP_COPY returned a second FD");
        read_to_eof(&fd, &mut stream)?;
    } else {
        let fd = ctx(src.set_state(State::StopCopy.raw()), "SET STOP_COPY")?
            .ok_or("no save FD from STOP_COPY")?;
        read_to_eof(&fd, &mut stream)?;
    }
    ctx(src.set_state(State::Stop.raw()), "SET STOP (source)")?;
    Ok(stream)
}

/// Writes `stream` into `dst` in RESUMING, then STOP and RUNNING.
fn resume(dst: &Device, stream: &[u8], chunk: usize) -> TestResult {
    let fd = ctx(dst.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no resume FD")?;
    ctx(write_all_fd(&fd, stream, chunk), "write resume FD")?;
    ctx(dst.set_state(State::Stop.raw()), "SET STOP (target)")?;
    ctx(dst.set_state(State::Running.raw()), "SET RUNNING (target)")?;
    Ok(())
}

/// A whole migration between two mdevs of type `ty`.
fn migrate(flags: FlagSet, ty: &'static str) -> TestResult {
    let size = type_size(ty);
    let (ms, mt) = (Mdev::create(ty)?, Mdev::create(ty)?);
    let (src, dst) = (ms.open()?, mt.open()?);
    ctx(
        src.write_at(vfio::BAR2, 0, &pattern(1, size)),
        "write pattern",
    )?;
    ctx(src.write_reg(0x10, 0x5eed_1234), "write SCRATCH")?;
    ctx(
        dst.write_at(vfio::BAR2, 0, &pattern(2, size)),
        "write target pattern",
    )?;
    let start = Instant::now();
    let stream = save(&src, flags, size)?;
    let saved = start.elapsed();
    let want = read_memory(&src, size)?;
    resume(&dst, &stream, 1 << 20)?;
    let got = read_memory(&dst, size)?;
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "{ty}: target memory differs from the source's from byte {at}"
        ));
    }
    ensure!(
        ctx(dst.read_reg(0x10), "read SCRATCH")? == 0x5eed_1234,
        "SCRATCH not migrated"
    );
    println!(
        "  {flags} {ty}: {} stream bytes for {size} bytes of memory, saved in {:?}, target matches",
        stream.len(),
        saved
    );
    Ok(())
}

fn t_migrate(flags: FlagSet) -> TestResult {
    migrate(flags, TYPES[0].0)?;
    migrate(flags, TYPES[1].0)
}

fn t_migrate_largest(flags: FlagSet) -> TestResult {
    migrate(flags, TYPES[2].0)
}

/// The data files' semantics, each uAPI rule in turn.
fn t_data_files(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let size = m.size();

    // Stop-copy: read-only, stream mode, EOF at the end, ENODEV after.
    let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
    expect_errno!(vfio::write_fd(&fd, b"x"), libc::EBADF, "write on save FD");
    // SAFETY: lseek/pread on a valid descriptor.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) };
    ensure!(
        r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESPIPE),
        "lseek on save FD: not ESPIPE"
    );
    let mut b = [0u8; 16];
    // SAFETY: `b` is valid for 16 bytes.
    let r = unsafe { libc::pread(fd.as_raw_fd(), b.as_mut_ptr().cast(), 16, 0) };
    ensure!(
        r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESPIPE),
        "pread on save FD: not ESPIPE"
    );
    expect_errno!(
        vfio::precopy_info(&fd),
        libc::EINVAL,
        "PRECOPY_INFO in STOP_COPY"
    );
    // SAFETY: An unknown ioctl on a valid descriptor.
    let r = unsafe { vfio::ioctl(fd.as_raw_fd(), vfio::MIG_GET_PRECOPY_INFO + 1, 0) };
    expect_errno!(r, libc::ENOTTY, "unknown ioctl on save FD");
    let revents = ctx(vfio::poll_fd(fd.as_raw_fd(), libc::POLLIN, 0), "poll")?;
    ensure!(
        revents & libc::POLLIN != 0,
        "save FD not readable in STOP_COPY"
    );
    let mut stream = Vec::new();
    read_to_eof(&fd, &mut stream)?;
    ensure!(
        stream.len() > size,
        "stop-copy stream {} bytes for {size} bytes of memory",
        stream.len()
    );
    ensure!(
        ctx(vfio::read_fd(&fd, &mut b), "read after EOF")? == 0,
        "EOF is not permanent"
    );
    ensure!(
        &stream[..8] == b"RMDEVMIG",
        "stream does not start with the envelope magic"
    );
    ctx(dev.set_state(State::Stop.raw()), "SET STOP")?;
    expect_errno!(
        vfio::read_fd(&fd, &mut b),
        libc::ENODEV,
        "read after STOP_COPY->STOP"
    );
    let revents = ctx(vfio::poll_fd(fd.as_raw_fd(), libc::POLLIN, 0), "poll")?;
    ensure!(
        revents & libc::POLLHUP != 0,
        "no POLLHUP on an ended session"
    );
    drop(fd);

    // Resume: write-only, ESPIPE for pwrite.
    let rfd = ctx(dev.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
    expect_errno!(
        vfio::read_fd(&rfd, &mut b),
        libc::EBADF,
        "read on resume FD"
    );
    // SAFETY: `b` is valid for 16 bytes.
    let r = unsafe { libc::pwrite(rfd.as_raw_fd(), b.as_ptr().cast(), 16, 0) };
    ensure!(
        r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESPIPE),
        "pwrite on resume FD: not ESPIPE"
    );
    // Byte by byte: the receiver does not depend on write boundaries.
    ctx(write_all_fd(&rfd, &stream, 1), "write stream byte by byte")?;
    ctx(
        dev.set_state(State::Stop.raw()),
        "RESUMING->STOP after a byte-wise stream",
    )?;
    expect_errno!(
        vfio::write_fd(&rfd, b"x"),
        libc::ENODEV,
        "write after RESUMING->STOP"
    );
    drop(rfd);

    // Reset ends a session.
    let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
    ctx(dev.reset(), "reset")?;
    ensure!(
        ctx(dev.state(), "GET")? == State::Running.raw(),
        "not RUNNING after reset"
    );
    expect_errno!(vfio::read_fd(&fd, &mut b), libc::ENODEV, "read after reset");

    if flags.supports(State::PreCopy) {
        let fd = ctx(dev.set_state(State::PreCopy.raw()), "SET PRE_COPY")?.ok_or("no FD")?;
        let (initial, dirty) = ctx(vfio::precopy_info(&fd), "PRECOPY_INFO")?;
        ensure!(
            initial > 0 && dirty == 0,
            "PRECOPY_INFO at start: {initial}/{dirty}"
        );
        let mut argsz_small = [8u64, 0, 0];
        // SAFETY: A 24-byte buffer whose argsz says 8.
        let r = unsafe {
            vfio::ioctl(
                fd.as_raw_fd(),
                vfio::MIG_GET_PRECOPY_INFO,
                argsz_small.as_mut_ptr() as _,
            )
        };
        expect_errno!(r, libc::EINVAL, "PRECOPY_INFO with argsz 8");
        let mut data = Vec::new();
        read_precopy(&fd, &mut data)?;
        let (initial, dirty) = ctx(vfio::precopy_info(&fd), "PRECOPY_INFO")?;
        ensure!(
            initial == 0 && dirty == 0,
            "after reading everything: {initial}/{dirty}"
        );
        expect_errno!(
            vfio::read_fd(&fd, &mut b),
            libc::ENOMSG,
            "read with nothing ready"
        );
        let revents = ctx(vfio::poll_fd(fd.as_raw_fd(), libc::POLLIN, 0), "poll")?;
        ensure!(
            revents & libc::POLLIN == 0,
            "save FD readable with nothing ready"
        );
        // Another thread dirties a page while we wait in poll.
        let waiter = std::thread::spawn({
            let raw = fd.as_raw_fd();
            move || vfio::poll_fd(raw, libc::POLLIN, 20_000)
        });
        std::thread::sleep(Duration::from_millis(300));
        ctx(
            dev.write_at(vfio::BAR2, PAGE as u64, b"dirty"),
            "write BAR2",
        )?;
        let revents = waiter.join().map_err(|_| "poll thread died")?;
        let revents = ctx(revents, "poll")?;
        ensure!(
            revents & libc::POLLIN != 0,
            "poll did not wake when the device changed"
        );
        let (initial, dirty) = ctx(vfio::precopy_info(&fd), "PRECOPY_INFO")?;
        ensure!(
            initial == 0 && dirty == PAGE as u64,
            "after dirtying a page: {initial}/{dirty}"
        );
        read_precopy(&fd, &mut data)?;
        ctx(dev.set_state(State::Running.raw()), "SET RUNNING")?;
        expect_errno!(
            vfio::read_fd(&fd, &mut b),
            libc::ENODEV,
            "read after PRE_COPY->RUNNING"
        );
        // As upstream drivers answer: the state is checked first.
        expect_errno!(
            vfio::precopy_info(&fd),
            libc::EINVAL,
            "PRECOPY_INFO after the session (device in RUNNING)"
        );
    }
    Ok(())
}

/// Broken streams are refused with a clear errno; the target then resets
/// to a usable device.
fn t_bad_streams(flags: FlagSet) -> TestResult {
    let (ms, mt, mo) = (
        Mdev::create(TYPES[0].0)?,
        Mdev::create(TYPES[0].0)?,
        Mdev::create(TYPES[1].0)?,
    );
    let (src, dst, other) = (ms.open()?, mt.open()?, mo.open()?);
    ctx(
        src.write_at(vfio::BAR2, 0, &pattern(3, ms.size())),
        "write pattern",
    )?;
    let good = save(&src, flags, ms.size())?;
    ctx(src.set_state(State::Running.raw()), "SET RUNNING")?;
    let foreign = save(&other, flags, mo.size())?;

    let mut cases: Vec<(String, Vec<u8>, i32)> = Vec::new();
    for cut in [0, 7, 30, good.len() / 2, good.len() - 1] {
        cases.push((
            format!("truncated at {cut}"),
            good[..cut].to_vec(),
            libc::EINVAL,
        ));
    }
    // A flipped bit in the header's version string, and in the first
    // record's payload (the header is under 300 bytes, the first record
    // holds 64 KiB): both fail their checksum.
    for at in [25, 300, good.len() - 30] {
        let mut flipped = good.clone();
        flipped[at] ^= 0x40;
        cases.push((format!("bit flipped at {at}"), flipped, libc::EBADMSG));
    }
    cases.push(("another type's stream".into(), foreign, libc::EINVAL));
    cases.push(("not an rmdev stream".into(), pattern(9, 4096), libc::EINVAL));
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    cases.push(("trailing bytes".into(), trailing, libc::EINVAL));

    for (what, data, errno) in cases {
        let fd = ctx(dst.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
        let wrote = write_all_fd(&fd, &data, 4096);
        let finished = match wrote {
            Err(e) => {
                ensure!(
                    e.raw_os_error() == Some(errno),
                    "{what}: write failed with {e}, expected {}",
                    errno_name(errno)
                );
                // The stream stays refused.
                expect_errno!(
                    vfio::write_fd(&fd, b"x"),
                    errno,
                    &format!("{what}: next write")
                );
                dst.set_state(State::Stop.raw())
            }
            Ok(()) => dst.set_state(State::Stop.raw()),
        };
        expect_errno!(finished, errno, &format!("{what}: RESUMING->STOP"));
        ensure!(
            ctx(dst.state(), "GET")? == State::Resuming.raw(),
            "{what}: not in RESUMING after refusal"
        );
        ctx(dst.reset(), "reset")?;
        ensure!(
            ctx(dst.state(), "GET")? == State::Running.raw(),
            "{what}: not RUNNING after reset"
        );
        expect_errno!(
            vfio::write_fd(&fd, b"x"),
            libc::ENODEV,
            &format!("{what}: write after reset")
        );
    }
    // Usable afterwards: the good stream loads.
    resume(&dst, &good, 65536)?;
    let want = read_memory(&src, ms.size())?;
    ensure!(
        read_memory(&dst, ms.size())? == want,
        "target memory wrong after the good stream"
    );
    Ok(())
}

/// `VFIO_DEVICE_RESET` from every state returns to RUNNING.
fn t_reset(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let stream = stream_of(&dev)?;
    for s in State::ALL {
        if s == State::Error || !flags.supports(s) {
            continue;
        }
        let fd = drive_to(&dev, flags, s, &stream)?;
        ctx(dev.write_reg(0x10, 7), "write SCRATCH")?;
        ctx(dev.reset(), &format!("reset in {s}"))?;
        ensure!(
            ctx(dev.state(), "GET")? == State::Running.raw(),
            "not RUNNING after reset in {s}"
        );
        ensure!(
            ctx(dev.read_reg(0x10), "read SCRATCH")? == 0,
            "reset in {s} did not clear SCRATCH"
        );
        if let Some(fd) = &fd {
            ensure!(!session_live(fd)?, "data FD live after reset in {s}");
        }
    }
    // ERROR: a lost arc (the sample's fault injection register) puts the
    // device there; every SET then fails with EIO; only a reset leaves it.
    ctx(dev.write_reg(0x14, 2), "arm a lost arc")?;
    expect_errno!(
        dev.set_state(State::Stop.raw()),
        libc::EIO,
        "SET STOP with a lost arc"
    );
    ensure!(
        ctx(dev.state(), "GET")? == State::Error.raw(),
        "not in ERROR after a lost arc"
    );
    for target in [
        State::Running,
        State::Stop,
        State::StopCopy,
        State::Resuming,
    ] {
        expect_errno!(
            dev.set_state(target.raw()),
            libc::EIO,
            &format!("SET {target} in ERROR")
        );
    }
    ctx(dev.reset(), "reset in ERROR")?;
    ensure!(
        ctx(dev.state(), "GET")? == State::Running.raw(),
        "not RUNNING after reset in ERROR"
    );
    ctx(
        dev.set_state(State::Stop.raw()),
        "SET STOP after leaving ERROR",
    )?;
    Ok(())
}

/// Closing the device FD mid-session ends the session; reopening starts in
/// RUNNING.
fn t_close_mid_session(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let save_fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
    drop(dev);
    let mut b = [0u8; 64];
    expect_errno!(
        vfio::read_fd(&save_fd, &mut b),
        libc::ENODEV,
        "read after device close"
    );
    let dev = m.open()?;
    ensure!(
        ctx(dev.state(), "GET")? == State::Running.raw(),
        "reopened device not RUNNING"
    );
    let resume_fd = ctx(dev.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
    drop(dev);
    expect_errno!(
        vfio::write_fd(&resume_fd, b"x"),
        libc::ENODEV,
        "write after device close"
    );
    if flags.supports(State::PreCopy) {
        let dev = m.open()?;
        let fd = ctx(dev.set_state(State::PreCopy.raw()), "SET PRE_COPY")?.ok_or("no FD")?;
        ensure!(session_live(&fd)?, "pre-copy FD not live");
        drop(dev);
        ensure!(!session_live(&fd)?, "pre-copy FD live after device close");
    }
    Ok(())
}

/// Ending a save session wakes an epoll waiter that asked for no event at
/// all: EPOLLHUP is always reported, so the wake-up must carry it (one that
/// carries only EPOLLIN is filtered out by epoll and the waiter sleeps on).
fn t_hup_wakeup(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    ctx(dev.set_state(State::Stop.raw()), "SET STOP")?;
    let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
    // SAFETY: epoll_create1 with valid flags; the result is checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    ensure!(ep >= 0, "epoll_create1: {}", io::Error::last_os_error());
    // SAFETY: `ep` was just created and is owned from here on.
    let ep = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ep) };
    let mut ev = libc::epoll_event { events: 0, u64: 7 };
    // SAFETY: both descriptors are valid; `ev` is a valid epoll_event.
    let r =
        unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) };
    ensure!(r == 0, "EPOLL_CTL_ADD: {}", io::Error::last_os_error());
    let wait = |what: &str| -> Result<Option<u32>, String> {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: `out` has room for the one event asked for.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 1, 0) };
        ensure!(n >= 0, "epoll_wait {what}: {}", io::Error::last_os_error());
        Ok((n == 1).then_some(out[0].events))
    };
    ensure!(
        wait("in STOP_COPY")?.is_none(),
        "an event before the session ended"
    );
    ctx(dev.set_state(State::Stop.raw()), "SET STOP")?;
    let got = wait("after SET STOP")?;
    ensure!(
        got.is_some_and(|e| e & libc::EPOLLHUP as u32 != 0),
        "{flags}: ending the session reported {got:?} to an epoll waiter, expected EPOLLHUP"
    );
    Ok(())
}

/// `memory.current` of the cgroup directory `cg`.
fn memcg_current(cg: &str) -> Result<u64, String> {
    let path = format!("{cg}/memory.current");
    let text = ctx(fs::read_to_string(&path), &path)?;
    text.trim()
        .parse()
        .map_err(|e| format!("{path}: '{}': {e}", text.trim()))
}

/// `contend UUID ROUNDS`: one of several processes contending for an mdev.
/// ROUNDS times this process opens it, through its group and through its
/// cdev in turn; an open that succeeds writes this process's own pattern
/// over the first page of BAR2, pauses, reads it back and closes. A failed
/// open must answer as vfio does for a device another process holds
/// (`EBUSY` for the group, or a cdev bind while a group holds it; `EINVAL`
/// for a cdev bind while another cdev holds it); every read-back must be
/// the pattern (no other process had the device meanwhile). Prints
/// `contend: opened N busy M`.
fn contend(uuid: &str, rounds: &str) -> TestResult {
    let rounds: usize = rounds.parse().map_err(|e| format!("rounds: {e}"))?;
    let pid = std::process::id();
    let (mut opened, mut busy) = (0, 0);
    for round in 0..rounds {
        let cdev = round % 2 == 1;
        let dev = if cdev {
            Device::open_cdev(uuid)
        } else {
            Device::open(uuid)
        };
        let dev = match dev {
            Ok(dev) => dev,
            Err(e) => {
                let errno = e.raw_os_error();
                let vfio_answer =
                    errno == Some(libc::EBUSY) || (cdev && errno == Some(libc::EINVAL));
                ensure!(
                    vfio_answer,
                    "round {round}: opening {uuid} through its {}: {e}",
                    if cdev { "cdev" } else { "group" }
                );
                busy += 1;
                std::thread::sleep(Duration::from_millis(u64::from(pid % 7)));
                continue;
            }
        };
        let mine = pattern(u64::from(pid) + round as u64, PAGE);
        ctx(dev.write_at(vfio::BAR2, 0, &mine), "write the pattern")?;
        std::thread::sleep(Duration::from_millis(5));
        let mut back = vec![0u8; PAGE];
        ctx(
            dev.read_at(vfio::BAR2, 0, &mut back),
            "read the pattern back",
        )?;
        ensure!(
            back == mine,
            "round {round}: another process wrote the device while this one held it"
        );
        opened += 1;
    }
    println!("contend: opened {opened} busy {busy}");
    Ok(())
}

/// Processes contending for one mdev: 3 children of this program run
/// `contend` at once, 20 rounds each. Each open is exclusive (checked by
/// each child's pattern), the others are refused as vfio refuses them, at
/// least one child got the device, and afterwards it opens in RUNNING.
fn t_contend(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let exe = ctx(std::env::current_exe(), "this program")?;
    let children = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["contend", &m.uuid, "20"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Vec<_>>();
    let mut opened = 0;
    for c in children {
        let c = ctx(c, "start a contending process")?;
        let out = ctx(c.wait_with_output(), "run a contending process")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "{flags}: a contending process: {text}"
        );
        let n: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("contend: opened "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no count from a contending process: {text}"))?;
        opened += n;
        println!("  {}", text.lines().last().unwrap_or(""));
    }
    ensure!(
        opened > 0,
        "{flags}: no contending process ever opened the device"
    );
    let dev = m.open()?;
    let state = ctx(dev.state(), "GET")?;
    ensure!(
        state == State::Running.raw(),
        "{flags}: the device opened in state {state} after the contention"
    );
    Ok(())
}

/// The data sessions' buffers are charged to the memory cgroup of the user
/// who opens them. Run inside the cgroup `cg` (the caller moved this
/// process there) with the sample's `max_record` raised, so that each
/// session's buffer (at least `max_record` bytes: a save session buffers
/// one whole record, a resume session receives one) dwarfs the rest.
fn session_memcg(cg: &str) -> TestResult {
    const DEVICES: usize = 4;
    let param = "/sys/module/rmdev_sample/parameters/max_record";
    let max_record: u64 = ctx(fs::read_to_string(param), param)?
        .trim()
        .parse()
        .map_err(|e| format!("{param}: {e}"))?;
    ensure!(
        max_record >= 1 << 20,
        "max_record is {max_record}: raise it first"
    );
    let mdevs = (0..DEVICES)
        .map(|_| Mdev::create(TYPES[0].0))
        .collect::<Result<Vec<_>, _>>()?;
    let devs = mdevs
        .iter()
        .map(Mdev::open)
        .collect::<Result<Vec<_>, _>>()?;
    let want = DEVICES as u64 * max_record;
    for (state, what) in [(State::StopCopy, "save"), (State::Resuming, "resume")] {
        let before = memcg_current(cg)?;
        let mut fds = Vec::new();
        for dev in &devs {
            fds.push(ctx(dev.set_state(state.raw()), &format!("SET {state}"))?.ok_or("no FD")?);
        }
        let open = memcg_current(cg)?;
        drop(fds);
        for dev in &devs {
            ctx(dev.reset(), "reset")?;
        }
        let after = memcg_current(cg)?;
        println!(
            "  {DEVICES} {what} sessions: memory.current {before} -> {open} -> {after} \
             (at least {want} expected while open)"
        );
        ensure!(
            open >= before + want,
            "{DEVICES} open {what} sessions charged {} bytes to the user's cgroup, expected at least {want}",
            open.saturating_sub(before)
        );
        ensure!(
            open - after >= want,
            "closing {DEVICES} {what} sessions gave back {} bytes, expected at least {want}",
            open.saturating_sub(after)
        );
    }
    Ok(())
}

/// userfaultfd(2)'s ABI, what `FaultPage` needs of it (the libc crate does
/// not have it): `<linux/userfaultfd.h>`.
mod uffd {
    pub(crate) const API: u64 = 0xaa;
    /// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
    pub(crate) const IOC_API: u64 = 0xc018_aa3f;
    /// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
    pub(crate) const IOC_REGISTER: u64 = 0xc020_aa00;
    /// `_IOWR(0xaa, 0x04, struct uffdio_zeropage)`.
    pub(crate) const IOC_ZEROPAGE: u64 = 0xc020_aa04;
    pub(crate) const REGISTER_MODE_MISSING: u64 = 1;
    pub(crate) const EVENT_PAGEFAULT: u8 = 0x12;
    /// `struct uffd_msg`.
    pub(crate) const MSG_SIZE: usize = 32;

    #[repr(C)]
    pub(crate) struct Api {
        pub(crate) api: u64,
        pub(crate) features: u64,
        pub(crate) ioctls: u64,
    }
    #[repr(C)]
    pub(crate) struct Range {
        pub(crate) start: u64,
        pub(crate) len: u64,
    }
    #[repr(C)]
    pub(crate) struct Register {
        pub(crate) range: Range,
        pub(crate) mode: u64,
        pub(crate) ioctls: u64,
    }
    #[repr(C)]
    pub(crate) struct Zeropage {
        pub(crate) range: Range,
        pub(crate) mode: u64,
        pub(crate) zeropage: i64,
    }
}

/// A page of this process whose first touch, by this process or by the
/// kernel copying to or from it, waits until `resolve` (userfaultfd in
/// missing mode): a user copy the user holds up for as long as it likes.
struct FaultPage {
    uffd: OwnedFd,
    addr: usize,
}

impl FaultPage {
    fn new() -> Result<FaultPage, String> {
        use std::os::fd::FromRawFd;
        // SAFETY: userfaultfd(2) with valid flags; the result is checked.
        // Non-blocking: poll(2) on a blocking one answers only POLLERR.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        ensure!(fd >= 0, "userfaultfd: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just created and is owned from here on.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = uffd::Api {
            api: uffd::API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API with a valid `struct uffdio_api`.
        let r = unsafe { libc::ioctl(uffd.as_raw_fd(), uffd::IOC_API, &mut api) };
        ensure!(r == 0, "UFFDIO_API: {}", io::Error::last_os_error());
        // SAFETY: An anonymous private mapping of one page; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        ensure!(
            addr != libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        let page = FaultPage {
            uffd,
            addr: addr as usize,
        };
        let mut reg = uffd::Register {
            range: uffd::Range {
                start: page.addr as u64,
                len: PAGE as u64,
            },
            mode: uffd::REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER of our own mapping.
        let r = unsafe { libc::ioctl(page.uffd.as_raw_fd(), uffd::IOC_REGISTER, &mut reg) };
        ensure!(r == 0, "UFFDIO_REGISTER: {}", io::Error::last_os_error());
        Ok(page)
    }

    /// Waits (up to 30 s) until something faults on the page.
    fn wait_fault(&self) -> TestResult {
        let ready = ctx(
            vfio::poll_fd(self.uffd.as_raw_fd(), libc::POLLIN, 30_000),
            "poll userfaultfd",
        )?;
        ensure!(
            ready & libc::POLLIN != 0,
            "no fault on the page within 30 s"
        );
        let mut msg = [0u8; uffd::MSG_SIZE];
        // SAFETY: `msg` has room for one `struct uffd_msg`.
        let n = unsafe { libc::read(self.uffd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
        ensure!(
            n == msg.len() as isize && msg[0] == uffd::EVENT_PAGEFAULT,
            "userfaultfd read {n}, event {:#x}",
            msg[0]
        );
        Ok(())
    }

    /// Maps the zero page there: whoever waits on the fault goes on.
    fn resolve(&self) -> TestResult {
        let mut z = uffd::Zeropage {
            range: uffd::Range {
                start: self.addr as u64,
                len: PAGE as u64,
            },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE on our own registered range.
        let r = unsafe { libc::ioctl(self.uffd.as_raw_fd(), uffd::IOC_ZEROPAGE, &mut z) };
        ensure!(r == 0, "UFFDIO_ZEROPAGE: {}", io::Error::last_os_error());
        Ok(())
    }
}

impl Drop for FaultPage {
    fn drop(&mut self) {
        // SAFETY: The mapping `new` made, no longer used.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, PAGE) };
    }
}

/// A write to (and a read of) the emulated configuration space whose user
/// buffer waits on a page fault does not hold up VFIO_DEVICE_RESET, which
/// takes the configuration space's lock: the kernel copies the user's
/// bytes outside it.
fn t_config_fault(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    // The interrupt line: a writable byte.
    let at = ctx(dev.region_offset(vfio::CONFIG, 0x3c), "config offset")?;
    for write in [true, false] {
        let what = if write { "write from" } else { "read into" };
        let page = FaultPage::new()?;
        let (dev, addr) = (&dev, page.addr);
        std::thread::scope(|s| -> TestResult {
            let copier = s.spawn(move || {
                let off = at as libc::off_t;
                // SAFETY: `addr` is a page of this process, alive until the
                // scope ends; one byte is read or written there.
                unsafe {
                    if write {
                        libc::pwrite(dev.raw(), addr as *const libc::c_void, 1, off)
                    } else {
                        libc::pread(dev.raw(), addr as *mut libc::c_void, 1, off)
                    }
                }
            });
            let faulted = page.wait_fault();
            let (tx, rx) = std::sync::mpsc::channel();
            let resetter = s.spawn(move || {
                let r = dev.reset();
                let _ = tx.send(());
                r
            });
            let waited = rx.recv_timeout(Duration::from_secs(30));
            // Always, so that no thread stays blocked whatever failed.
            let resolved = page.resolve();
            let reset = resetter.join().map_err(|_| "reset thread panicked")?;
            let n = copier.join().map_err(|_| "copy thread panicked")?;
            faulted?;
            resolved?;
            ensure!(
                waited.is_ok(),
                "{flags}: a config space {what} a faulting user page held up \
                 VFIO_DEVICE_RESET for 30 s"
            );
            ctx(reset, "reset")?;
            ensure!(
                n == 1,
                "config space {what} the page: {n} ({})",
                io::Error::last_os_error()
            );
            Ok(())
        })?;
    }
    Ok(())
}

/// A read of a save file into, and a write to a resume file from, a user
/// page that waits on a fault hold up neither
/// VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, a SET to STOP nor VFIO_DEVICE_RESET,
/// which take the stream's lock (the SET and RESET end the session under
/// it): the kernel copies with page faults disabled under the lock and
/// faults the page in outside it. The session ended while the copy
/// waited: the copy answers ENODEV.
fn t_stream_fault(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    for save in [true, false] {
        let (what, to) = if save {
            ("read of the save file into", State::StopCopy)
        } else {
            ("write to the resume file from", State::Resuming)
        };
        let page = FaultPage::new()?;
        let fd = ctx(dev.set_state(to.raw()), "SET")?.ok_or("no data FD")?;
        let (dev, addr, raw) = (&dev, page.addr, fd.as_raw_fd());
        std::thread::scope(|s| -> TestResult {
            let copier = s.spawn(move || {
                // SAFETY: `addr` is a page of this process, alive until the
                // scope ends; at most a page is read or written there.
                let n = unsafe {
                    if save {
                        libc::read(raw, addr as *mut libc::c_void, PAGE)
                    } else {
                        libc::write(raw, addr as *const libc::c_void, PAGE)
                    }
                };
                (n, io::Error::last_os_error().raw_os_error())
            });
            let faulted = page.wait_fault();
            let (tx, rx) = std::sync::mpsc::channel();
            let blocker = s.spawn(move || {
                let size = save.then(|| dev.data_size());
                // To STOP: the save session ends; the resume session's
                // stream is checked (and found incomplete). Both take the
                // stream's lock, as the reset does.
                let set = dev.set_state(State::Stop.raw()).map(|_| ());
                let reset = dev.reset();
                let _ = tx.send(());
                (size, set, reset)
            });
            let waited = rx.recv_timeout(Duration::from_secs(30));
            // Always, so that no thread stays blocked whatever failed.
            let resolved = page.resolve();
            let (size, set, reset) = blocker.join().map_err(|_| "ioctl thread panicked")?;
            let (n, errno) = copier.join().map_err(|_| "copy thread panicked")?;
            faulted?;
            resolved?;
            ensure!(
                waited.is_ok(),
                "{flags}: a {what} a faulting user page held up \
                 MIG_DATA_SIZE, SET STOP and VFIO_DEVICE_RESET for 30 s"
            );
            if let Some(size) = size {
                ctx(size, "MIG_DATA_SIZE")?;
            }
            if save {
                ctx(set, "SET STOP")?;
            } else {
                ensure!(
                    set.is_err(),
                    "{flags}: RESUMING to STOP with no stream written succeeded"
                );
            }
            ctx(reset, "reset")?;
            ensure!(
                n == -1 && errno == Some(libc::ENODEV),
                "{flags}: the {what} the page after the reset: {n} (errno {errno:?}), \
                 expected ENODEV"
            );
            Ok(())
        })?;
        let state = ctx(dev.state(), "GET")?;
        ensure!(
            state == State::Running.raw(),
            "{flags}: after the reset the device is in state {state}"
        );
    }
    Ok(())
}

/// Removing an mdev a user holds: the user is asked (request eventfd) and
/// the removal completes when it closes. Data files stay safe.
fn t_remove_in_use(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let efd = new_eventfd()?;
    ctx(
        dev.set_req_eventfd(efd.as_raw_fd()),
        "SET_IRQS request eventfd",
    )?;
    let save_fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
    let path = format!("/sys/bus/mdev/devices/{}/remove", m.uuid);
    let remover = std::thread::spawn(move || fs::write(path, "1"));
    let revents = ctx(
        vfio::poll_fd(efd.as_raw_fd(), libc::POLLIN, 30_000),
        "poll eventfd",
    )?;
    ensure!(
        revents & libc::POLLIN != 0,
        "no release request within 30 s"
    );
    ensure!(
        !remover.is_finished(),
        "removal completed while the device was open"
    );
    drop(dev);
    let res = remover.join().map_err(|_| "remove thread died")?;
    ctx(res, "remove")?;
    ensure!(
        !std::path::Path::new(&format!("/sys/bus/mdev/devices/{}", m.uuid)).exists(),
        "mdev still present after removal"
    );
    let mut b = [0u8; 8];
    expect_errno!(
        vfio::read_fd(&save_fd, &mut b),
        libc::ENODEV,
        "read after the mdev was removed"
    );
    drop(save_fd);
    let _ = flags;
    Ok(())
}

/// Wrong ioctl arguments get `EINVAL`/`ENOTTY` and change nothing.
fn t_bad_ioctls(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let fd = dev.raw();
    let mut info = [0u32; 8];
    info[0] = 32;
    info[2] = 9;
    // SAFETY: A 32-byte buffer for GET_REGION_INFO.
    let r = unsafe { vfio::ioctl(fd, vfio::DEVICE_GET_REGION_INFO, info.as_mut_ptr() as _) };
    expect_errno!(r, libc::EINVAL, "region 9");
    info[0] = 8;
    info[2] = 0;
    // SAFETY: As above.
    let r = unsafe { vfio::ioctl(fd, vfio::DEVICE_GET_REGION_INFO, info.as_mut_ptr() as _) };
    expect_errno!(r, libc::EINVAL, "argsz 8");
    let mut dinfo = [0u32; 6];
    dinfo[0] = 24;
    // SAFETY: A 24-byte buffer for GET_INFO.
    let r = unsafe { vfio::ioctl(fd, vfio::DEVICE_GET_INFO, dinfo.as_mut_ptr() as _) };
    ctx(r, "GET_INFO")?;
    ensure!(
        dinfo[2] == 9 && dinfo[3] == 5,
        "GET_INFO: {} regions, {} irqs",
        dinfo[2],
        dinfo[3]
    );
    // GET_IRQ_INFO as vfio-pci answers for a conventional PCI function with
    // INTA# and one MSI vector: (index, flags EVENTFD|MASKABLE|AUTOMASKED
    // or EVENTFD|NORESIZE, count).
    for (index, want_flags, want_count) in
        [(0u32, 0x7u32, 1u32), (1, 0x9, 1), (2, 0x9, 0), (4, 0x9, 1)]
    {
        let mut irq = [16u32, 0, index, 0];
        // SAFETY: A 16-byte buffer for GET_IRQ_INFO.
        let r = unsafe { vfio::ioctl(fd, vfio::DEVICE_GET_IRQ_INFO, irq.as_mut_ptr() as _) };
        ctx(r, &format!("GET_IRQ_INFO {index}"))?;
        ensure!(
            irq[1] == want_flags && irq[3] == want_count,
            "IRQ index {index}: flags {:#x} count {}, expected {want_flags:#x} {want_count}",
            irq[1],
            irq[3]
        );
    }
    for index in [3u32, 5] {
        let mut irq = [16u32, 0, index, 0];
        // SAFETY: As above.
        let r = unsafe { vfio::ioctl(fd, vfio::DEVICE_GET_IRQ_INFO, irq.as_mut_ptr() as _) };
        expect_errno!(r, libc::EINVAL, &format!("IRQ index {index}"));
    }
    let mut set = [
        20u32,
        vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER,
        4,
        0,
        0,
    ];
    // SAFETY: A 20-byte SET_IRQS header.
    let r = unsafe { vfio::ioctl(fd, vfio::DEVICE_SET_IRQS, set.as_mut_ptr() as _) };
    expect_errno!(r, libc::EINVAL, "two data types");
    set = [
        20,
        vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER,
        4,
        0,
        1,
    ];
    // SAFETY: As above; argsz too small for the eventfd.
    let r = unsafe { vfio::ioctl(fd, vfio::DEVICE_SET_IRQS, set.as_mut_ptr() as _) };
    expect_errno!(r, libc::EINVAL, "eventfd without data");
    expect_errno!(dev.set_req_eventfd(0), libc::EINVAL, "stdin as eventfd");
    set_irqs_like_vfio_pci(&dev)?;
    // SAFETY: An unknown ioctl.
    let r = unsafe { vfio::ioctl(fd, vfio::DEVICE_FEATURE + 40, 0) };
    expect_errno!(r, libc::ENOTTY, "unknown ioctl");
    let mut big = vec![0u8; 64];
    expect_errno!(
        dev.read_at(vfio::BAR0, 0x1c, &mut big),
        libc::EINVAL,
        "read past BAR0"
    );
    expect_errno!(
        dev.read_at(vfio::BAR0, 2, &mut big[..4]),
        libc::EINVAL,
        "unaligned register"
    );
    expect_errno!(
        dev.read_at(1, 0, &mut big[..4]),
        libc::EINVAL,
        "absent region 1"
    );
    expect_errno!(
        dev.write_at(7, 253, &big[..4]),
        libc::EINVAL,
        "write past the config space"
    );
    expect_errno!(
        dev.read_at(7, 256, &mut big[..1]),
        libc::EINVAL,
        "read past the config space"
    );
    let (flags_r, size, off) = ctx(dev.region(vfio::BAR2), "region 2")?;
    ensure!(
        flags_r & 3 == 3 && size as usize == m.size() && off == 2 << 40,
        "region 2: {flags_r:#x} {size} {off:#x}"
    );
    ensure!(
        ctx(dev.read_reg(0), "ID")? == u32::from_le_bytes(*b"RMDV"),
        "ID register"
    );
    ensure!(
        ctx(dev.state(), "GET")? == State::Running.raw(),
        "state moved"
    );
    let _ = flags;
    Ok(())
}

/// A new non-blocking eventfd.
fn new_eventfd() -> Result<OwnedFd, String> {
    // SAFETY: eventfd(2) with valid flags.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    ensure!(efd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `efd` is a new descriptor we own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) })
}

/// The eventfd's counter, reset to 0 (0 if it was not signalled).
fn eventfd_take(efd: &OwnedFd) -> Result<u64, String> {
    let mut b = [0u8; 8];
    match vfio::read_fd(efd, &mut b) {
        Ok(_) => Ok(u64::from_ne_bytes(b)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(0),
        Err(e) => Err(format!("read eventfd: {e}")),
    }
}

/// `VFIO_DEVICE_SET_IRQS` answers as vfio-pci's does (Linux 6.12
/// `vfio_set_irqs_validate_and_prepare()` and `vfio_pci_set_ctx_trigger_single()`).
fn set_irqs_like_vfio_pci(dev: &Device) -> TestResult {
    use vfio::{
        IRQ_SET_ACTION_MASK as MASK, IRQ_SET_ACTION_TRIGGER as TRIG, IRQ_SET_DATA_BOOL as BOOL,
        IRQ_SET_DATA_EVENTFD as EFD, IRQ_SET_DATA_NONE as NONE,
    };
    let req = vfio::REQ_IRQ_INDEX;
    expect_errno!(
        dev.set_irqs(req, NONE | TRIG, 0, 0, &[]),
        libc::EINVAL,
        "disable the request index with nothing registered"
    );
    expect_errno!(
        dev.set_irqs(req, NONE | TRIG, 0, 1, &[]),
        libc::EINVAL,
        "loopback with nothing registered"
    );
    expect_errno!(
        dev.set_irqs(0, NONE | TRIG, 0, 0, &[]),
        libc::EINVAL,
        "disable INTx while it is off"
    );
    expect_errno!(
        dev.set_irqs(2, EFD | TRIG, 0, 1, &(-1i32).to_ne_bytes()),
        libc::EINVAL,
        "MSI-X (count 0)"
    );
    expect_errno!(
        dev.set_irqs(1, NONE | MASK, 0, 1, &[]),
        libc::ENOTTY,
        "mask MSI"
    );
    expect_errno!(
        dev.set_irqs(req, NONE | MASK, 0, 1, &[]),
        libc::ENOTTY,
        "mask the request index"
    );
    expect_errno!(
        dev.set_irqs(req, EFD | TRIG, 0, 2, &[0; 8]),
        libc::EINVAL,
        "two request interrupts"
    );
    expect_errno!(
        dev.set_irqs(req, EFD | TRIG, 1, 1, &[0; 4]),
        libc::EINVAL,
        "request interrupt 1"
    );
    expect_errno!(
        dev.set_irqs(req, BOOL | TRIG, 0, 0, &[]),
        libc::EINVAL,
        "BOOL with count 0"
    );
    let efd = new_eventfd()?;
    ctx(
        dev.set_req_eventfd(efd.as_raw_fd()),
        "register the request eventfd",
    )?;
    ctx(dev.set_irqs(req, NONE | TRIG, 0, 1, &[]), "loopback")?;
    ensure!(eventfd_take(&efd)? == 1, "loopback did not signal");
    ctx(dev.set_irqs(req, BOOL | TRIG, 0, 1, &[1]), "BOOL 1")?;
    ensure!(eventfd_take(&efd)? == 1, "BOOL 1 did not signal");
    ctx(dev.set_irqs(req, BOOL | TRIG, 0, 1, &[0]), "BOOL 0")?;
    ensure!(eventfd_take(&efd)? == 0, "BOOL 0 signalled");
    ctx(dev.set_irqs(req, NONE | TRIG, 0, 0, &[]), "disable")?;
    expect_errno!(
        dev.set_irqs(req, NONE | TRIG, 0, 1, &[]),
        libc::EINVAL,
        "loopback after disabling"
    );
    ctx(dev.set_req_eventfd(efd.as_raw_fd()), "register again")?;
    expect_errno!(dev.set_req_eventfd(-2), libc::EINVAL, "eventfd -2");
    ctx(dev.set_req_eventfd(-1), "unregister with fd -1")?;
    expect_errno!(
        dev.set_irqs(req, NONE | TRIG, 0, 1, &[]),
        libc::EINVAL,
        "loopback after fd -1"
    );
    Ok(())
}

/// A stream between devices whose `migration_version` attributes say they
/// are incompatible fails at its first write; the target stays usable.
fn t_incompatible_stream(flags: FlagSet) -> TestResult {
    let (ms, mt, mt2) = (
        Mdev::create(TYPES[0].0)?,
        Mdev::create(TYPES[1].0)?,
        Mdev::create(TYPES[1].0)?,
    );
    let (src, dst, other) = (ms.open()?, mt.open()?, mt2.open()?);
    let attr = |m: &Mdev| format!("/sys/bus/mdev/devices/{}/migration_version", m.uuid);
    let src_version = ctx(
        fs::read_to_string(attr(&ms)),
        "read source migration_version",
    )?;
    expect_errno!(
        fs::write(attr(&mt), &src_version),
        libc::EINVAL,
        "source version into the target's attribute"
    );
    let stream = save(&src, flags, ms.size())?;
    let fd = ctx(dst.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
    // The first write holds the header (under 64 bytes): refused at once.
    expect_errno!(
        vfio::write_fd(&fd, &stream[..64]),
        libc::EINVAL,
        "first write of an incompatible stream"
    );
    ctx(dst.reset(), "reset")?;
    // Usable: a compatible stream loads.
    ctx(
        other.write_at(vfio::BAR2, 0, &pattern(5, mt2.size())),
        "write pattern",
    )?;
    let good = save(&other, flags, mt2.size())?;
    resume(&dst, &good, 1 << 20)?;
    ensure!(
        read_memory(&dst, mt.size())? == read_memory(&other, mt2.size())?,
        "target memory after a compatible stream"
    );
    Ok(())
}

/// `save-stream TYPE FILE`: saves a new mdev of TYPE (with a pattern) to FILE.
fn save_stream(flags: FlagSet, ty: &str, file: &str) -> TestResult {
    let ty = TYPES.iter().find(|t| t.0 == ty).ok_or("unknown type")?.0;
    let m = Mdev::create(ty)?;
    let dev = m.open()?;
    ctx(
        dev.write_at(vfio::BAR2, 0, &pattern(7, m.size())),
        "write pattern",
    )?;
    let stream = save(&dev, flags, m.size())?;
    ctx(fs::write(file, &stream), "write file")
}

/// `load-stream TYPE FILE`: loads FILE into a new mdev of TYPE, saying at
/// which write (64 KiB each) or at which SET it was refused.
fn load_stream(ty: &str, file: &str) -> TestResult {
    let ty = TYPES.iter().find(|t| t.0 == ty).ok_or("unknown type")?.0;
    let stream = ctx(fs::read(file), "read file")?;
    let m = Mdev::create(ty)?;
    // A local, not a temporary of the tail expression: the device must be
    // closed before `m` removes the mdev (a removal waits for its users).
    let dev = m.open()?;
    load_into(&dev, &stream)
}

/// Loads `stream` into `dev` (RESUMING, 64 KiB writes, STOP), saying at
/// which write or at which SET it was refused.
fn load_into(dev: &Device, stream: &[u8]) -> TestResult {
    let fd = ctx(dev.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
    for (i, chunk) in stream.chunks(65536).enumerate() {
        if let Err(e) = write_all_fd(&fd, chunk, chunk.len()) {
            return Err(format!("refused at write {}: {e}", i + 1));
        }
    }
    ctx(
        dev.set_state(State::Stop.raw()),
        "refused at RESUMING->STOP",
    )?;
    Ok(())
}

/// A device without migration support: the migration features are absent
/// (`ENOTTY`, which QEMU reads as "not supported").
fn t_no_migration() -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    expect_errno!(dev.migration_flags(), libc::ENOTTY, "GET MIGRATION");
    expect_errno!(dev.set_state(State::Stop.raw()), libc::ENOTTY, "SET STOP");
    expect_errno!(dev.data_size(), libc::ENOTTY, "GET MIG_DATA_SIZE");
    ctx(dev.write_at(vfio::BAR2, 0, b"still a device"), "write BAR2")?;
    Ok(())
}

/// The sample's CMD register and its fault-injection values.
const REG_CMD: u64 = 0x14;
const CMD_LOSE_NEXT_ARC: u32 = 2;
const CMD_FAIL_NEXT_ARC: u32 = 3;
const CMD_OVERSIZE_NEXT_RECORD: u32 = 4;

/// Whether a data FD's session is live: a zero-length read (save) or write
/// (resume) succeeds on a live session and fails with `ENODEV` once it
/// ended; an ended save FD also polls `POLLHUP`.
fn session_live(fd: &OwnedFd) -> Result<bool, String> {
    let save = fd_mode(fd) == libc::O_RDONLY;
    let res = if save {
        vfio::read_fd(fd, &mut [])
    } else {
        vfio::write_fd(fd, &[])
    };
    let live = match res {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => false,
        Err(e) => return Err(format!("zero-length I/O on a data FD: {e}")),
    };
    if save {
        let revents = ctx(vfio::poll_fd(fd.as_raw_fd(), libc::POLLIN, 0), "poll")?;
        ensure!(
            (revents & libc::POLLHUP != 0) != live,
            "save FD: live {live} but poll says {revents:#x}"
        );
    }
    Ok(live)
}

/// Every arc of the flag set, made to fail by the sample's fault injection:
/// a recoverable failure leaves the device and its data file where they
/// were (and the arc then succeeds); a lost state (ERROR) ends the file.
fn t_session_ends(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let stream = stream_of(&dev)?;
    let in_session = |s: State, fd_of_resume: bool| {
        if fd_of_resume {
            s == State::Resuming
        } else {
            matches!(s, State::StopCopy | State::PreCopy | State::PreCopyP2p)
        }
    };
    let mut checked = 0;
    for &arc in flags.arcs() {
        let (from, to) = (arc.from(), arc.to());
        for lose in [false, true] {
            let what = format!(
                "{flags}: {from}->{to} failing ({})",
                if lose { "state lost" } else { "recoverable" }
            );
            let fd = drive_to(&dev, flags, from, &stream)?;
            let resume_fd = from == State::Resuming;
            let cmd = if lose {
                CMD_LOSE_NEXT_ARC
            } else {
                CMD_FAIL_NEXT_ARC
            };
            ctx(dev.write_reg(REG_CMD, cmd), "arm a failing arc")?;
            let res = dev.set_state(to.raw());
            let now = ctx(dev.state(), "GET")?;
            if lose {
                expect_errno!(res, libc::EIO, &what);
                ensure!(
                    now == State::Error.raw(),
                    "{what}: state {now}, expected ERROR"
                );
                if let Some(fd) = &fd {
                    ensure!(!session_live(fd)?, "{what}: the data FD outlived ERROR");
                }
            } else {
                expect_errno!(res, libc::EBUSY, &what);
                ensure!(now == from.raw(), "{what}: state {now}, expected {from}");
                if let Some(fd) = &fd {
                    ensure!(
                        session_live(fd)?,
                        "{what}: the data FD ended though the device stayed in {from}"
                    );
                }
                let new_fd = ctx(dev.set_state(to.raw()), &format!("{what}, then again"))?;
                if let Some(fd) = &fd {
                    ensure!(
                        session_live(fd)? == in_session(to, resume_fd),
                        "{what}, then again: data FD live in {to}: {}",
                        session_live(fd)?
                    );
                }
                drop(new_fd);
            }
            checked += 1;
        }
    }
    ctx(dev.reset(), "reset")?;
    println!("  {checked} failing arcs: data FDs end exactly when the state leaves them");
    Ok(())
}

/// RESUMING to STOP: an incomplete stream leaves the device in RESUMING
/// with its file, so the rest can follow; a well-formed stream the device
/// cannot load (`load_finish` fails) ends in ERROR with the file ended.
fn t_resume_finish(flags: FlagSet) -> TestResult {
    let (ms, mt) = (Mdev::create(TYPES[0].0)?, Mdev::create(TYPES[0].0)?);
    let (src, dst) = (ms.open()?, mt.open()?);
    ctx(
        src.write_at(vfio::BAR2, 0, &pattern(11, ms.size())),
        "write pattern",
    )?;
    let good = save(&src, flags, ms.size())?;
    let half = good.len() / 2;
    let fd = ctx(dst.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
    ctx(write_all_fd(&fd, &good[..half], 4096), "write half")?;
    expect_errno!(
        dst.set_state(State::Stop.raw()),
        libc::EINVAL,
        "RESUMING->STOP after half a stream"
    );
    ensure!(
        ctx(dst.state(), "GET")? == State::Resuming.raw(),
        "not in RESUMING after an incomplete stream"
    );
    ensure!(
        session_live(&fd)?,
        "resume FD ended by an incomplete stream"
    );
    ctx(write_all_fd(&fd, &good[half..], 4096), "write the rest")?;
    ctx(dst.set_state(State::Stop.raw()), "RESUMING->STOP, complete")?;
    ensure!(!session_live(&fd)?, "resume FD live in STOP");
    ensure!(
        read_memory(&dst, mt.size())? == read_memory(&src, ms.size())?,
        "target memory after a stream written in two parts"
    );

    // Well-formed, but without the sample's last record (the registers).
    let version = ctx(
        fs::read_to_string(format!(
            "/sys/bus/mdev/devices/{}/migration_version",
            mt.uuid
        )),
        "read migration_version",
    )?;
    let (mut enc, header) =
        Encoder::new(version.trim_end()).map_err(|e| format!("encoder: {e:?}"))?;
    let mut partial = header.as_bytes().to_vec();
    let mut payload = 0u64.to_le_bytes().to_vec();
    payload.extend_from_slice(&pattern(12, PAGE));
    partial.extend_from_slice(&enc.begin(1, payload.len()).map_err(|e| format!("{e:?}"))?);
    enc.payload(&payload).map_err(|e| format!("{e:?}"))?;
    partial.extend_from_slice(&payload);
    partial.extend_from_slice(&enc.end_record().map_err(|e| format!("{e:?}"))?);
    partial.extend_from_slice(&enc.end().map_err(|e| format!("{e:?}"))?);
    ctx(dst.reset(), "reset")?;
    let fd = ctx(dst.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
    ctx(
        write_all_fd(&fd, &partial, 65536),
        "write a well-formed stream without registers",
    )?;
    expect_errno!(
        dst.set_state(State::Stop.raw()),
        libc::EINVAL,
        "RESUMING->STOP when load_finish fails"
    );
    ensure!(
        ctx(dst.state(), "GET")? == State::Error.raw(),
        "not in ERROR after load_finish failed"
    );
    ensure!(!session_live(&fd)?, "resume FD live in ERROR");
    expect_errno!(dst.set_state(State::Stop.raw()), libc::EIO, "SET in ERROR");
    ctx(dst.reset(), "reset in ERROR")?;
    resume(&dst, &good, 65536)?;
    ensure!(
        read_memory(&dst, mt.size())? == read_memory(&src, ms.size())?,
        "target memory after ERROR and reset"
    );
    Ok(())
}

/// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` in RUNNING and STOP against the
/// length of the stop-copy stream that follows.
fn t_data_size(flags: FlagSet) -> TestResult {
    for (ty, size) in &TYPES[..2] {
        let m = Mdev::create(ty)?;
        let dev = m.open()?;
        ctx(dev.write_at(vfio::BAR2, 0, &pattern(13, *size)), "write")?;
        let running = ctx(dev.data_size(), "MIG_DATA_SIZE in RUNNING")?;
        ctx(dev.set_state(State::Stop.raw()), "SET STOP")?;
        let stopped = ctx(dev.data_size(), "MIG_DATA_SIZE in STOP")?;
        let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
        let mut stream = Vec::new();
        read_to_eof(&fd, &mut stream)?;
        let len = stream.len() as u64;
        // An estimate that never falls short, and is off by at most the
        // header's room for a longer version string (255 bytes).
        for (when, est) in [("RUNNING", running), ("STOP", stopped)] {
            ensure!(
                est >= len && est - len <= 512,
                "{flags} {ty}: MIG_DATA_SIZE in {when} {est}, stream {len} bytes"
            );
        }
        println!("  {flags} {ty}: MIG_DATA_SIZE {stopped}, stream {len} bytes");
    }
    Ok(())
}

/// A vendor record longer than the buffer it was given fails the save with
/// `EIO`, and every later read too: the stream never skips it.
fn t_oversize_record(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    ctx(
        dev.write_reg(REG_CMD, CMD_OVERSIZE_NEXT_RECORD),
        "arm an oversize record",
    )?;
    let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
    let mut buf = vec![0u8; 1 << 20];
    // The header comes first; the bad record is refused after it.
    let n = ctx(vfio::read_fd(&fd, &mut buf), "first read")?;
    ensure!(
        n > 0 && n < 512,
        "first read: {n} bytes, expected the header only"
    );
    for i in 0..2 {
        expect_errno!(
            vfio::read_fd(&fd, &mut buf),
            libc::EIO,
            &format!("read {} after the bad record", i + 2)
        );
    }
    ctx(dev.reset(), "reset")?;
    let _ = flags;
    Ok(())
}

/// With `max_record=4104` (one page per record), every record respects it
/// and the migration still completes.
fn t_small_records(flags: FlagSet) -> TestResult {
    const MAX: usize = 4104;
    let (ms, mt) = (Mdev::create(TYPES[0].0)?, Mdev::create(TYPES[0].0)?);
    let (src, dst) = (ms.open()?, mt.open()?);
    ctx(
        src.write_at(vfio::BAR2, 0, &pattern(14, ms.size())),
        "write pattern",
    )?;
    let stream = save(&src, flags, ms.size())?;
    // Walk the envelope: header length at 10, then 8-byte record heads
    // (kind, tag, length), payload, 4-byte checksum.
    let mut at = u16::from_le_bytes([stream[10], stream[11]]) as usize;
    let mut records = 0;
    while at + 8 <= stream.len() {
        let len = u32::from_le_bytes([
            stream[at + 4],
            stream[at + 5],
            stream[at + 6],
            stream[at + 7],
        ]) as usize;
        ensure!(len <= MAX, "record at {at}: {len} bytes > {MAX}");
        at += 8 + len + 4;
        records += 1;
    }
    ensure!(
        at == stream.len() && records > ms.size() / PAGE,
        "{records} records ending at {at} of {}",
        stream.len()
    );
    resume(&dst, &stream, 4096)?;
    ensure!(
        read_memory(&dst, mt.size())? == read_memory(&src, ms.size())?,
        "target memory with small records"
    );
    println!("  {records} records of at most {MAX} bytes");
    Ok(())
}

/// The device cdev and iommufd path (`/dev/vfio/devices/vfioN`): the same
/// migration features and a whole migration.
fn t_cdev(flags: FlagSet) -> TestResult {
    let (ms, mt) = (Mdev::create(TYPES[1].0)?, Mdev::create(TYPES[1].0)?);
    let src = ctx(Device::open_cdev(&ms.uuid), "open source cdev")?;
    let dst = ctx(Device::open_cdev(&mt.uuid), "open target cdev")?;
    let got = ctx(src.migration_flags(), "GET MIGRATION")?;
    ensure!(
        got == u64::from(flags.bits()),
        "MIGRATION flags {got:#x} through the cdev"
    );
    ctx(
        src.write_at(vfio::BAR2, 0, &pattern(15, ms.size())),
        "write pattern",
    )?;
    let stream = save(&src, flags, ms.size())?;
    resume(&dst, &stream, 1 << 20)?;
    ensure!(
        read_memory(&dst, mt.size())? == read_memory(&src, ms.size())?,
        "target memory through the cdev"
    );
    // The group path refuses a device the cdev holds.
    ensure!(
        ms.open().is_err(),
        "the group path opened a device bound to iommufd"
    );
    drop((src, dst));
    ms.open()
        .map_err(|e| format!("group path after the cdev closed: {e}"))?;
    Ok(())
}

/// `rmmod rmdev_sample`, expected to fail because the module is in use.
fn rmmod_refused(what: &str) -> TestResult {
    let out = ctx(
        std::process::Command::new("rmmod")
            .arg("rmdev_sample")
            .output(),
        "run rmmod",
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("in use"),
        "rmmod {what}: {} ({})",
        out.status,
        err.trim()
    );
    Ok(())
}

/// Unloading while a device or a data file is open is refused ("in use");
/// a data file outliving its device reports `ENODEV`.
fn t_rmmod_in_use(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    rmmod_refused("with the device open")?;
    let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
    drop(dev);
    ensure!(!session_live(&fd)?, "save FD live after the device closed");
    rmmod_refused("with a data FD open")?;
    drop(fd);
    ensure!(
        std::path::Path::new(&format!("/sys/bus/mdev/devices/{}", m.uuid)).exists(),
        "the mdev went away"
    );
    let _ = flags;
    Ok(())
}

/// The emulated configuration space through VFIO, as the PCI
/// specification says a function answers: identity, BAR sizing consistent
/// with the region sizes, ROM, command, capability list, writes of any size
/// consuming their count, reset, and migration.
fn t_config(flags: FlagSet) -> TestResult {
    let (ms, mt) = (Mdev::create(TYPES[1].0)?, Mdev::create(TYPES[1].0)?);
    let (src, dst) = (ms.open()?, mt.open()?);
    let (rflags, rsize, _) = ctx(src.region(vfio::CONFIG), "region 7")?;
    ensure!(
        rflags & 3 == 3 && rsize == 256,
        "config region: flags {rflags:#x} size {rsize}"
    );
    let c = |off| {
        src.config32(off)
            .map_err(|e| format!("config {off:#x}: {e}"))
    };
    ensure!(c(0x00)? == 0x10f0_1b36, "vendor/device {:#x}", c(0x00)?);
    ensure!(c(0x08)? >> 8 == 0xff_0000, "class {:#x}", c(0x08)?);
    ensure!(
        c(0x3c)? & 0xff00 == 0x0100,
        "interrupt pin: {:#x}",
        c(0x3c)?
    );
    ensure!(c(0x04)? >> 16 & 0x10 != 0, "no capability list bit");
    let cap = (c(0x34)? & 0xff) as u64;
    ensure!(
        cap >= 0x40 && c(cap)? & 0xff == 0x05,
        "first capability at {cap:#x} is not MSI"
    );
    // Size probing, against the region sizes VFIO reports.
    let bar0 = ctx(src.region(vfio::BAR0), "region 0")?.1;
    let bar2 = ctx(src.region(vfio::BAR2), "region 2")?.1;
    for bar in 0..6 {
        ctx(src.set_config32(0x10 + 4 * bar, 0xffff_ffff), "probe BAR")?;
    }
    let want0 = !(bar0 as u32 - 1) & 0xffff_fff0;
    let want2 = (!(bar2 - 1) as u32 & 0xffff_fff0) | 0xc;
    let want2_hi = (!(bar2 - 1) >> 32) as u32;
    let got = [c(0x10)?, c(0x14)?, c(0x18)?, c(0x1c)?, c(0x20)?, c(0x24)?];
    ensure!(
        got == [want0, 0, want2, want2_hi, 0, 0],
        "BAR probe {got:x?}, expected {:x?} for regions of {bar0} and {bar2} bytes",
        [want0, 0, want2, want2_hi, 0, 0]
    );
    ctx(src.set_config32(0x30, 0xffff_f800), "probe ROM")?;
    ensure!(c(0x30)? == 0, "ROM BAR reads {:#x}", c(0x30)?);
    // Command: memory, master, parity, SERR and INTx disable are writable.
    ctx(
        src.write_at(vfio::CONFIG, 4, &0xffffu16.to_le_bytes()),
        "write command",
    )?;
    ensure!(
        c(0x04)? & 0xffff == 0x0546,
        "command {:#x}",
        c(0x04)? & 0xffff
    );
    // Writes of any size at any offset consume their whole count (the
    // read-only bytes stay).
    for (off, len) in [(0u64, 256usize), (1, 3), (0x3d, 1), (0x0e, 2), (0xff, 1)] {
        let n = ctx(
            vfio::pwrite(&src, vfio::CONFIG, off, &vec![0u8; len]),
            "config write",
        )?;
        ensure!(n == len, "write of {len} at {off:#x} took {n}");
    }
    ensure!(c(0x00)? == 0x10f0_1b36, "identity changed by writes");
    // A function reset restores the reset values.
    ctx(src.set_config32(0x10, 0xfebf_0000), "program BAR0")?;
    ctx(src.reset(), "reset")?;
    ensure!(
        c(0x10)? == 0 && c(0x04)? & 0xffff == 0,
        "after reset: BAR0 {:#x} command {:#x}",
        c(0x10)?,
        c(0x04)? & 0xffff
    );
    // The configuration migrates with the device.
    ctx(src.set_config32(0x10, 0xfebf_0000), "program BAR0")?;
    ctx(src.set_config32(0x18, 0xe000_000c), "program BAR2")?;
    ctx(
        src.write_at(vfio::CONFIG, 4, &0x0006u16.to_le_bytes()),
        "enable memory and master",
    )?;
    ctx(src.write_at(vfio::CONFIG, 0x3c, &[10]), "interrupt line")?;
    let stream = save(&src, flags, ms.size())?;
    resume(&dst, &stream, 1 << 20)?;
    let mut want = [0u8; 256];
    let mut got = [0u8; 256];
    ctx(
        src.read_at(vfio::CONFIG, 0, &mut want),
        "read source config",
    )?;
    ctx(dst.read_at(vfio::CONFIG, 0, &mut got), "read target config")?;
    ensure!(
        got == want,
        "target config differs from the source's from byte {:#x}",
        got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0)
    );
    // The next user of the source meets the function as after a reset.
    drop(src);
    let src = ms.open()?;
    let c = |off| {
        src.config32(off)
            .map_err(|e| format!("config {off:#x}: {e}"))
    };
    ensure!(
        c(0x10)? == 0 && c(0x18)? == 0xc && c(0x04)? & 0xffff == 0 && c(0x3c)? & 0xff == 0,
        "the next user sees BAR0 {:#x}, BAR2 {:#x}, command {:#x}, line {:#x}",
        c(0x10)?,
        c(0x18)?,
        c(0x04)? & 0xffff,
        c(0x3c)? & 0xff
    );
    Ok(())
}

/// INTx and MSI as vfio-pci delivers them: the sample raises its interrupt
/// when a checksum command completes, at once or from a timer in hard
/// interrupt context.
fn t_interrupts(flags: FlagSet) -> TestResult {
    use vfio::{
        IRQ_SET_ACTION_MASK as MASK, IRQ_SET_ACTION_TRIGGER as TRIG,
        IRQ_SET_ACTION_UNMASK as UNMASK, IRQ_SET_DATA_EVENTFD as EFD, IRQ_SET_DATA_NONE as NONE,
    };
    const INTX: u32 = 0;
    const MSI: u32 = 1;
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let checksum = || {
        dev.write_reg(REG_CMD, 1)
            .map_err(|e| format!("checksum: {e}"))
    };
    let (intx, msi) = (new_eventfd()?, new_eventfd()?);
    // The sample's command 5 raises the interrupt from a timer in hard
    // interrupt context, as a hardware device's interrupt handler would.
    let fires_from_timer = |efd: &OwnedFd, what: &str| -> TestResult {
        ctx(dev.write_reg(REG_CMD, 5), "checksum with a timer")?;
        let revents = ctx(
            vfio::poll_fd(efd.as_raw_fd(), libc::POLLIN, 5_000),
            "poll the eventfd",
        )?;
        ensure!(
            revents & libc::POLLIN != 0 && eventfd_take(efd)? == 1,
            "{what} raised from hard interrupt context did not fire (5 s)"
        );
        Ok(())
    };
    // Nothing enabled: raising is silent.
    checksum()?;
    ctx(
        dev.set_irqs(INTX, EFD | TRIG, 0, 1, &intx.as_raw_fd().to_ne_bytes()),
        "enable INTx",
    )?;
    ensure!(eventfd_take(&intx)? == 0, "INTx fired on enable");
    // The first one raised from a timer in hard interrupt context.
    fires_from_timer(&intx, "INTx")?;
    // Auto-masked until the user unmasks; raised meanwhile, it is pending.
    checksum()?;
    ensure!(eventfd_take(&intx)? == 0, "INTx fired while auto-masked");
    ctx(dev.set_irqs(INTX, NONE | UNMASK, 0, 1, &[]), "unmask")?;
    ensure!(
        eventfd_take(&intx)? == 1,
        "pending INTx did not fire on unmask"
    );
    ctx(dev.set_irqs(INTX, NONE | UNMASK, 0, 1, &[]), "unmask")?;
    ctx(dev.set_irqs(INTX, NONE | MASK, 0, 1, &[]), "mask")?;
    checksum()?;
    ensure!(eventfd_take(&intx)? == 0, "INTx fired while masked");
    ctx(dev.set_irqs(INTX, NONE | UNMASK, 0, 1, &[]), "unmask")?;
    ensure!(
        eventfd_take(&intx)? == 1,
        "INTx raised while masked is lost"
    );
    expect_errno!(
        dev.set_irqs(INTX, EFD | MASK, 0, 1, &intx.as_raw_fd().to_ne_bytes()),
        libc::ETIMEDOUT,
        "mask through an eventfd"
    );
    // Unmasking through an eventfd (KVM's resampling irqfd): signalling it
    // unmasks, and an INTx raised while masked fires then. One at a time;
    // -1 unregisters it.
    let unmask = new_eventfd()?;
    let unmask_fd = unmask.as_raw_fd().to_ne_bytes();
    ctx(
        dev.set_irqs(INTX, EFD | UNMASK, 0, 1, &unmask_fd),
        "register an unmask eventfd",
    )?;
    expect_errno!(
        dev.set_irqs(INTX, EFD | UNMASK, 0, 1, &unmask_fd),
        libc::EBUSY,
        "a second unmask eventfd"
    );
    let fires_after_unmask_eventfd = |what: &str| -> TestResult {
        checksum()?;
        ensure!(eventfd_take(&intx)? == 0, "{what}: INTx fired while masked");
        ctx(
            vfio::write_fd(&unmask, &1u64.to_ne_bytes()),
            "signal the unmask eventfd",
        )?;
        // vfio's virqfd unmasks from a work item: wait for it.
        let revents = ctx(
            vfio::poll_fd(intx.as_raw_fd(), libc::POLLIN, 20_000),
            "poll INTx",
        )?;
        ensure!(
            revents & libc::POLLIN != 0 && eventfd_take(&intx)? == 1,
            "{what}: signalling the unmask eventfd did not unmask INTx (20 s)"
        );
        Ok(())
    };
    // INTx is masked here (the last unmask fired the pending one).
    fires_after_unmask_eventfd("first")?;
    fires_after_unmask_eventfd("second")?;
    ctx(
        dev.set_irqs(INTX, EFD | UNMASK, 0, 1, &(-1i32).to_ne_bytes()),
        "unregister the unmask eventfd",
    )?;
    checksum()?;
    ctx(
        vfio::write_fd(&unmask, &1u64.to_ne_bytes()),
        "signal the unmask eventfd",
    )?;
    let revents = ctx(
        vfio::poll_fd(intx.as_raw_fd(), libc::POLLIN, 1_000),
        "poll INTx",
    )?;
    ensure!(
        revents & libc::POLLIN == 0,
        "the unregistered unmask eventfd still unmasks"
    );
    ctx(dev.set_irqs(INTX, NONE | UNMASK, 0, 1, &[]), "unmask")?;
    ensure!(
        eventfd_take(&intx)? == 1,
        "INTx raised while masked is lost"
    );
    // The command register's INTx-disable bit (PCI 2.3): the function does
    // not assert its pin, the status register's interrupt bit still shows
    // it raised, and clearing the bit fires it.
    let status_interrupt = || -> Result<bool, String> {
        let mut st = [0u8; 2];
        ctx(dev.read_at(vfio::CONFIG, 0x06, &mut st), "read status")?;
        Ok(u16::from_le_bytes(st) & (1 << 3) != 0)
    };
    let intx_disable = |on: bool| -> TestResult {
        let mut cmd = [0u8; 2];
        ctx(dev.read_at(vfio::CONFIG, 0x04, &mut cmd), "read command")?;
        let cmd = u16::from_le_bytes(cmd);
        let cmd = if on { cmd | 1 << 10 } else { cmd & !(1 << 10) };
        ctx(
            dev.write_at(vfio::CONFIG, 0x04, &cmd.to_le_bytes()),
            "write command",
        )
    };
    ensure!(
        status_interrupt()?,
        "the status register's interrupt bit is clear with an INTx not serviced"
    );
    ctx(dev.set_irqs(INTX, NONE | UNMASK, 0, 1, &[]), "unmask")?;
    ensure!(
        eventfd_take(&intx)? == 0,
        "INTx fired on an unmask with nothing raised"
    );
    ensure!(
        !status_interrupt()?,
        "the status register's interrupt bit is set after the unmask serviced the INTx"
    );
    intx_disable(true)?;
    checksum()?;
    ensure!(
        eventfd_take(&intx)? == 0,
        "INTx fired with the command register's INTx-disable bit set"
    );
    ensure!(
        status_interrupt()?,
        "the status register's interrupt bit is clear with an INTx held by INTx-disable"
    );
    intx_disable(false)?;
    ensure!(
        eventfd_take(&intx)? == 1,
        "an INTx raised under INTx-disable did not fire when the bit was cleared"
    );
    // A reset deasserts the pin: what INTx-disable held back is dropped,
    // not fired when the reset clears the bit.
    ctx(dev.set_irqs(INTX, NONE | UNMASK, 0, 1, &[]), "unmask")?;
    intx_disable(true)?;
    checksum()?;
    ctx(dev.reset(), "reset")?;
    ensure!(
        eventfd_take(&intx)? == 0,
        "a reset fired an INTx held back by INTx-disable"
    );
    ensure!(
        !status_interrupt()?,
        "the status register's interrupt bit is set after a reset"
    );
    // Registered again: disabling INTx below unregisters it (and closing
    // the device would too).
    ctx(
        dev.set_irqs(INTX, EFD | UNMASK, 0, 1, &unmask_fd),
        "register the unmask eventfd again",
    )?;
    // INTx and MSI exclude each other.
    expect_errno!(
        dev.set_irqs(MSI, EFD | TRIG, 0, 1, &msi.as_raw_fd().to_ne_bytes()),
        libc::EINVAL,
        "MSI while INTx is enabled"
    );
    ctx(dev.set_irqs(INTX, NONE | TRIG, 0, 0, &[]), "disable INTx")?;
    expect_errno!(
        dev.set_irqs(INTX, NONE | UNMASK, 0, 1, &[]),
        libc::EINVAL,
        "unmask with INTx off"
    );
    ctx(
        dev.set_irqs(MSI, EFD | TRIG, 0, 1, &msi.as_raw_fd().to_ne_bytes()),
        "enable MSI",
    )?;
    checksum()?;
    ensure!(eventfd_take(&msi)? == 1, "MSI did not fire");
    fires_from_timer(&msi, "MSI")?;
    ensure!(eventfd_take(&intx)? == 0, "INTx fired with MSI enabled");
    checksum()?;
    ensure!(eventfd_take(&msi)? == 1, "MSI is not edge-triggered");
    ctx(dev.set_irqs(MSI, NONE | TRIG, 0, 1, &[]), "MSI loopback")?;
    ensure!(eventfd_take(&msi)? == 1, "MSI loopback did not fire");
    ctx(dev.set_irqs(MSI, NONE | TRIG, 0, 0, &[]), "disable MSI")?;
    checksum()?;
    ensure!(eventfd_take(&msi)? == 0, "MSI fired after disable");
    expect_errno!(
        dev.set_irqs(MSI, NONE | TRIG, 0, 0, &[]),
        libc::EINVAL,
        "disable MSI while it is off"
    );
    // Closing the device releases the eventfds.
    ctx(
        dev.set_irqs(INTX, EFD | TRIG, 0, 1, &intx.as_raw_fd().to_ne_bytes()),
        "enable INTx again",
    )?;
    drop(dev);
    let dev = m.open()?;
    dev.write_reg(REG_CMD, 1)
        .map_err(|e| format!("checksum: {e}"))?;
    ensure!(
        eventfd_take(&intx)? == 0,
        "INTx fired after the device was closed"
    );
    let _ = flags;
    Ok(())
}

/// `MIG_DATA_SIZE` during pre-copy: once the initial image is read, only
/// what changed since, the final records and the end are left, and the
/// stop-copy stream that follows fits the figure.
fn t_precopy_data_size(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[1].0)?;
    let dev = m.open()?;
    let fd = ctx(dev.set_state(State::PreCopy.raw()), "SET PRE_COPY")?.ok_or("no FD")?;
    let start = ctx(dev.data_size(), "MIG_DATA_SIZE at the start")?;
    ensure!(
        start as usize > m.size(),
        "MIG_DATA_SIZE {start} before pre-copy sent anything"
    );
    let mut stream = Vec::new();
    read_precopy(&fd, &mut stream)?;
    let converged = ctx(dev.data_size(), "MIG_DATA_SIZE after pre-copy")?;
    ensure!(
        converged < 1024,
        "MIG_DATA_SIZE {converged} after pre-copy sent everything"
    );
    for page in [3u64, 200, 700] {
        ctx(
            dev.write_at(vfio::BAR2, page * PAGE as u64, b"dirty"),
            "dirty a page",
        )?;
    }
    let dirty = ctx(dev.data_size(), "MIG_DATA_SIZE after 3 dirty pages")?;
    ensure!(
        dirty >= converged + 3 * PAGE as u64 && dirty < converged + 4 * PAGE as u64,
        "MIG_DATA_SIZE {dirty} after dirtying 3 pages (converged: {converged})"
    );
    if flags.supports(State::PreCopyP2p) {
        ctx(dev.set_state(State::PreCopyP2p.raw()), "SET PRE_COPY_P2P")?;
    }
    ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?;
    let before = stream.len();
    read_to_eof(&fd, &mut stream)?;
    let rest = (stream.len() - before) as u64;
    ensure!(
        rest <= dirty && dirty - rest <= 512,
        "stop-copy sent {rest} bytes; MIG_DATA_SIZE said {dirty}"
    );
    println!("  {flags}: MIG_DATA_SIZE {start} -> {converged} after pre-copy -> {dirty} with 3 dirty pages; stop-copy sent {rest}");
    Ok(())
}

/// The sample's command 6: its engine writes pages 200 ms later, from a
/// timer in hard interrupt context, and wakes the pre-copy reader.
const CMD_ENGINE_TIMER: u32 = 6;

/// `precopy-wakeup`: a device whose state changes on its own wakes the
/// reader waiting in `poll` on its pre-copy file. The sample's engine run
/// (command 6) comes from a timer in hard interrupt context 200 ms after
/// the command, so a reader that found nothing (`ENOMSG`) is waiting in
/// `poll` when it comes; without the framework's `SaveWaker` it would sleep
/// to its 10 s timeout (where the kernel looks once more and finds the
/// data: the test requires the wake-up within 5 s), because the user's own
/// write (which wakes pollers) came before anything was there to read. The run writes one page
/// (`precopy_dirty_pages` is 0): the 4096 dirty bytes `PRECOPY_INFO`
/// reports and the page's contents, generation 1 then 2 and the page's
/// index (the sample's ABI), are the expected values. A stopped device
/// refuses the command (`EBUSY`); stopping it, and closing it, cancel a run
/// not yet finished; a device closed while stopped runs for its next user.
fn t_precopy_wakeup(flags: FlagSet) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    let fd = ctx(dev.set_state(State::PreCopy.raw()), "SET PRE_COPY")?.ok_or("no FD")?;
    let mut stream = Vec::new();
    read_precopy(&fd, &mut stream)?;
    // The poll must have waited for the run: one that began after it
    // (this thread held up for 200 ms) proves nothing, and is tried again
    // with a later run, which writes the next page.
    let mut waited = None;
    for attempt in 0..3u64 {
        let events = ctx(vfio::poll_fd(fd.as_raw_fd(), libc::POLLIN, 0), "poll")?;
        ensure!(
            events == 0,
            "{flags}: poll reported {events:#x} with nothing to read"
        );
        ctx(dev.write_reg(REG_CMD, CMD_ENGINE_TIMER), "command 6")?;
        let start = Instant::now();
        let events = ctx(vfio::poll_fd(fd.as_raw_fd(), libc::POLLIN, 10_000), "poll")?;
        let took = start.elapsed();
        ensure!(
            events & libc::POLLIN != 0 && took < Duration::from_secs(5),
            "{flags}: the engine's run woke no poller: poll returned {events:#x} after {took:?}"
        );
        let (_, dirty) = ctx(vfio::precopy_info(&fd), "PRECOPY_INFO")?;
        ensure!(
            dirty == PAGE as u64,
            "{flags}: PRECOPY_INFO dirty_bytes {dirty} after one engine page"
        );
        let got = engine_words(&dev, attempt)?;
        ensure!(
            got == (attempt + 1, attempt),
            "{flags}: page {attempt} starts with {got:?} after engine run {}",
            attempt + 1
        );
        read_precopy(&fd, &mut stream)?;
        if took >= Duration::from_millis(100) {
            waited = Some((attempt, took));
            break;
        }
    }
    let (runs, took) = waited.ok_or("three engine runs came before the poll waited")?;
    // A run cancelled by the stop; refused while stopped.
    let start = Instant::now();
    ctx(dev.write_reg(REG_CMD, CMD_ENGINE_TIMER), "command 6")?;
    ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?;
    let held = start.elapsed();
    expect_busy(&dev, flags, "STOP_COPY")?;
    read_to_eof(&fd, &mut stream)?;
    ctx(dev.set_state(State::Stop.raw()), "SET STOP")?;
    expect_busy(&dev, flags, "STOP")?;
    std::thread::sleep(Duration::from_millis(400));
    let (next, by_stop) = after_cancel(&dev, flags, runs + 1, held, "the stop")?;
    // Closed while stopped, the device runs for its next user; a run the
    // last user left pending is cancelled by the close.
    drop(dev);
    let dev = m.open()?;
    let start = Instant::now();
    ctx(
        dev.write_reg(REG_CMD, CMD_ENGINE_TIMER),
        "command 6 after a close in STOP",
    )?;
    drop(dev);
    let held = start.elapsed();
    let dev = m.open()?;
    std::thread::sleep(Duration::from_millis(400));
    let (next, by_close) = after_cancel(&dev, flags, next, held, "the close")?;
    // Running, the engine runs.
    ctx(dev.write_reg(REG_CMD, CMD_ENGINE_TIMER), "command 6")?;
    std::thread::sleep(Duration::from_millis(400));
    let got = engine_words(&dev, next)?;
    ensure!(
        got == (next + 1, next),
        "{flags}: page {next} starts with {got:?} after the engine ran in RUNNING"
    );
    println!(
        "  {flags}: the engine's run woke the poller after {took:?} (attempt {}); cancelled by the stop: {by_stop}, by the close: {by_close}",
        runs + 1
    );
    Ok(())
}

/// The first two words of page `page` of a sample mdev's memory: where its
/// engine writes a run's generation and the page's index.
fn engine_words(dev: &Device, page: u64) -> Result<(u64, u64), String> {
    let mut b = [0u8; 16];
    ctx(
        dev.read_at(vfio::BAR2, page * PAGE as u64, &mut b),
        "read BAR2",
    )?;
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    Ok((word(0), word(8)))
}

/// The sample's command 6 fails with `EBUSY` in `state`.
fn expect_busy(dev: &Device, flags: FlagSet, state: &str) -> TestResult {
    let r = dev.write_reg(REG_CMD, CMD_ENGINE_TIMER);
    ensure!(
        r.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EBUSY),
        "{flags}: command 6 in {state}: {r:?}, expected EBUSY"
    );
    Ok(())
}

/// After `what` (a stop, a close) came `held` after a command 6, and the
/// run's 200 ms are over: page `next` is untouched, the run cancelled. If
/// this thread was held up 150 ms or more, the run may have finished
/// first: then it wrote the page, and the next run writes the one after.
/// Returns the next run's page and whether the cancel was checked.
fn after_cancel(
    dev: &Device,
    flags: FlagSet,
    next: u64,
    held: Duration,
    what: &str,
) -> Result<(u64, bool), String> {
    let got = engine_words(dev, next)?;
    if held < Duration::from_millis(150) {
        ensure!(
            got == (0, 0),
            "{flags}: page {next} starts with {got:?}: the run {what} cancelled ({held:?} after its command) wrote it"
        );
        return Ok((next, true));
    }
    if got == (0, 0) {
        return Ok((next, false));
    }
    ensure!(
        got == (next + 1, next),
        "{flags}: page {next} starts with {got:?} after a run finished"
    );
    Ok((next + 1, false))
}

/// The BAR2 size of an existing mdev, from VFIO.
fn bar2_size(dev: &Device) -> Result<usize, String> {
    Ok(ctx(dev.region(vfio::BAR2), "region 2")?.1 as usize)
}

/// `fill UUID SEED`: writes a pattern over an mdev's whole memory.
fn fill(uuid: &str, seed: &str) -> TestResult {
    let seed: u64 = seed.parse().map_err(|e| format!("seed: {e}"))?;
    let dev = ctx(Device::open(uuid), &format!("open {uuid}"))?;
    let size = bar2_size(&dev)?;
    ctx(
        dev.write_at(vfio::BAR2, 0, &pattern(seed, size)),
        "write BAR2",
    )
}

/// `compare UUID UUID`: the two mdevs' memories are equal.
fn compare(a: &str, b: &str) -> TestResult {
    let (da, db) = (
        ctx(Device::open(a), &format!("open {a}"))?,
        ctx(Device::open(b), &format!("open {b}"))?,
    );
    let (sa, sb) = (bar2_size(&da)?, bar2_size(&db)?);
    ensure!(sa == sb, "sizes differ: {sa} and {sb}");
    let (ma, mb) = (read_memory(&da, sa)?, read_memory(&db, sb)?);
    if let Some(at) = ma.iter().zip(&mb).position(|(x, y)| x != y) {
        return Err(format!("memories differ from byte {at}"));
    }
    println!("  {a} and {b}: {sa} bytes of memory, equal");
    Ok(())
}

/// `digest UUID`: the size and a 64-bit FNV-1a digest of the mdev's
/// memory, for comparing memories on two hosts.
fn digest(uuid: &str) -> TestResult {
    let dev = ctx(Device::open(uuid), &format!("open {uuid}"))?;
    let size = bar2_size(&dev)?;
    let mem = read_memory(&dev, size)?;
    let h = mem.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    println!("{size} {h:016x}");
    Ok(())
}

/// `compare-pattern UUID SEED`: the mdev's memory is still what `fill`
/// wrote.
fn compare_pattern(uuid: &str, seed: &str) -> TestResult {
    let seed: u64 = seed.parse().map_err(|e| format!("seed: {e}"))?;
    let dev = ctx(Device::open(uuid), &format!("open {uuid}"))?;
    let size = bar2_size(&dev)?;
    let mem = read_memory(&dev, size)?;
    if let Some(at) = mem
        .iter()
        .zip(&pattern(seed, size))
        .position(|(x, y)| x != y)
    {
        return Err(format!(
            "{uuid}: memory differs from the pattern from byte {at}"
        ));
    }
    println!("  {uuid}: {size} bytes of memory intact");
    Ok(())
}

/// `refuse-many N`: N streams refused at their first bytes, for the rate
/// limit of the kernel's messages.
fn refuse_many(n: usize) -> TestResult {
    let m = Mdev::create(TYPES[0].0)?;
    let dev = m.open()?;
    for _ in 0..n {
        let fd = ctx(dev.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
        expect_errno!(
            vfio::write_fd(&fd, b"NOTRMDEV"),
            libc::EINVAL,
            "foreign stream"
        );
        ctx(dev.reset(), "reset")?;
    }
    Ok(())
}

/// Reads a stop-copy stream of a stopped `dev` to its end, `sizes` bytes
/// per read in turn.
fn save_with_reads(dev: &Device, sizes: &[usize]) -> Result<Vec<u8>, String> {
    let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; sizes.iter().copied().max().unwrap_or(1)];
    for i in 0.. {
        let size = sizes[i % sizes.len()];
        match ctx(vfio::read_fd(&fd, &mut buf[..size]), "read save FD")? {
            0 => break,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
    drop(fd);
    ctx(dev.set_state(State::Stop.raw()), "SET STOP")?;
    Ok(out)
}

/// Reads with room for whole records take the device's `save_to` (each
/// record copied once, straight into the reader's buffer), shorter ones
/// its `save` through the session's buffer: byte for byte the same stream,
/// whatever the read sizes, and it loads.
fn t_direct_and_buffered(flags: FlagSet) -> TestResult {
    let (ms, mt) = (Mdev::create(TYPES[1].0)?, Mdev::create(TYPES[1].0)?);
    let (src, dst) = (ms.open()?, mt.open()?);
    ctx(
        src.write_at(vfio::BAR2, 0, &pattern(21, ms.size())),
        "write pattern",
    )?;
    ctx(src.set_state(State::Stop.raw()), "SET STOP")?;
    // 65556 is the largest record with its envelope: exactly room for one.
    let direct = save_with_reads(&src, &[1 << 20])?;
    for sizes in [
        &[4093][..],
        &[65555, 1],
        &[65556, 7, 200_000, 65_556 * 3, 12],
    ] {
        let other = save_with_reads(&src, sizes)?;
        ensure!(
            other == direct,
            "reads of {sizes:?} gave another stream ({} bytes, {} with 1 MiB reads)",
            other.len(),
            direct.len()
        );
    }
    ctx(dst.set_state(State::Stop.raw()), "SET STOP")?;
    let fd = ctx(dst.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no FD")?;
    ctx(write_all_fd(&fd, &direct, 1 << 20), "load")?;
    ctx(dst.set_state(State::Stop.raw()), "RESUMING->STOP")?;
    ensure!(
        read_memory(&dst, mt.size())? == pattern(21, ms.size()),
        "the target's memory is not the source's"
    );
    println!(
        "  {flags}: {} bytes, the same with every read size",
        direct.len()
    );
    Ok(())
}

/// A reader's buffer that faults partway through a record loses nothing:
/// the read returns what came before (or `EFAULT` if nothing did) and the
/// next read goes on with the record, so the stream is the same.
fn t_direct_fault(flags: FlagSet) -> TestResult {
    const MIB: usize = 1 << 20;
    let m = Mdev::create(TYPES[1].0)?;
    let dev = m.open()?;
    ctx(
        dev.write_at(vfio::BAR2, 0, &pattern(22, m.size())),
        "write pattern",
    )?;
    ctx(dev.set_state(State::Stop.raw()), "SET STOP")?;
    let reference = save_with_reads(&dev, &[MIB])?;
    // 1 MiB with an inaccessible page 200 KiB in, and 1 MiB inaccessible.
    // SAFETY: A new private anonymous mapping, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * MIB,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    ensure!(map != libc::MAP_FAILED, "mmap failed");
    let base = map as usize;
    // SAFETY: Both ranges are inside the mapping.
    let prot = unsafe {
        libc::mprotect((base + 200 * 1024) as *mut _, 4096, libc::PROT_NONE)
            | libc::mprotect((base + MIB) as *mut _, MIB, libc::PROT_NONE)
    };
    let result = (|| -> TestResult {
        ensure!(prot == 0, "mprotect failed");
        let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no FD")?;
        let mut out = Vec::new();
        let mut good = vec![0u8; MIB];
        let mut faults = 0;
        for round in 0.. {
            let (at, len) = if round % 2 == 0 {
                (base, MIB)
            } else {
                (base + MIB, MIB)
            };
            // SAFETY: A read(2) into the mapping (part of which faults).
            let n = unsafe { libc::read(fd.as_raw_fd(), at as *mut _, len) };
            if n == 0 {
                break;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                ensure!(e.raw_os_error() == Some(libc::EFAULT), "faulting read: {e}");
                faults += 1;
            } else {
                ensure!(
                    round % 2 == 0 && (n as usize) < 200 * 1024 + 4096,
                    "read {n} bytes past the bad page"
                );
                // SAFETY: The kernel wrote these `n` bytes, below the bad page.
                out.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(at as *const u8, n as usize)
                });
            }
            // Then a good read: the record that faulted comes first.
            match ctx(vfio::read_fd(&fd, &mut good), "read after a fault")? {
                0 => break,
                n => out.extend_from_slice(&good[..n]),
            }
            ensure!(round < 1000, "the stream never ends");
        }
        ensure!(faults > 0, "no read faulted");
        ensure!(
            out == reference,
            "the stream after faults differs ({} bytes, reference {})",
            out.len(),
            reference.len()
        );
        println!("  {flags}: {faults} reads faulted, the stream is the same");
        Ok(())
    })();
    // SAFETY: The mapping made above, no longer used.
    unsafe { libc::munmap(map, 2 * MIB) };
    result
}

type Test = fn(FlagSet) -> TestResult;

/// The tests: name, function, and the state a flag set must support for the
/// test to apply (it is reported "skip" under the other flag sets).
const TESTS: &[(&str, Test, Option<State>)] = &[
    ("features", t_features, None),
    ("fsm", t_fsm, None),
    ("data-files", t_data_files, None),
    ("migrate", t_migrate, None),
    ("migrate-largest", t_migrate_largest, None),
    ("bad-streams", t_bad_streams, None),
    ("reset", t_reset, None),
    ("close-mid-session", t_close_mid_session, None),
    ("hup-wakeup", t_hup_wakeup, None),
    ("config-fault", t_config_fault, None),
    ("stream-fault", t_stream_fault, None),
    ("contend", t_contend, None),
    ("remove-in-use", t_remove_in_use, None),
    ("bad-ioctls", t_bad_ioctls, None),
    ("incompatible-stream", t_incompatible_stream, None),
    ("session-ends", t_session_ends, None),
    ("resume-finish", t_resume_finish, None),
    ("data-size", t_data_size, None),
    ("oversize-record", t_oversize_record, None),
    ("small-records", t_small_records, None),
    ("direct-and-buffered", t_direct_and_buffered, None),
    ("direct-fault", t_direct_fault, None),
    ("cdev", t_cdev, None),
    ("rmmod-in-use", t_rmmod_in_use, None),
    ("config", t_config, None),
    ("interrupts", t_interrupts, None),
    ("guest-memory", guest_memory::t_guest_memory, None),
    (
        "precopy-data-size",
        t_precopy_data_size,
        Some(State::PreCopy),
    ),
    ("precopy-wakeup", t_precopy_wakeup, Some(State::PreCopy)),
];

/// The helper commands that take arguments, as `usage()` lists them.
const TOOLS: &str = "save-stream TYPE FILE | load-stream TYPE FILE | fill UUID SEED | \
compare UUID UUID | compare-pattern UUID SEED | digest UUID | refuse-many N | \
vf-read PCI OFF | vf-write PCI OFF VALUE | region-read UUID INDEX OFF | \
region-write UUID INDEX OFF VALUE | migrate-mdev UUID UUID | load-mdev UUID FILE | \
hold UUID STATE | contend UUID ROUNDS | session-memcg CGROUP-DIR | stream-campaign SEED COUNT | \
ioctl-campaign SEED COUNT [vf DEV-UUID DEV-PCI OTHER-UUID] | race-campaign SEED ROUNDS [vf UUID] | \
cycles SRC-TYPE-DIR DST-TYPE-DIR COUNT | \
teardown-campaign TYPE-DIR SEED ROUNDS [unbind PCI] | rmmod-race TYPE-DIR MODULE SEED ATTEMPTS | \
vf-stream-campaign SRC-UUID DST-UUID DST-PCI SEED COUNT | vf-tx UUID OTHER-UUID PF-NETDEV VF-MAC | \
vf-rx UUID OTHER-UUID PF-NETDEV VF0-MAC VF1-MAC | vf-bench MDEV-UUID VF-PCI PF-NETDEV ROUNDS";

/// Wrong arguments: what was wrong, the usage, and exit status 2 (a test
/// script that misspells a test name fails instead of running nothing).
fn usage(why: &str) -> ! {
    eprintln!("rmdev-vm-test: {why}");
    eprintln!("usage: rmdev-vm-test [--flags N] TEST...   (N: 1, 3, 5 or 7; default 7)");
    eprintln!("       rmdev-vm-test --flags 0 no-migration");
    eprintln!("       rmdev-vm-test [--flags N] {TOOLS}");
    eprintln!("       rmdev-vm-test list");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut bits = 7;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--flags" {
            bits = match it.next().map(|v| v.parse()) {
                Some(Ok(b)) => b,
                Some(Err(_)) | None => usage("--flags needs a number"),
            };
        } else if a.starts_with('-') {
            usage(&format!("unknown option {a}"));
        } else {
            names.push(a.as_str());
        }
    }
    if names == ["list"] {
        for (n, _, _) in TESTS {
            println!("{n}");
        }
        return;
    }
    if bits == 0 {
        if names != ["no-migration"] {
            usage("--flags 0 runs only no-migration");
        }
        match t_no_migration() {
            Ok(()) => println!("ok   no-migration"),
            Err(e) => {
                println!("FAIL no-migration: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let flags = match flag_set(bits) {
        Ok(f) => f,
        Err(e) => usage(&e),
    };
    let tool =
        match names.as_slice() {
            ["save-stream", ty, file] => Some(save_stream(flags, ty, file)),
            ["load-stream", ty, file] => Some(load_stream(ty, file)),
            ["fill", uuid, seed] => Some(fill(uuid, seed)),
            ["compare", a, b] => Some(compare(a, b)),
            ["compare-pattern", uuid, seed] => Some(compare_pattern(uuid, seed)),
            ["digest", uuid] => Some(digest(uuid)),
            ["refuse-many", n] => Some(n.parse().map_err(|e| format!("{e}")).and_then(refuse_many)),
            ["vf-read", pci, off] => Some(igbvf::vf_read(pci, off)),
            ["vf-write", pci, off, v] => Some(igbvf::vf_write(pci, off, v)),
            ["region-read", uuid, idx, off] => Some(igbvf::region_read(uuid, idx, off)),
            ["region-write", uuid, idx, off, v] => Some(igbvf::region_write(uuid, idx, off, v)),
            ["migrate-mdev", src, dst] => Some(igbvf::migrate_mdev(src, dst)),
            ["load-mdev", uuid, file] => Some(igbvf::load_mdev(uuid, file)),
            ["hold", uuid, state] => Some(igbvf::hold(uuid, state)),
            ["vf-tx", uuid, other, pf_if, mac] => Some(vf_traffic::vf_tx(uuid, other, pf_if, mac)),
            ["vf-rx", uuid, other, pf_if, mac0, mac1] => {
                Some(vf_rx::vf_rx(uuid, other, pf_if, mac0, mac1))
            }
            ["vf-bench", mdev, bdf, pf_if, rounds] => {
                Some(vf_bench::vf_bench(mdev, bdf, pf_if, rounds))
            }
            ["session-memcg", cg] => Some(session_memcg(cg)),
            ["contend", uuid, rounds] => Some(contend(uuid, rounds)),
            ["stream-campaign", seed, count] => Some(campaign::stream_campaign(seed, count)),
            ["ioctl-campaign", seed, count] => Some(campaign::ioctl_campaign(seed, count, None)),
            ["ioctl-campaign", seed, count, "vf", uuid, pci, other] => Some(
                campaign::ioctl_campaign(seed, count, Some([uuid, pci, other])),
            ),
            ["race-campaign", seed, rounds] => Some(campaign::race_campaign(seed, rounds, None)),
            ["race-campaign", seed, rounds, "vf", uuid] => {
                Some(campaign::race_campaign(seed, rounds, Some(uuid)))
            }
            ["cycles", src, dst, count] => Some(campaign::cycles(src, dst, count)),
            ["teardown-campaign", dir, seed, rounds] => {
                Some(campaign::teardown_campaign(dir, seed, rounds, None))
            }
            ["teardown-campaign", dir, seed, rounds, "unbind", pci] => {
                Some(campaign::teardown_campaign(dir, seed, rounds, Some(pci)))
            }
            ["rmmod-race", dir, module, seed, attempts] => {
                Some(campaign::rmmod_race(dir, module, seed, attempts))
            }
            ["vf-stream-campaign", src, dst, pci, seed, count] => {
                Some(campaign::vf_stream_campaign(src, dst, pci, seed, count))
            }
            _ => None,
        };
    if let Some(res) = tool {
        if let Err(e) = res {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(bad) = names.iter().find(|n| !TESTS.iter().any(|t| t.0 == **n)) {
        usage(&format!("no test or command '{bad}' with these arguments"));
    }
    let mut failed = 0;
    for (name, test, needs) in TESTS {
        if !names.is_empty() && !names.contains(name) {
            continue;
        }
        if let Some(state) = needs.filter(|s| !flags.supports(*s)) {
            println!("skip {name} [{flags}]: needs {state}");
            continue;
        }
        let start = Instant::now();
        match test(flags) {
            Ok(()) => println!("ok   {name} [{flags}] ({:.1?})", start.elapsed()),
            Err(e) => {
                failed += 1;
                println!("FAIL {name} [{flags}]: {e}");
            }
        }
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
