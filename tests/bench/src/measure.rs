// SPDX-License-Identifier: GPL-2.0
//! The measurements, run in the lab VM. Each prints one JSON line per
//! figure on stdout: `{"figure": NAME, ...}`, times in seconds (medians of
//! the repetitions), sizes in bytes.

use std::fs;
use std::hint::black_box;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rmdev::migrate::{self, NoProgress, Options, PrecopyEnd, StreamOut};
use rmdev::vfio::{self, state, Device};
use serde_json::{json, Value};

/// A measurement's error, for the message.
pub(crate) type Result<T = ()> = std::result::Result<T, String>;

fn ctx<T>(r: io::Result<T>, what: &str) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Prints a figure's line.
fn emit(figure: &str, mut fields: Value) {
    if let Some(m) = fields.as_object_mut() {
        m.insert("figure".into(), figure.into());
    }
    println!("{fields}");
}

/// The median of `v` (which it sorts); 0 for none.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A buffer of `len` bytes whose pages are all faulted in, so that page
/// faults are not part of what is timed.
fn touched(len: usize, byte: u8) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v.fill(byte);
    v
}

/// Non-zero bytes that differ with `seed`, for device memory and the
/// memcpy reference (what they are does not matter to the costs).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(31).wrapping_add(seed) as u8) | 1)
        .collect()
}

/// Two buffers for the memcpy reference, their pages mapped.
struct Memcpy {
    src: Vec<u8>,
    dst: Vec<u8>,
    times: Vec<f64>,
}

impl Memcpy {
    /// The reference a throughput is divided by: `bytes` (at least 4 MiB,
    /// more than any cache) copied between two buffers in this process. A
    /// save's reference copies as much as it moves, so that what touching
    /// more memory costs (TCG's software TLB) weighs on both alike.
    fn new(bytes: usize) -> Memcpy {
        let bytes = bytes.max(4 << 20);
        Memcpy {
            src: pattern(1, bytes),
            dst: touched(bytes, 1),
            times: Vec::new(),
        }
    }

    /// One timed copy, between the measurements it is the reference of.
    fn run(&mut self) {
        let t = Instant::now();
        self.dst.copy_from_slice(black_box(&self.src));
        black_box(&mut self.dst);
        self.times.push(t.elapsed().as_secs_f64());
    }

    /// The median copy's fields for a figure's line.
    fn fields(&mut self) -> Value {
        json!({"memcpy_bytes": self.src.len(), "memcpy_seconds": median(&mut self.times)})
    }
}

/// `line` with `extra`'s fields added.
fn with(mut line: Value, extra: Value) -> Value {
    if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    line
}

/// CRC-32C with the SSE4.2 instruction, 8 bytes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc32c_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c: u64 = 0xFFFF_FFFF;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        c = _mm_crc32_u64(c, u64::from_le_bytes(b));
    }
    let mut c = c as u32;
    for &b in words.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

pub(crate) fn crc(bytes: usize, reps: usize) -> Result {
    let data = pattern(3, bytes);
    let time = |f: &dyn Fn() -> u32| {
        let mut times = Vec::new();
        let mut value = 0;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            value = black_box(f());
            times.push(t.elapsed().as_secs_f64());
        }
        (value, median(&mut times))
    };
    let mut reference = Memcpy::new(bytes);
    reference.run();
    let (table, table_s) = time(&|| rmdev_logic::crc32c::crc32c(black_box(&data)));
    reference.run();
    let line = json!({"method": "table", "bytes": bytes, "seconds": table_s});
    emit("crc", with(line, reference.fields()));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2 (just checked).
        let (hw, hw_s) = time(&|| unsafe { crc32c_sse42(black_box(&data)) });
        if hw != table {
            return Err(format!("CRC-32C differs: table {table:#x}, SSE4.2 {hw:#x}"));
        }
        reference.run();
        let line = json!({"method": "sse4.2", "bytes": bytes, "seconds": hw_s});
        emit("crc", with(line, reference.fields()));
    }
    Ok(())
}

fn open(uuid: &str) -> Result<Device> {
    ctx(Device::open(uuid), &format!("open {uuid}"))
}

fn set(dev: &Device, to: u32) -> Result<Option<OwnedFd>> {
    ctx(dev.set_state(to), &format!("SET {}", vfio::state_name(to)))
}

fn memory_size(dev: &Device) -> Result<usize> {
    let (_, size, _) = ctx(dev.region(vfio::BAR2), "BAR2 region info")?;
    Ok(size as usize)
}

/// The kernel's save and load at one read/write size (`chunk`), straight
/// into and out of one buffer. This one drives the uAPI itself rather
/// than through the tool's engine, on purpose: it measures the kernel's
/// data path at each size with no copy of ours, where the engine moves
/// fixed 1 MiB chunks through a sink (its cost is `rmdev`'s, not the
/// framework's).
pub(crate) fn save_load(src: &str, dst: &str, chunk: usize, reps: usize) -> Result {
    let (s, d) = (open(src)?, open(dst)?);
    let size = memory_size(&s)?;
    for (i, part) in pattern(7, size).chunks(1 << 20).enumerate() {
        ctx(
            s.write_at(vfio::BAR2, (i << 20) as u64, part),
            "fill the source",
        )?;
    }
    // The stream is read straight into its final place (no copy in this
    // process) and its pages are touched first.
    let mut stream = touched(size + size / 8 + (2 << 20), 0);
    let mut len = 0;
    let (mut saves, mut loads) = (Vec::new(), Vec::new());
    let mut reference = Memcpy::new(size);
    for rep in 0..reps.max(1) {
        // The reference in between, a few times at most (small devices
        // repeat their save many times).
        if rep < 5 {
            reference.run();
        }
        set(&s, state::STOP)?;
        let t = Instant::now();
        let fd = set(&s, state::STOP_COPY)?.ok_or("STOP_COPY gave no data FD")?;
        len = 0;
        loop {
            let end = (len + chunk).min(stream.len());
            if end == len {
                return Err("the stream is larger than the buffer".into());
            }
            match ctx(vfio::read_fd(&fd, &mut stream[len..end]), "save read")? {
                0 => break,
                n => len += n,
            }
        }
        drop(fd);
        set(&s, state::STOP)?;
        saves.push(t.elapsed().as_secs_f64());
        set(&s, state::RUNNING)?;

        set(&d, state::STOP)?;
        let t = Instant::now();
        let fd = set(&d, state::RESUMING)?.ok_or("RESUMING gave no data FD")?;
        for part in stream[..len].chunks(chunk) {
            ctx(vfio::write_all_fd(&fd, part), "load write")?;
        }
        set(&d, state::STOP)?;
        loads.push(t.elapsed().as_secs_f64());
        drop(fd);
        set(&d, state::RUNNING)?;
    }
    // The load was real: the target's memory is the source's.
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    for at in [0, size.saturating_sub(1 << 20)] {
        let n = (1 << 20).min(size);
        ctx(
            s.read_at(vfio::BAR2, at as u64, &mut want[..n]),
            "read source",
        )?;
        ctx(
            d.read_at(vfio::BAR2, at as u64, &mut got[..n]),
            "read target",
        )?;
        if got[..n] != want[..n] {
            return Err(format!("the target's memory differs at {at}"));
        }
    }
    let common = with(
        json!({"size": size, "bytes": len, "chunk": chunk, "reps": saves.len()}),
        reference.fields(),
    );
    let mut save = common.clone();
    save["seconds"] = median(&mut saves).into();
    let mut load = common;
    load["seconds"] = median(&mut loads).into();
    emit("save", save);
    emit("load", load);
    Ok(())
}

/// `LABEL=VALUE` pairs.
fn labelled(pairs: &[String]) -> Result<Vec<(&str, &str)>> {
    pairs
        .iter()
        .map(|p| p.split_once('=').ok_or(format!("'{p}' is not LABEL=VALUE")))
        .collect()
}

/// Rounds of each of the devices in turn, one round each at a time, so that
/// the machine's drifts (TCG's timing moves by 10 % between boots and within
/// one) and the background work a round leaves (udev handling the uevents
/// of a create) touch every device alike: `round(i)` times one round of
/// device `i`. The first rounds warm up and are not counted.
fn interleaved(
    figure: &str,
    labels: &[&str],
    n: usize,
    mut round: impl FnMut(usize) -> Result<f64>,
) -> Result {
    let warmup = (n / 10).max(1);
    let mut times = vec![Vec::with_capacity(n); labels.len()];
    for r in 0..warmup + n {
        for (i, t) in times.iter_mut().enumerate() {
            let s = round(i)?;
            if r >= warmup {
                t.push(s);
            }
        }
    }
    for (label, t) in labels.iter().zip(&mut times) {
        emit(
            figure,
            json!({"device": label, "seconds": median(t), "n": t.len()}),
        );
    }
    Ok(())
}

pub(crate) fn set_roundtrip(devices: &[String], n: usize) -> Result {
    let devices = labelled(devices)?;
    let mut open_ = Vec::new();
    for (_, uuid) in &devices {
        let dev = open(uuid)?;
        if ctx(dev.state(), "GET state")? != state::RUNNING {
            set(&dev, state::RUNNING)?;
        }
        open_.push(dev);
    }
    let labels: Vec<&str> = devices.iter().map(|(l, _)| *l).collect();
    interleaved("set-roundtrip", &labels, n, |i| {
        let t = Instant::now();
        set(&open_[i], state::STOP)?;
        set(&open_[i], state::RUNNING)?;
        Ok(t.elapsed().as_secs_f64())
    })
}

fn new_uuid() -> Result<String> {
    let u = ctx(
        fs::read_to_string("/proc/sys/kernel/random/uuid"),
        "new UUID",
    )?;
    Ok(u.trim().to_string())
}

pub(crate) fn create_remove(types: &[String], n: usize) -> Result {
    let types = labelled(types)?;
    let labels: Vec<&str> = types.iter().map(|(l, _)| *l).collect();
    interleaved("create-remove", &labels, n, |i| {
        let uuid = new_uuid()?;
        let create = Path::new(types[i].1).join("create");
        let remove = Path::new("/sys/bus/mdev/devices")
            .join(&uuid)
            .join("remove");
        let t = Instant::now();
        ctx(fs::write(&create, &uuid), &format!("create {uuid}"))?;
        ctx(fs::write(&remove, "1"), &format!("remove {uuid}"))?;
        Ok(t.elapsed().as_secs_f64())
    })
}

/// A stream sink that keeps nothing: only the engine's counts matter.
struct Discard;

impl StreamOut for Discard {
    fn what(&self) -> &'static str {
        "discard the stream"
    }
    fn put(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// What stop-copy sends after pre-copy, by the tool's engine (the sequence
/// `rmdev save` and `rmdev migrate` run): the device dirties `pages` pages
/// after each read that finds nothing left (`-ENOMSG`), so pre-copy stops
/// once its rounds stop shrinking, and stop-copy should send those pages
/// and little more.
pub(crate) fn stopcopy(uuid: &str, pages: usize) -> Result {
    const PAGE: usize = 4096;
    ctx(
        fs::write(
            "/sys/module/rmdev_sample/parameters/precopy_dirty_pages",
            pages.to_string(),
        ),
        "set precopy_dirty_pages",
    )?;
    let dev = open(uuid)?;
    let sum = migrate::save_to(&dev, &mut Discard, &Options::default(), &NoProgress)
        .map_err(|e| e.to_string())?;
    if sum.precopy_end != Some(PrecopyEnd::Stalled) {
        return Err(format!(
            "pre-copy ended {:?} after {} rounds, not by the device's steady dirtying",
            sum.precopy_end, sum.precopy_rounds
        ));
    }
    set(&dev, state::RUNNING)?;
    emit(
        "stopcopy",
        json!({"pages": pages, "dirtied": pages * PAGE, "bytes": sum.stop_copy_bytes,
               "rounds": sum.precopy_rounds}),
    );
    Ok(())
}

/// Unreclaimable slab plus vmalloc, in bytes (`/proc/meminfo`).
fn kernel_memory() -> Result<i64> {
    let text = ctx(fs::read_to_string("/proc/meminfo"), "/proc/meminfo")?;
    let mut total = 0;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if let (Some("SUnreclaim:" | "VmallocUsed:"), Some(kb)) = (f.next(), f.next()) {
            total += kb.parse::<i64>().map_err(|e| format!("meminfo: {e}"))? * 1024;
        }
    }
    Ok(total)
}

pub(crate) fn session_memory(uuid: &str, reps: usize) -> Result {
    let dev = open(uuid)?;
    let size = memory_size(&dev)?;
    set(&dev, state::STOP)?;
    let mut deltas = Vec::new();
    for _ in 0..reps.max(1) {
        let before = kernel_memory()?;
        let fd = set(&dev, state::STOP_COPY)?.ok_or("STOP_COPY gave no data FD")?;
        // The first read fills the session's buffer.
        let mut one = [0u8; 1];
        ctx(vfio::read_fd(&fd, &mut one), "save read")?;
        let held = kernel_memory()? - before;
        deltas.push(held as f64);
        set(&dev, state::STOP)?;
        drop(fd);
    }
    set(&dev, state::RUNNING)?;
    emit(
        "session-memory",
        json!({"size": size, "bytes": median(&mut deltas), "reps": deltas.len()}),
    );
    Ok(())
}

/// The median wall time of running `cmd` `n` times; fails on exit status
/// above 1 (1 is a verdict).
fn time_command(cmd: &mut Command, n: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let t = Instant::now();
        let out = ctx(cmd.output(), "run")?;
        times.push(t.elapsed().as_secs_f64());
        if !matches!(out.status.code(), Some(0 | 1)) {
            return Err(format!(
                "{cmd:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(median(&mut times))
}

pub(crate) fn rmdev_check(rmdev: &Path, target: &str, n: usize) -> Result {
    // The type against itself: rmdev reads its string and writes it back
    // to the same attribute, the whole authoritative check.
    let mut check = Command::new(rmdev);
    check.args(["check", target, target]);
    let out = ctx(check.output(), "rmdev check")?;
    if !out.status.success() {
        return Err(format!(
            "rmdev check {target} {target}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let seconds = time_command(&mut check, n)?;
    // What starting any process costs in this VM, for the reader.
    let spawn = time_command(&mut Command::new("/bin/true"), n)?;
    emit(
        "rmdev-check",
        json!({"seconds": seconds, "spawn_seconds": spawn, "n": n}),
    );
    Ok(())
}

/// Parents and types per parent of the generated tree.
const PARENTS: usize = 10;
const TYPES_PER_PARENT: usize = 10;
const MANIFEST_ENTRIES: usize = 1000;

/// A sysfs tree under `root` with 100 migrating types, in the layout the
/// mdev core makes.
fn write_tree(root: &Path) -> io::Result<()> {
    fs::create_dir_all(root.join("sys/class/mdev_bus"))?;
    fs::create_dir_all(root.join("sys/bus/mdev/devices"))?;
    for p in 0..PARENTS {
        let parent = format!("vendor{p}");
        let types = root.join(format!("sys/devices/virtual/{parent}/mdev_supported_types"));
        for t in 0..TYPES_PER_PARENT {
            let d = types.join(format!("{parent}-t{t}"));
            fs::create_dir_all(d.join("devices"))?;
            fs::write(d.join("name"), format!("t{t}\n"))?;
            fs::write(d.join("device_api"), "vfio-pci\n")?;
            fs::write(d.join("available_instances"), "4\n")?;
            fs::write(d.join("migration_version"), format!("{parent}:t{t}:2.3\n"))?;
        }
        std::os::unix::fs::symlink(
            format!("../../devices/virtual/{parent}"),
            root.join(format!("sys/class/mdev_bus/{parent}")),
        )?;
    }
    Ok(())
}

pub(crate) fn rmdev_match(rmdev: &Path, n: usize) -> Result {
    let root = std::env::temp_dir().join(format!("rmdev-bench-match-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    ctx(write_tree(&root), "write the sysfs tree")?;
    // Entries of every parent and type, with minors below, at and above
    // the local one: some match, some do not.
    let types: Vec<Value> = (0..MANIFEST_ENTRIES)
        .map(|i| {
            let (p, t, minor) = (i % PARENTS, (i / PARENTS) % TYPES_PER_PARENT, i % 5);
            json!({"parent": format!("vendor{p}"), "type": format!("vendor{p}-t{t}-{i}"),
                   "name": null, "migration_version": format!("vendor{p}:t{t}:2.{minor}")})
        })
        .collect();
    let manifest = json!({"schema": "rmdev-manifest", "schema_version": 1, "host": "bench",
                          "rmdev_version": "bench", "types": types, "mdevs": []});
    let path = root.join("manifest.json");
    ctx(fs::write(&path, manifest.to_string()), "write the manifest")?;
    // What an operator runs: the text answer, one line per entry.
    let mut cmd = Command::new(rmdev);
    cmd.arg("--root")
        .arg(&root)
        .args(["match", "--offline", "--from"])
        .arg(&path);
    let out = ctx(cmd.output(), "rmdev match")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = text.lines().filter(|l| l.starts_with("type ")).count();
    let accepted = text.lines().filter(|l| l.contains(": vendor")).count();
    // Minors 0 to 3 of 0 to 4 are accepted by their type's 2.3.
    if rows != MANIFEST_ENTRIES || accepted != MANIFEST_ENTRIES * 4 / 5 {
        return Err(format!(
            "rmdev match answered {rows} entries, {accepted} accepted; want {MANIFEST_ENTRIES}, {}: {}",
            MANIFEST_ENTRIES * 4 / 5,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let seconds = time_command(&mut cmd, n)?;
    let _ = fs::remove_dir_all(&root);
    emit(
        "rmdev-match",
        json!({"entries": MANIFEST_ENTRIES, "types": PARENTS * TYPES_PER_PARENT, "seconds": seconds, "n": n}),
    );
    Ok(())
}
