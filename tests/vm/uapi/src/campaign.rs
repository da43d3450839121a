// SPDX-License-Identifier: GPL-2.0

//! The hostile-stream campaign against the sample's resume data files:
//! `rmdev-vm-test stream-campaign SEED COUNT`. Seeded (the seed is printed,
//! and the same seed replays the same cases), bounded by COUNT.
//!
//! Each case is a valid stop-copy stream of a `rmdev_sample-16k` device
//! changed one way, written into a resume data file in random pieces:
//!
//! - damaged streams, whose checksums no longer hold (bit flips,
//!   truncations, splices with another type's stream, duplicated and
//!   swapped records, length fields rewritten, random bytes): every one
//!   must be refused;
//! - forged streams, re-encoded here with valid checksums but hostile
//!   contents (another type's header, header fields the format does not
//!   define, records of unknown kinds, unknown vendor and framework tags,
//!   memory offsets and lengths past the device, a configuration space
//!   record of another function, empty and oversized records, an END that
//!   lies, records after the END): every one must be refused too;
//! - forged streams the sample must load (its memory records reordered or
//!   rewritten): the device's memory must then be what this file's own
//!   model of the sample's format says, not what the code under test says.
//!
//! After each case the device is reset and must be in RUNNING; at the end a
//! valid stream loads and the memory equals the source's. A refusal must
//! be one of the errnos a refused stream gets; any other outcome fails with
//! the seed and the case number.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmdev::vfio::{self, Device};
use rmdev_logic::crc32c::Crc32c;
use rmdev_logic::envelope::{FRAMEWORK_TAGS, MAX_RECORD_PAYLOAD, TAG_PCI_CONFIG};
use rmdev_logic::fsm::State;

use super::{ctx, read_memory, Mdev, TestResult, TYPES};

/// The sample's record tags (samples/sample.rs, its stream format).
const TAG_MEM: u16 = 1;
const TAG_REGS: u16 = 2;
pub(crate) const KIND_DATA: u16 = 1;
pub(crate) const KIND_END: u16 = 2;

/// The errnos a refused stream may get from a write or from RESUMING to
/// STOP: a failed checksum (EBADMSG), anything else (EINVAL).
pub(crate) const REFUSALS: [i32; 2] = [libc::EINVAL, libc::EBADMSG];

/// The largest record the sample takes with its `max_record` parameter at
/// 0: an offset and 16 pages.
const SAMPLE_MAX_RECORD: usize = 8 + 16 * 4096;

pub(crate) fn errno_short(e: i32) -> &'static str {
    match e {
        libc::EINVAL => "EINVAL",
        libc::EBADMSG => "EBADMSG",
        _ => "other",
    }
}

/// A stream taken apart: the header's version string and the records
/// before the END, as (kind, tag, payload).
pub(crate) struct Parsed {
    pub(crate) version: Vec<u8>,
    pub(crate) records: Vec<(u16, u16, Vec<u8>)>,
    /// Where each record starts and ends in the raw stream (END included).
    pub(crate) spans: Vec<(usize, usize)>,
}

pub(crate) fn parse(s: &[u8]) -> Result<Parsed, String> {
    let u16_at = |p: usize| u16::from_le_bytes([s[p], s[p + 1]]);
    let hlen = u16_at(10) as usize;
    let vlen = u16_at(16) as usize;
    let version = s.get(20..20 + vlen).ok_or("short header")?.to_vec();
    let (mut at, mut records, mut spans) = (hlen, Vec::new(), Vec::new());
    while at < s.len() {
        let head = s.get(at..at + 8).ok_or("short record head")?;
        let kind = u16::from_le_bytes([head[0], head[1]]);
        let tag = u16::from_le_bytes([head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let payload = s.get(at + 8..at + 8 + len).ok_or("short payload")?.to_vec();
        spans.push((at, at + 12 + len));
        at += 12 + len;
        if kind == KIND_END {
            break;
        }
        records.push((kind, tag, payload));
    }
    Ok(Parsed {
        version,
        records,
        spans,
    })
}

/// Writes streams with valid checksums whatever they say: the envelope's
/// chained CRC-32C computed here, independently of the encoder.
pub(crate) struct Forge {
    crc: Crc32c,
    pub(crate) out: Vec<u8>,
}

impl Forge {
    /// A header carrying `version`, with the given envelope version and
    /// flags, and a declared length `hlen_delta` off the true one.
    pub(crate) fn header(
        version: &[u8],
        envelope: u16,
        flags: u32,
        reserved: u16,
        hlen_delta: i32,
    ) -> Forge {
        let mut b = Vec::new();
        b.extend_from_slice(b"RMDEVMIG");
        b.extend_from_slice(&envelope.to_le_bytes());
        let hlen = (24 + version.len()) as i32 + hlen_delta;
        b.extend_from_slice(&(hlen as u16).to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&(version.len() as u16).to_le_bytes());
        b.extend_from_slice(&reserved.to_le_bytes());
        b.extend_from_slice(version);
        let crc = Crc32c::new().update(&b);
        b.extend_from_slice(&crc.value().to_le_bytes());
        Forge { crc, out: b }
    }

    pub(crate) fn valid(version: &[u8]) -> Forge {
        Forge::header(version, 1, 0, 0, 0)
    }

    /// A record whose length field says `len` (true or not).
    pub(crate) fn record_len(&mut self, kind: u16, tag: u16, len: u32, payload: &[u8]) {
        let mut head = [0u8; 8];
        head[..2].copy_from_slice(&kind.to_le_bytes());
        head[2..4].copy_from_slice(&tag.to_le_bytes());
        head[4..].copy_from_slice(&len.to_le_bytes());
        self.crc = self.crc.update(&head).update(payload);
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(&self.crc.value().to_le_bytes());
    }

    pub(crate) fn record(&mut self, kind: u16, tag: u16, payload: &[u8]) {
        self.record_len(kind, tag, payload.len() as u32, payload);
    }

    pub(crate) fn records(&mut self, records: &[(u16, u16, Vec<u8>)]) -> u64 {
        let mut total = 0;
        for (kind, tag, payload) in records {
            self.record(*kind, *tag, payload);
            total += payload.len() as u64;
        }
        total
    }

    pub(crate) fn end(&mut self, total: u64) {
        self.record(KIND_END, 0, &total.to_le_bytes());
    }

    /// The stream: `records` and an END that tells their true total.
    pub(crate) fn finish(mut self, records: &[(u16, u16, Vec<u8>)]) -> Vec<u8> {
        let total = self.records(records);
        self.end(total);
        self.out
    }
}

/// Whose streams a campaign forges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Sample,
    Vf,
}

/// How a case must end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Refused,
    /// Loaded, with the memory the model computed.
    Loads,
}

/// One case: its class name, the bytes, what must happen, and for a
/// stream that loads, the memory records it carries (offset, bytes).
struct Case {
    class: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    mem: Vec<(usize, Vec<u8>)>,
}

fn refused(class: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        class,
        bytes,
        expect: Expect::Refused,
        mem: Vec::new(),
    }
}

fn mem_record(offset: u64, data: &[u8]) -> (u16, u16, Vec<u8>) {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend_from_slice(data);
    (KIND_DATA, TAG_MEM, p)
}

/// The memory records of a parsed stream, as (offset, bytes).
fn mem_of(records: &[(u16, u16, Vec<u8>)]) -> Vec<(usize, Vec<u8>)> {
    records
        .iter()
        .filter(|r| r.1 == TAG_MEM)
        .map(|r| {
            let off = u64::from_le_bytes(r.2[..8].try_into().unwrap_or([0; 8]));
            (off as usize, r.2[8..].to_vec())
        })
        .collect()
}

/// A case of a random class, from the valid stream `good` (parsed as `p`)
/// and another type's valid stream `foreign`.
fn make_case(
    rng: &mut StdRng,
    vendor: Vendor,
    good: &[u8],
    p: &Parsed,
    foreign: &[u8],
    size: usize,
) -> Case {
    let n = p.records.len();
    let pick = |rng: &mut StdRng| rng.gen_range(0..n);
    let class = rng.gen_range(0..20);
    if vendor == Vendor::Vf && matches!(class, 13 | 14 | 17..) {
        return vf_case(rng, class, p);
    }
    match class {
        0 => {
            let mut b = good.to_vec();
            for _ in 0..rng.gen_range(1..=4) {
                let at = rng.gen_range(0..b.len());
                b[at] ^= 1 << rng.gen_range(0..8);
            }
            // Flips that cancel out leave the stream valid: flip one more.
            if b == good {
                b[0] ^= 1;
            }
            refused("bit flips", b)
        }
        1 => refused("truncated", good[..rng.gen_range(0..good.len())].to_vec()),
        2 => {
            let mut b = good[..rng.gen_range(0..good.len())].to_vec();
            b.extend_from_slice(&foreign[rng.gen_range(0..foreign.len())..]);
            refused("spliced with another type's stream", b)
        }
        3 => {
            let (a, e) = p.spans[pick(rng)];
            let mut b = good[..e].to_vec();
            b.extend_from_slice(&good[a..]);
            refused("a record repeated", b)
        }
        4 => {
            let (i, j) = (pick(rng), pick(rng));
            let (i, j) = (i.min(j), i.max(j));
            if i == j {
                return refused("truncated", good[..good.len() - 1].to_vec());
            }
            let (si, sj) = (p.spans[i], p.spans[j]);
            let mut b = good[..si.0].to_vec();
            b.extend_from_slice(&good[sj.0..sj.1]);
            b.extend_from_slice(&good[si.1..sj.0]);
            b.extend_from_slice(&good[si.0..si.1]);
            b.extend_from_slice(&good[sj.1..]);
            refused("two records swapped", b)
        }
        5 => {
            let (a, _) = p.spans[pick(rng)];
            let old = u32::from_le_bytes(good[a + 4..a + 8].try_into().unwrap_or([0; 4]));
            let lens = [
                0,
                1,
                old.wrapping_add(1),
                old.wrapping_sub(1),
                MAX_RECORD_PAYLOAD as u32 + 1,
                u32::MAX,
            ];
            let mut b = good.to_vec();
            b[a + 4..a + 8].copy_from_slice(&lens[rng.gen_range(0..lens.len())].to_le_bytes());
            refused("a length field rewritten", b)
        }
        6 => {
            let mut b: Vec<u8> = (0..rng.gen_range(0..2 * good.len()))
                .map(|_| rng.gen())
                .collect();
            if rng.gen_bool(0.5) {
                let h = p.spans[0].0.min(b.len());
                b[..h].copy_from_slice(&good[..h]);
            }
            refused("random bytes", b)
        }
        7 => {
            let fp = parse(foreign).map(|f| f.version).unwrap_or_default();
            refused(
                "another type's header",
                Forge::valid(&fp).finish(&p.records),
            )
        }
        8 => {
            let fields = rng.gen_range(0..4);
            let f = match fields {
                0 => Forge::header(&p.version, 2, 0, 0, 0),
                1 => Forge::header(&p.version, 1, 1 << rng.gen_range(0..32), 0, 0),
                2 => Forge::header(&p.version, 1, 0, rng.gen_range(1..=u16::MAX), 0),
                _ => Forge::header(&p.version, 1, 0, 0, if rng.gen_bool(0.5) { 1 } else { -1 }),
            };
            refused("header fields not in the format", f.finish(&p.records))
        }
        9 => {
            let mut recs = p.records.clone();
            let kind = [0u16, 3, 7, 0xffff][rng.gen_range(0..4)];
            recs.insert(rng.gen_range(0..=n), (kind, TAG_MEM, vec![0; 16]));
            refused(
                "a record of an unknown kind",
                Forge::valid(&p.version).finish(&recs),
            )
        }
        10 => {
            let mut recs = p.records.clone();
            let tag = rng.gen_range(3..FRAMEWORK_TAGS);
            recs.insert(
                rng.gen_range(0..=n),
                (KIND_DATA, tag, vec![1; rng.gen_range(1..64)]),
            );
            refused(
                "an unknown vendor tag",
                Forge::valid(&p.version).finish(&recs),
            )
        }
        11 => {
            let mut recs = p.records.clone();
            let tag = rng.gen_range(TAG_PCI_CONFIG + 1..=u16::MAX);
            recs.insert(rng.gen_range(0..=n), (KIND_DATA, tag, vec![0; 256]));
            refused(
                "an unknown framework tag",
                Forge::valid(&p.version).finish(&recs),
            )
        }
        12 => {
            // The configuration space record of another function: a
            // read-only identity byte (vendor, device, class, header type)
            // changed, or the wrong size.
            let mut recs = p.records.clone();
            let Some(i) = recs.iter().position(|r| r.1 == TAG_PCI_CONFIG) else {
                return refused("truncated", good[..1].to_vec());
            };
            let cfg = &mut recs[i].2;
            match rng.gen_range(0..3) {
                0 => cfg[[0, 1, 2, 3, 0x09, 0x0a, 0x0b, 0x0e][rng.gen_range(0..8)]] ^= 0x5a,
                1 => cfg.truncate(rng.gen_range(0..cfg.len())),
                _ => cfg.push(0),
            }
            if cfg.is_empty() {
                cfg.push(0);
            }
            refused(
                "another function's config space",
                Forge::valid(&p.version).finish(&recs),
            )
        }
        13 => {
            let mut recs = p.records.clone();
            let data = vec![0xa5u8; rng.gen_range(1..64)];
            let at = match rng.gen_range(0..4) {
                0 => size as u64,
                1 => (size - data.len() + 1) as u64,
                2 => u64::MAX - rng.gen_range(0..64),
                _ => rng.gen_range(size as u64..u64::MAX),
            };
            recs.insert(rng.gen_range(0..n), mem_record(at, &data));
            refused(
                "memory past the device",
                Forge::valid(&p.version).finish(&recs),
            )
        }
        14 => {
            // Empty records, and one longer than the largest the device
            // takes (its real payload with it).
            let mut f = Forge::valid(&p.version);
            let at = rng.gen_range(0..n);
            let mut total = f.records(&p.records[..at]);
            if rng.gen_bool(0.5) {
                f.record(KIND_DATA, TAG_MEM, &[]);
            } else {
                let big = vec![0u8; SAMPLE_MAX_RECORD + rng.gen_range(1..4096)];
                f.record(KIND_DATA, TAG_MEM, &big);
                total += big.len() as u64;
            }
            total += f.records(&p.records[at..]);
            f.end(total);
            refused("an empty or oversized record", f.out)
        }
        15 => {
            let mut f = Forge::valid(&p.version);
            let total = f.records(&p.records);
            let lie = match rng.gen_range(0..3) {
                0 => total + 1,
                1 => total - 1,
                _ => rng.gen(),
            };
            f.end(if lie == total { total + 1 } else { lie });
            refused("an END that lies", f.out)
        }
        16 => {
            let mut f = Forge::valid(&p.version);
            let total = f.records(&p.records);
            f.end(total);
            match rng.gen_range(0..3) {
                0 => f.record(KIND_DATA, TAG_MEM, &[0; 16]),
                1 => f.end(0),
                _ => f.out.push(rng.gen()),
            }
            refused("records after the END", f.out)
        }
        17 => {
            // The registers before memory: the sample takes no memory after
            // its registers.
            let mut recs = p.records.clone();
            if let Some(i) = recs.iter().position(|r| r.1 == TAG_REGS) {
                let regs = recs.remove(i);
                recs.insert(0, regs);
            }
            refused(
                "registers before memory",
                Forge::valid(&p.version).finish(&recs),
            )
        }
        18 => {
            // The memory records in another order: same memory.
            let mut recs = p.records.clone();
            let mems: Vec<usize> = (0..n).filter(|&i| recs[i].1 == TAG_MEM).collect();
            for k in (1..mems.len()).rev() {
                let j = rng.gen_range(0..=k);
                recs.swap(mems[k], mems[j]);
            }
            let bytes = Forge::valid(&p.version).finish(&recs);
            Case {
                class: "memory records reordered",
                bytes,
                expect: Expect::Loads,
                mem: mem_of(&recs),
            }
        }
        _ => {
            // Memory records rewritten: other bytes at other in-range
            // offsets, some overlapping.
            let mut recs: Vec<_> = p
                .records
                .iter()
                .filter(|r| r.1 != TAG_MEM)
                .cloned()
                .collect();
            let mut mems = Vec::new();
            for _ in 0..rng.gen_range(1..6) {
                let len = rng.gen_range(1..=1024);
                let at = rng.gen_range(0..=size - len);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                mems.push(mem_record(at as u64, &data));
            }
            let regs = recs
                .iter()
                .position(|r| r.1 == TAG_REGS)
                .unwrap_or(recs.len());
            for (k, m) in mems.iter().enumerate() {
                recs.insert(regs + k, m.clone());
            }
            let bytes = Forge::valid(&p.version).finish(&recs);
            Case {
                class: "memory records rewritten",
                bytes,
                expect: Expect::Loads,
                mem: mem_of(&mems),
            }
        }
    }
}

/// What the cases of a stream campaign came to: per class, how many ran
/// and the errnos of their refusals.
#[derive(Default)]
struct Tally(BTreeMap<&'static str, (usize, BTreeMap<i32, usize>)>);

impl Tally {
    /// Counts `case`'s outcome: an error if it is not what the case
    /// expects (a refusal with one of [`REFUSALS`], or a load).
    fn record(&mut self, case: &Case, outcome: Result<(), i32>) -> TestResult {
        let entry = self.0.entry(case.class).or_default();
        entry.0 += 1;
        match (case.expect, outcome) {
            (Expect::Refused, Err(errno)) if REFUSALS.contains(&errno) => {
                *entry.1.entry(errno).or_default() += 1;
                Ok(())
            }
            (_, Err(errno)) => Err(format!("refused with {}", super::errno_name(errno))),
            (Expect::Refused, Ok(())) => Err("loaded".into()),
            (Expect::Loads, Ok(())) => Ok(()),
        }
    }

    /// Prints a line per class: its count and its refusals' errnos.
    fn print(&self) {
        for (class, (n, errnos)) in &self.0 {
            let errnos: Vec<String> = errnos
                .iter()
                .map(|(e, k)| format!("{}x{k}", errno_short(*e)))
                .collect();
            println!("    {n:5} {class} {}", errnos.join(" "));
        }
    }
}

/// Resets `dev`, which must then be in RUNNING.
fn reset_to_running(dev: &Device) -> TestResult {
    ctx(dev.reset(), "reset")?;
    let state = ctx(dev.state(), "GET")?;
    if state != State::Running.raw() {
        return Err(format!("state {state} after reset, not RUNNING"));
    }
    Ok(())
}

/// Writes `bytes` into a new resume session of `dev` in random pieces and
/// asks for STOP: `Ok(())` if it loaded, else the errno of the refusal.
pub(crate) fn run_case(
    rng: &mut StdRng,
    dev: &Device,
    bytes: &[u8],
) -> Result<Result<(), i32>, String> {
    let fd = ctx(dev.set_state(State::Resuming.raw()), "SET RESUMING")?.ok_or("no resume FD")?;
    let mut at = 0;
    while at < bytes.len() {
        let n = rng.gen_range(1..=8192).min(bytes.len() - at);
        match vfio::write_fd(&fd, &bytes[at..at + n]) {
            Ok(0) => return Err("a write took nothing".into()),
            Ok(k) => at += k,
            Err(e) => return Ok(Err(e.raw_os_error().unwrap_or(0))),
        }
    }
    Ok(dev
        .set_state(State::Stop.raw())
        .map(|_| ())
        .map_err(|e| e.raw_os_error().unwrap_or(0)))
}

/// `stream-campaign SEED COUNT`.
pub(crate) fn stream_campaign(seed: &str, count: &str) -> TestResult {
    let seed: u64 = seed.parse().map_err(|e| format!("seed: {e}"))?;
    let count: usize = count.parse().map_err(|e| format!("count: {e}"))?;
    let start = Instant::now();
    let param = "/sys/module/rmdev_sample/parameters/max_record";
    let max_record = ctx(std::fs::read_to_string(param), param)?;
    if max_record.trim() != "0" {
        return Err(format!(
            "{param} is {}: the campaign needs 0",
            max_record.trim()
        ));
    }
    let (ty, size) = TYPES[0];
    let (ms, mt, mo) = (
        Mdev::create(ty)?,
        Mdev::create(ty)?,
        Mdev::create(TYPES[1].0)?,
    );
    let (src, dst, other) = (ms.open()?, mt.open()?, mo.open()?);
    let mut rng = StdRng::seed_from_u64(seed);
    let fill: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
    ctx(src.write_at(vfio::BAR2, 0, &fill), "fill the source")?;
    let save = |dev: &Device| -> Result<Vec<u8>, String> {
        let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no save FD")?;
        let mut out = Vec::new();
        super::read_to_eof(&fd, &mut out)?;
        ctx(dev.set_state(State::Running.raw()), "SET RUNNING")?;
        Ok(out)
    };
    let good = save(&src)?;
    let foreign = save(&other)?;
    let parsed = parse(&good)?;
    let mut tally = Tally::default();
    for i in 0..count {
        let case = make_case(&mut rng, Vendor::Sample, &good, &parsed, &foreign, size);
        let fail = |what: String| format!("seed {seed} case {i} ({}): {what}", case.class);
        let mut model = match case.expect {
            Expect::Loads => read_memory(&dst, size).map_err(fail)?,
            Expect::Refused => Vec::new(),
        };
        let outcome = run_case(&mut rng, &dst, &case.bytes).map_err(fail)?;
        tally.record(&case, outcome).map_err(fail)?;
        if case.expect == Expect::Loads {
            for (off, data) in &case.mem {
                model[*off..*off + data.len()].copy_from_slice(data);
            }
            let got = read_memory(&dst, size).map_err(fail)?;
            if got != model {
                let at = got
                    .iter()
                    .zip(&model)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(fail(format!(
                    "memory differs from the stream's at byte {at}"
                )));
            }
        }
        reset_to_running(&dst).map_err(fail)?;
    }
    // Usable afterwards: the valid stream loads and the memory is the
    // source's.
    super::resume(&dst, &good, 65536)?;
    if read_memory(&dst, size)? != fill {
        return Err(format!(
            "seed {seed}: the valid stream after the campaign: memory differs"
        ));
    }
    let secs = start.elapsed().as_secs_f64();
    println!("  stream campaign: seed {seed}, {count} streams in {secs:.1} s");
    tally.print();
    Ok(())
}

/// The random argument of one ioctl: `buf` (random bytes, its first word
/// an `argsz` near the interesting sizes), or a pointer that is not the
/// caller's memory.
fn random_arg(rng: &mut StdRng, buf: &mut [u8]) -> libc::c_ulong {
    rng.fill(buf);
    let argsz: u32 = match rng.gen_range(0..8) {
        0 => 0,
        1 => rng.gen_range(1..32),
        2 => 8,
        3 => 16,
        4 => 32,
        5 => buf.len() as u32,
        6 => u32::MAX,
        _ => rng.gen(),
    };
    buf[..4].copy_from_slice(&argsz.to_le_bytes());
    match rng.gen_range(0..40) {
        0 => 0,
        1 => 1,
        2 => u64::MAX as libc::c_ulong,
        _ => buf.as_mut_ptr() as libc::c_ulong,
    }
}

/// What `random_call` returns when it chose a data FD and there was none.
const NO_CALL: i32 = -1;

/// One random call by a thread of the ioctl campaign: on the device FD, or
/// on one of the data FDs the campaign got so far. Returns the errno (0 for
/// success; closing a data FD counts as one).
fn random_call(
    rng: &mut StdRng,
    dev: &Device,
    efds: &[i32],
    data: &std::sync::Mutex<Vec<std::os::fd::OwnedFd>>,
) -> i32 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut buf = vec![0u8; 4096];
    let errno = |r: std::io::Result<i32>| r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
    if rng.gen_range(0..4) == 0 {
        // A data FD: the lock is held through the call, so no other thread
        // closes it (and no number is reused) meanwhile.
        let mut fds = data.lock().unwrap_or_else(|e| e.into_inner());
        if fds.is_empty() {
            return NO_CALL;
        }
        let i = rng.gen_range(0..fds.len());
        let fd = fds[i].as_raw_fd();
        let r = match rng.gen_range(0..6) {
            0 => {
                let arg = random_arg(rng, &mut buf);
                // SAFETY: The argument is this thread's buffer or an address
                // the kernel must refuse.
                errno(unsafe { vfio::ioctl(fd, vfio::MIG_GET_PRECOPY_INFO, arg) })
            }
            1 => {
                let arg = random_arg(rng, &mut buf);
                let req = (u64::from(b';') << 8) | rng.gen_range(0..32);
                // SAFETY: As above.
                errno(unsafe { vfio::ioctl(fd, req, arg) })
            }
            2 => {
                let n = rng.gen_range(0..buf.len());
                // SAFETY: `buf` has room for `n` bytes.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), n) };
                if r < 0 {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
                } else {
                    0
                }
            }
            3 => {
                let n = rng.gen_range(0..buf.len());
                rng.fill(&mut buf[..n]);
                // SAFETY: `buf` holds `n` bytes.
                let r = unsafe { libc::write(fd, buf.as_ptr().cast(), n) };
                if r < 0 {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
                } else {
                    0
                }
            }
            4 => errno(vfio::poll_fd(fd, libc::POLLIN | libc::POLLOUT, 0).map(i32::from)),
            _ => {
                drop(fds.swap_remove(i));
                0
            }
        };
        return r;
    }
    let req = match rng.gen_range(0..10) {
        0 => vfio::DEVICE_GET_INFO,
        1 => vfio::DEVICE_GET_REGION_INFO,
        2 => vfio::DEVICE_GET_IRQ_INFO,
        3 | 4 => vfio::DEVICE_SET_IRQS,
        5 => vfio::DEVICE_RESET,
        6..=8 => vfio::DEVICE_FEATURE,
        _ => (u64::from(b';') << 8) | rng.gen_range(0..32),
    };
    let arg = random_arg(rng, &mut buf);
    let own = arg == buf.as_mut_ptr() as libc::c_ulong;
    let mut mig_state = false;
    if own && req == vfio::DEVICE_SET_IRQS && rng.gen_bool(0.7) {
        // Plausible headers: small indexes, counts and starts, real
        // eventfds (and -1, and numbers that are not eventfds).
        let flags = (1u32 << rng.gen_range(0..3)) | (1u32 << rng.gen_range(3..6));
        let words = [
            flags,
            rng.gen_range(0..6),
            rng.gen_range(0..3),
            rng.gen_range(0..3),
        ];
        for (k, w) in words.iter().enumerate() {
            buf[4 + 4 * k..8 + 4 * k].copy_from_slice(&w.to_le_bytes());
        }
        for k in 0..4 {
            let fd = match rng.gen_range(0..4) {
                0 => -1,
                1 => rng.gen_range(0..64),
                _ => efds[rng.gen_range(0..efds.len())],
            };
            buf[20 + 4 * k..24 + 4 * k].copy_from_slice(&fd.to_le_bytes());
        }
    }
    if own && req == vfio::DEVICE_FEATURE && rng.gen_bool(0.7) {
        let feature = match rng.gen_range(0..4) {
            0 => vfio::FEATURE_MIGRATION,
            1 => vfio::FEATURE_MIG_DATA_SIZE,
            2 => vfio::FEATURE_MIG_DEVICE_STATE,
            _ => rng.gen_range(0..16),
        };
        let op = [vfio::FEATURE_GET, vfio::FEATURE_SET, vfio::FEATURE_PROBE][rng.gen_range(0..3)];
        let op = if rng.gen_bool(0.1) {
            op | vfio::FEATURE_SET
        } else {
            op
        };
        buf[4..8].copy_from_slice(&(feature | op).to_le_bytes());
        if feature == vfio::FEATURE_MIG_DEVICE_STATE {
            buf[..4].copy_from_slice(&16u32.to_le_bytes());
            buf[8..12].copy_from_slice(&rng.gen_range(0u32..10).to_le_bytes());
            buf[12..16].copy_from_slice(&(-1i32).to_le_bytes());
            mig_state = op & vfio::FEATURE_SET != 0;
        }
    }
    // SAFETY: The argument is this thread's buffer or an address the kernel
    // must refuse; `buf` lives until the call returns.
    let r = errno(unsafe { vfio::ioctl(dev.raw(), req, arg) });
    if r == 0 && mig_state {
        let fd = i32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
        if fd >= 0 {
            // SAFETY: A SET that succeeded returned a new data FD, ours.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut fds = data.lock().unwrap_or_else(|e| e.into_inner());
            fds.push(fd);
            if fds.len() > 8 {
                drop(fds.remove(0));
            }
        }
    }
    r
}

/// `ioctl-campaign SEED COUNT [vf DEV-UUID DEV-PCI OTHER-UUID]`: COUNT
/// random ioctls, reads and writes from each of 4 threads at once on one
/// device FD and on the data FDs they open. Every call must answer (an
/// errno or success). Afterwards, for the sample: the device must reset to
/// RUNNING, keep its memory (no call may write it) and migrate. For the VF
/// vendor (`vf`, on the mdev DEV-UUID of the VF DEV-PCI): the device must
/// reset to RUNNING, the VF's own BAR0 must have no denied bit set and its
/// doorbells untouched (`vf_hw_check`), and the mdev OTHER-UUID must then
/// migrate into it.
pub(crate) fn ioctl_campaign(seed: &str, count: &str, vf: Option<[&str; 3]>) -> TestResult {
    let seed: u64 = seed.parse().map_err(|e| format!("seed: {e}"))?;
    let count: usize = count.parse().map_err(|e| format!("count: {e}"))?;
    let start = Instant::now();
    let fail = |what: String| format!("seed {seed}: after the ioctl campaign: {what}");
    let total = if let Some([uuid, pci, other]) = vf {
        let dev = ctx(Device::open(uuid), &format!("open {uuid}"))?;
        let hw = super::igbvf::HwBar::map(pci)?;
        let tails = vf_tails(&hw)?;
        let total = hammer_ioctls(seed, count, &dev)?;
        reset_to_running(&dev).map_err(fail)?;
        vf_hw_check(&hw, &tails).map_err(fail)?;
        let src = ctx(Device::open(other), &format!("open {other}"))?;
        rmdev::migrate::migrate(
            &src,
            &dev,
            &rmdev::migrate::Options::default(),
            &rmdev::migrate::NoProgress,
        )
        .map_err(|e| fail(format!("a migration into the device: {e}")))?;
        total
    } else {
        let (ty, size) = TYPES[0];
        let (ms, mt) = (Mdev::create(ty)?, Mdev::create(ty)?);
        let (dev, dst) = (ms.open()?, mt.open()?);
        let fill: Vec<u8> = (0..size).map(|i| (i * 7 + seed as usize) as u8).collect();
        ctx(dev.write_at(vfio::BAR2, 0, &fill), "fill")?;
        let total = hammer_ioctls(seed, count, &dev)?;
        reset_to_running(&dev).map_err(fail)?;
        if read_memory(&dev, size).map_err(fail)? != fill {
            return Err(fail("the device memory changed".into()));
        }
        // The save writes the device between pre-copy rounds: the target
        // must hold what the source held at the end.
        let stream = super::save(&dev, super::flag_set(7)?, size).map_err(fail)?;
        super::resume(&dst, &stream, 65536).map_err(fail)?;
        if read_memory(&dst, size).map_err(fail)? != read_memory(&dev, size).map_err(fail)? {
            return Err(fail(
                "a migration afterwards: the target's memory differs".into(),
            ));
        }
        total
    };
    let calls: usize = total.values().sum();
    let secs = start.elapsed().as_secs_f64();
    let answers: Vec<String> = total
        .iter()
        .map(|(e, n)| {
            let name = if *e == 0 {
                "ok".to_string()
            } else {
                super::errno_name(*e)
            };
            format!("{name}: {n}")
        })
        .collect();
    println!(
        "  ioctl campaign{}: seed {seed}, {calls} calls from {IOCTL_THREADS} threads in {secs:.1} s",
        vf.map_or(String::new(), |[u, p, _]| format!(" (VF mdev {u} on {p})"))
    );
    println!("    {}", answers.join("; "));
    Ok(())
}

/// The threads of the ioctl campaign.
const IOCTL_THREADS: u64 = 4;

/// The ioctl campaign's calls on `dev`: COUNT from each thread; the count
/// of each answer (0 for success).
fn hammer_ioctls(seed: u64, count: usize, dev: &Device) -> Result<BTreeMap<i32, usize>, String> {
    use std::os::fd::AsRawFd;
    let efds = (0..3)
        .map(|_| super::new_eventfd())
        .collect::<Result<Vec<_>, _>>()?;
    let efd_nums: Vec<i32> = efds.iter().map(|e| e.as_raw_fd()).collect();
    let data = std::sync::Mutex::new(Vec::new());
    let tallies = std::thread::scope(|s| {
        let handles: Vec<_> = (0..IOCTL_THREADS)
            .map(|t| {
                let (efd_nums, data) = (&efd_nums, &data);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed ^ (t << 56));
                    let mut tally: BTreeMap<i32, usize> = BTreeMap::new();
                    let mut calls = 0;
                    while calls < count {
                        let r = random_call(&mut rng, dev, efd_nums, data);
                        if r != NO_CALL {
                            *tally.entry(r).or_default() += 1;
                            calls += 1;
                        }
                    }
                    tally
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a campaign thread panicked".to_string())
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    drop(data);
    let mut total: BTreeMap<i32, usize> = BTreeMap::new();
    for t in tallies {
        for (e, n) in t {
            *total.entry(e).or_default() += n;
        }
    }
    Ok(total)
}

/// `Slab` and `VmallocUsed` of /proc/meminfo, in KiB, after the releases
/// the debug kernel delays by up to 4 s ran.
fn kernel_memory() -> Result<(u64, u64), String> {
    std::thread::sleep(std::time::Duration::from_secs(6));
    let text = ctx(std::fs::read_to_string("/proc/meminfo"), "/proc/meminfo")?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/meminfo has no {name}"))
    };
    Ok((field("Slab:")?, field("VmallocUsed:")?))
}

/// One cycle: an mdev of each of the types at `dirs` created, both
/// opened, the first migrated into the second (the rmdev tool's engine) if
/// it migrates, closed and removed.
fn cycle(dirs: [&str; 2]) -> TestResult {
    let uuids = [super::new_uuid(), super::new_uuid()];
    for (u, dir) in uuids.iter().zip(dirs) {
        ctx(
            std::fs::write(format!("{dir}/create"), u),
            &format!("create in {dir}"),
        )?;
    }
    let result = (|| -> TestResult {
        let s = ctx(Device::open(&uuids[0]), "open")?;
        let d = ctx(Device::open(&uuids[1]), "open")?;
        if s.migration_flags().is_ok() {
            rmdev::migrate::migrate(
                &s,
                &d,
                &rmdev::migrate::Options::default(),
                &rmdev::migrate::NoProgress,
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })();
    for u in &uuids {
        ctx(
            std::fs::write(format!("/sys/bus/mdev/devices/{u}/remove"), "1"),
            &format!("remove {u}"),
        )?;
    }
    result
}

/// `cycles SRC-TYPE-DIR DST-TYPE-DIR N`: N cycles (`cycle`) after 5 to
/// warm the caches up.
/// Prints the kernel's slab and vmalloc use before and after
/// (`kernel_memory`). Vmalloc growing by more than 128 KiB fails (a page
/// a cycle over 40 cycles; in the lab it moves by 0 to -32 KiB). Slab is
/// only printed: in the lab's KASAN kernel it includes the freed objects
/// KASAN keeps in quarantine (up to 1/32 of the memory, 128 MiB in the lab
/// VM), so it grows with any activity until that fills. Leaks are
/// kmemleak's to find, exactly, at the end of every lab run.
pub(crate) fn cycles(src: &str, dst: &str, n: &str) -> TestResult {
    let dirs = [src, dst];
    let n: usize = n.parse().map_err(|e| format!("count: {e}"))?;
    let start = Instant::now();
    for _ in 0..5 {
        cycle(dirs)?;
    }
    let before = kernel_memory()?;
    for i in 0..n {
        cycle(dirs).map_err(|e| format!("cycle {i}: {e}"))?;
    }
    let after = kernel_memory()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  {n} create/open/migrate/close/remove cycles ({src} to {dst}) in {secs:.1} s: \
         slab {} -> {} KiB, vmalloc {} -> {} KiB",
        before.0, after.0, before.1, after.1
    );
    let grew = after.1.saturating_sub(before.1);
    if grew > 128 {
        return Err(format!("vmalloc use grew by {grew} KiB over {n} cycles"));
    }
    Ok(())
}

/// rmdev_igbvf's record (vendors/igbvf.rs, its stream format): tag 1, a
/// `u32` count, then (offset, value) pairs of `u32`, in the vendor's order.
const VF_TAG_REGS: u16 = 1;
/// The VF's largest record (the framework's default `max_record`).
const VF_MAX_RECORD: usize = 4096;
/// Registers no stream may make the VF vendor write: the queue tails
/// (doorbells) of both queues, from the 82576 datasheet. The vendor rings
/// queue 0's itself for its own rings, but only while the user's queue
/// runs on a running device, which no case here lets happen (a case ends
/// stopped, and the reset after it clears the user's queues).
const VF_TAILS: [u64; 4] = [0x2818, 0x2918, 0x3818, 0x3918];
/// Bits the VF vendor must never set in the hardware, from the 82576
/// datasheet: RXDCTL/TXDCTL queue enable (bit 25), TDWBAL head write-back
/// enable (bit 0), IVAR0 but the vendor's own routing (its receive and
/// transmit queue 0 to vector 0, 0x8080) and the mailbox's IVAR. Queue
/// 0's enables are the vendor's own (its rings of bounce buffers), set
/// only while the user's queue is enabled and the device runs: they are
/// checked when it does not (after a load the device is stopped, after a
/// reset the user's queues are off), where they must be clear too.
const VF_DENIED: [(u64, u32); 8] = [
    (0x2828, 1 << 25),
    (0x2928, 1 << 25),
    (0x3828, 1 << 25),
    (0x3928, 1 << 25),
    (0x3838, 1),
    (0x3938, 1),
    (0x1700, !0x8080),
    (0x1740, 0x80),
];

/// The VF's doorbells (`VF_TAILS`) as its own BAR0 has them.
fn vf_tails(hw: &super::igbvf::HwBar) -> Result<Vec<u32>, String> {
    VF_TAILS.iter().map(|&t| hw.read(t)).collect()
}

/// The VF's own BAR0 has no bit of `VF_DENIED` set, and its doorbells are
/// still `tails` (`vf_tails` before).
fn vf_hw_check(hw: &super::igbvf::HwBar, tails: &[u32]) -> TestResult {
    for &(off, deny) in &VF_DENIED {
        let v = hw.read(off)?;
        if v & deny != 0 {
            return Err(format!(
                "the VF's register {off:#x} is {v:#010x}: denied bits {deny:#x} set"
            ));
        }
    }
    for (&t, &was) in VF_TAILS.iter().zip(tails) {
        let v = hw.read(t)?;
        if v != was {
            return Err(format!(
                "the VF's doorbell {t:#x} went from {was:#010x} to {v:#010x}"
            ));
        }
    }
    Ok(())
}

/// The VF vendor's register record with `values` at the good stream's
/// offsets (`regs`, its payload).
fn vf_regs(regs: &[u8], mut values: impl FnMut(usize) -> u32) -> Vec<u8> {
    let mut out = regs.to_vec();
    for (i, pair) in out[4..].chunks_exact_mut(8).enumerate() {
        pair[4..].copy_from_slice(&values(i).to_le_bytes());
    }
    out
}

/// The VF-specific classes of `make_case`.
fn vf_case(rng: &mut StdRng, class: usize, p: &Parsed) -> Case {
    let Some(ri) = p.records.iter().position(|r| r.1 == VF_TAG_REGS) else {
        return refused("truncated", Vec::new());
    };
    let regs = p.records[ri].2.clone();
    let pairs = (regs.len() - 4) / 8;
    let forge = |recs: &[(u16, u16, Vec<u8>)]| Forge::valid(&p.version).finish(recs);
    let with = |payload: Vec<u8>| {
        let mut recs = p.records.clone();
        recs[ri].2 = payload;
        recs
    };
    match class {
        13 => {
            // An offset the vendor does not forward: a doorbell, the
            // device control register, the mailbox, or any.
            let mut bad = regs.clone();
            let i = rng.gen_range(0..pairs);
            let off: u32 =
                [0x2818, 0x3818, 0x0000, 0x0c40, rng.gen::<u32>() & !3][rng.gen_range(0..5)];
            bad[4 + 8 * i..8 + 8 * i].copy_from_slice(&off.to_le_bytes());
            if bad == regs {
                bad[4] ^= 4;
            }
            Case {
                class: "a register not forwarded",
                bytes: forge(&with(bad)),
                expect: Expect::Refused,
                mem: Vec::new(),
            }
        }
        14 => {
            let payload = if rng.gen_bool(0.5) {
                Vec::new()
            } else {
                vec![0u8; VF_MAX_RECORD + rng.gen_range(1..4096)]
            };
            let mut recs = p.records.clone();
            recs.insert(
                rng.gen_range(0..=recs.len()),
                (KIND_DATA, VF_TAG_REGS, payload),
            );
            refused("an empty or oversized record", forge(&recs))
        }
        17 => {
            let recs = match rng.gen_range(0..4) {
                // A count that is not the vendor's.
                0 => {
                    let mut bad = regs.clone();
                    let c = pairs as u32 + rng.gen_range(1..4);
                    bad[..4].copy_from_slice(&c.to_le_bytes());
                    with(bad)
                }
                // A record one pair short, or one pair long.
                1 => with(regs[..regs.len() - 8].to_vec()),
                2 => {
                    let mut long = regs.clone();
                    long.extend_from_slice(&regs[4..12]);
                    with(long)
                }
                // The registers twice, or not at all.
                _ => {
                    let mut recs = p.records.clone();
                    if rng.gen_bool(0.5) {
                        recs.insert(ri, recs[ri].clone());
                    } else {
                        recs.remove(ri);
                    }
                    recs
                }
            };
            refused("a register record of the wrong shape", forge(&recs))
        }
        18 => Case {
            class: "registers of random values",
            bytes: forge(&with(vf_regs(&regs, |_| rng.gen()))),
            expect: Expect::Loads,
            mem: Vec::new(),
        },
        _ => match rng.gen_range(0..9) {
            0 => Case {
                class: "registers all ones",
                bytes: forge(&with(vf_regs(&regs, |_| u32::MAX))),
                expect: Expect::Loads,
                mem: Vec::new(),
            },
            kind @ 1..=3 => vf_tx_case(rng, kind, p),
            kind @ 4..=6 => vf_rx_case(rng, kind - 3, p),
            kind => vf_small_record_case(rng, kind == 7, p),
        },
    }
}

/// rmdev_igbvf's transmit-queue record (vendors/igbvf/tx.rs): tag 2, nine
/// `u32`: TDBAL, TDBAH, TDLEN, TDH, TXCTL, TDT, TXDCTL, TDWBAL, TDWBAH.
const VF_TAG_TX: u16 = 2;

/// The queue record as `words`.
fn vf_tx_record(words: &[u32; 9]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Forged transmit-queue records: values a user could not have written
/// (from the 82576 datasheet: TDLEN a multiple of 128, TDBAL 128-byte
/// aligned, TXDCTL's reserved bits clear, head and tail inside the ring)
/// or the record missing or twice, refused; a ring a user could have
/// programmed, loaded.
fn vf_tx_case(rng: &mut StdRng, kind: usize, p: &Parsed) -> Case {
    let forge = |recs: &[(u16, u16, Vec<u8>)]| Forge::valid(&p.version).finish(recs);
    let Some(ti) = p.records.iter().position(|r| r.1 == VF_TAG_TX) else {
        return refused("truncated", Vec::new());
    };
    let descs = rng.gen_range(1..=4096u32) * 8;
    let mut w = [
        rng.gen::<u32>() & !0x7f,
        rng.gen(),
        descs * 16,
        rng.gen_range(0..descs),
        rng.gen(),
        rng.gen_range(0..descs),
        (1 << 25) | (rng.gen::<u32>() & 0x003f_3f3f),
        rng.gen(),
        rng.gen(),
    ];
    let mut recs = p.records.clone();
    if kind == 1 {
        recs[ti].2 = vf_tx_record(&w);
        return Case {
            class: "a transmit ring a user could program",
            bytes: forge(&recs),
            expect: Expect::Loads,
            mem: Vec::new(),
        };
    }
    if kind == 2 {
        match rng.gen_range(0..5) {
            0 => w[0] |= rng.gen_range(1..0x80),
            1 => w[2] |= rng.gen_range(1..0x80),
            2 => w[3] = descs + rng.gen_range(0..1000),
            3 => w[5] = descs + rng.gen_range(0..1000),
            _ => w[6] |= 1 << rng.gen_range(26..32),
        }
        recs[ti].2 = vf_tx_record(&w);
    } else if rng.gen_bool(0.5) {
        recs.insert(ti, recs[ti].clone());
    } else {
        recs.remove(ti);
    }
    refused("a transmit ring no user could program", forge(&recs))
}

/// rmdev_igbvf's receive-queue record (vendors/igbvf.rs, data format 4):
/// tag 5, seven `u32`: RDBAL, RDBAH, RDLEN, SRRCTL, RDH, RDT, RXDCTL.
const VF_TAG_RX: u16 = 5;
/// The bits of each a user can set (82576 datasheet): RDBAL 128-byte
/// aligned, RDBAH any, RDLEN a multiple of 128 below 1 MiB, SRRCTL's
/// defined fields, RDH and RDT 16 bits, RXDCTL's enable (bit 25) and
/// thresholds.
const VF_RX_MASKS: [u32; 7] = [
    !0x7f,
    u32::MAX,
    0x000f_ff80,
    0x8e00_0f7f,
    0xffff,
    0xffff,
    (1 << 25) | 0x001f_1f1f,
];

/// Forged receive-queue records, like the transmit queue's (`vf_tx_case`):
/// a bit no user could set, a head or tail outside the ring (or not 0 in
/// no ring), a ring whose end is past 2^64, or the record missing or
/// twice, refused; a ring a user could have programmed, enabled or not,
/// loaded (the target starts stopped, so its hardware queue stays off).
fn vf_rx_case(rng: &mut StdRng, kind: usize, p: &Parsed) -> Case {
    let forge = |recs: &[(u16, u16, Vec<u8>)]| Forge::valid(&p.version).finish(recs);
    let Some(ri) = p.records.iter().position(|r| r.1 == VF_TAG_RX) else {
        return refused("truncated", Vec::new());
    };
    let descs = rng.gen_range(1..=4096u32) * 8;
    // RDBAH below all ones: the ring cannot end past 2^64.
    let mut w = [
        rng.gen::<u32>(),
        rng.gen_range(0..u32::MAX),
        descs * 16,
        rng.gen(),
        rng.gen_range(0..descs),
        rng.gen_range(0..descs),
        rng.gen(),
    ];
    for (v, m) in w.iter_mut().zip(VF_RX_MASKS) {
        *v &= m;
    }
    let record = |w: &[u32; 7]| w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let mut recs = p.records.clone();
    if kind == 1 {
        recs[ri].2 = record(&w);
        return Case {
            class: "a receive ring a user could program",
            bytes: forge(&recs),
            expect: Expect::Loads,
            mem: Vec::new(),
        };
    }
    if kind == 2 {
        match rng.gen_range(0..5) {
            0 => {
                // A bit a user cannot set (RDBAH takes any value).
                let i = [0, 2, 3, 4, 5, 6][rng.gen_range(0..6)];
                let outside: Vec<u32> = (0..32)
                    .filter(|b| !VF_RX_MASKS[i] & (1 << b) != 0)
                    .collect();
                w[i] |= 1 << outside[rng.gen_range(0..outside.len())];
            }
            1 => w[4] = descs + rng.gen_range(0..1000),
            2 => w[5] = descs + rng.gen_range(0..1000),
            3 => {
                // No ring (RDLEN 0): only 0 is inside it.
                w[2] = 0;
                w[4 + rng.gen_range(0..2)] = rng.gen_range(1..=0xffff);
            }
            _ => {
                // A ring from 128-byte steps below 2^64 and longer than
                // them: its end is past 2^64 (whether the vendor checks
                // the end or the last byte).
                w[1] = u32::MAX;
                w[0] = 0u32.wrapping_sub(rng.gen_range(1..=descs / 8) * 128);
                w[2] = (descs + 8) * 16;
            }
        }
        recs[ri].2 = record(&w);
    } else if rng.gen_bool(0.5) {
        recs.insert(ri, recs[ri].clone());
    } else {
        recs.remove(ri);
    }
    refused("a receive ring no user could program", forge(&recs))
}

/// rmdev_igbvf's interrupt record (vendors/igbvf/intr.rs): tag 3, six
/// `u32`: EICR, EIMS, EIAC, EIAM, IVAR0, IVAR_MISC.
const VF_TAG_INTR: u16 = 3;
/// Its user-mailbox record (vendors/igbvf/user_mailbox.rs): tag 4, the 16
/// buffer words, then V2PMAILBOX's VFU, PFSTS and PFACK with the vendor's
/// bits 16 (a request waits) and 17 (replies carry CTS).
const VF_TAG_MBX: u16 = 4;

/// Forged interrupt or mailbox records (`rng` picks): values a user could
/// program (from the 82576 datasheet: a bit per vector, 0 to 2, in the
/// cause and mask registers; IVAR entries of a vector number, bits 1:0,
/// and a valid bit 7; any buffer words, and the mailbox bits VFU (2),
/// PFSTS (4), PFACK (5), 16 and 17) load (`good`); one bit beyond them, or the record
/// missing or twice, is refused.
fn vf_small_record_case(rng: &mut StdRng, good: bool, p: &Parsed) -> Case {
    let forge = |recs: &[(u16, u16, Vec<u8>)]| Forge::valid(&p.version).finish(recs);
    let (tag, masks) = if rng.gen_bool(0.5) {
        (VF_TAG_INTR, vec![0x7u32, 0x7, 0x7, 0x7, 0x8383_8383, 0x83])
    } else {
        let mut m = vec![u32::MAX; 16];
        m.push(0x0003_0034);
        (VF_TAG_MBX, m)
    };
    let Some(ii) = p.records.iter().position(|r| r.1 == tag) else {
        return refused("truncated", Vec::new());
    };
    let mut w: Vec<u32> = masks.iter().map(|m| rng.gen::<u32>() & m).collect();
    let mut recs = p.records.clone();
    if good {
        recs[ii].2 = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        return Case {
            class: "interrupt or mailbox registers a user could program",
            bytes: forge(&recs),
            expect: Expect::Loads,
            mem: Vec::new(),
        };
    }
    match rng.gen_range(0..3) {
        0 => {
            // A word with bits a user cannot set (the buffer's words take
            // any value).
            let i = if tag == VF_TAG_MBX {
                w.len() - 1
            } else {
                rng.gen_range(0..w.len())
            };
            let outside: Vec<u32> = (0..32).filter(|b| !masks[i] & (1 << b) != 0).collect();
            w[i] |= 1 << outside[rng.gen_range(0..outside.len())];
            recs[ii].2 = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        }
        1 => {
            recs.insert(ii, recs[ii].clone());
        }
        _ => {
            recs.remove(ii);
        }
    }
    refused(
        "interrupt or mailbox registers no user could program",
        forge(&recs),
    )
}

/// Receive queue 0's registers in its record's order (`VF_TAG_RX`).
const VF_RX_REGS: [u64; 7] = [0x2800, 0x2804, 0x2808, 0x280c, 0x2810, 0x2818, 0x2828];
/// What the source's receive queue is programmed with: a ring of 16
/// descriptors at 0x1000, 1 KiB buffers, head 3, tail 5, disabled.
const VF_RX_SOURCE: [u32; 7] = [0x1000, 0, 0x100, 0x0200_0001, 3, 5, 0];
/// The vendor's records in a stream of data format 4, after the
/// framework's: tag and length (registers: a count and 17 pairs, receive
/// queue 1, transmit queue 1, EITR0 to EITR2; the mailbox: 17 words).
const VF_RECORDS: [(u16, usize); 5] = [
    (VF_TAG_REGS, 4 + 17 * 8),
    (VF_TAG_TX, 9 * 4),
    (VF_TAG_RX, 7 * 4),
    (VF_TAG_INTR, 6 * 4),
    (VF_TAG_MBX, 17 * 4),
];

/// The source's stream is the format the campaign forges from: its
/// vendor records are `VF_RECORDS`, in that order. Otherwise its cases
/// would test another format than they say.
fn vf_check_shape(p: &Parsed) -> TestResult {
    let got: Vec<(u16, usize)> = p
        .records
        .iter()
        .filter(|r| r.0 == KIND_DATA && r.1 < FRAMEWORK_TAGS)
        .map(|r| (r.1, r.2.len()))
        .collect();
    if got != VF_RECORDS {
        return Err(format!(
            "the VF's stream has the records (tag, length) {got:?}, not {VF_RECORDS:?}"
        ));
    }
    Ok(())
}

/// `vf-stream-campaign SRC-UUID DST-UUID DST-PCI SEED COUNT`: the stream
/// campaign against rmdev_igbvf: COUNT cases built from SRC's stream into
/// DST, whose VF (DST-PCI) is read from its own BAR0 after each case: no
/// denied bit may be set and no doorbell written, whatever the stream
/// said, loaded or refused.
pub(crate) fn vf_stream_campaign(
    src: &str,
    dst: &str,
    pci: &str,
    seed: &str,
    count: &str,
) -> TestResult {
    let seed: u64 = seed.parse().map_err(|e| format!("seed: {e}"))?;
    let count: usize = count.parse().map_err(|e| format!("count: {e}"))?;
    let start = Instant::now();
    let s = ctx(Device::open(src), &format!("open {src}"))?;
    let d = ctx(Device::open(dst), &format!("open {dst}"))?;
    let hw = super::igbvf::HwBar::map(pci)?;
    // A receive ring on the source (disabled: the VF is not involved), so
    // the receive record carries values the final check can tell apart.
    for (off, v) in VF_RX_REGS.iter().zip(VF_RX_SOURCE) {
        ctx(s.write_reg(*off, v), "program the source's receive queue")?;
    }
    let fd = ctx(s.set_state(State::StopCopy.raw()), "SET STOP_COPY")?.ok_or("no save FD")?;
    let mut good = Vec::new();
    super::read_to_eof(&fd, &mut good)?;
    drop(fd);
    ctx(s.set_state(State::Running.raw()), "SET RUNNING")?;
    let parsed = parse(&good)?;
    vf_check_shape(&parsed)?;
    // Another vendor's stream, forged: the sample's header on these records.
    let foreign = Forge::valid(b"rmdev_sample:16k:1.0").finish(&parsed.records);
    let tails = vf_tails(&hw)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for i in 0..count {
        let case = make_case(&mut rng, Vendor::Vf, &good, &parsed, &foreign, 0);
        let fail = |what: String| format!("seed {seed} case {i} ({}): {what}", case.class);
        let outcome = run_case(&mut rng, &d, &case.bytes).map_err(fail)?;
        tally.record(&case, outcome).map_err(fail)?;
        vf_hw_check(&hw, &tails).map_err(fail)?;
        reset_to_running(&d).map_err(fail)?;
    }
    // Usable afterwards: the valid stream loads, and every register it
    // carries reads the same through the target mdev as through the
    // source's: the forwarded ones (from the VF's hardware) and receive
    // queue 0's (the vendor's emulation).
    super::load_into(&d, &good)?;
    let regs = parsed
        .records
        .iter()
        .find(|r| r.1 == VF_TAG_REGS)
        .map(|r| &r.2)
        .ok_or("the VF's stream has no register record")?;
    let forwarded = regs
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|pair| u64::from(u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]])));
    for off in forwarded.chain(VF_RX_REGS) {
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        ctx(
            s.read_at(vfio::BAR0, off, &mut a),
            "read the source's register",
        )?;
        ctx(
            d.read_at(vfio::BAR0, off, &mut b),
            "read the target's register",
        )?;
        if a != b {
            return Err(format!(
                "seed {seed}: after the campaign, the valid stream loaded but register {off:#x} reads {:#010x} on the target, {:#010x} on the source",
                u32::from_le_bytes(b),
                u32::from_le_bytes(a)
            ));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("  VF stream campaign: seed {seed}, {count} streams in {secs:.1} s");
    tally.print();
    Ok(())
}

/// `race-campaign SEED ROUNDS`: each round, 3 threads hammer the data FDs
/// (reads, writes, `PRECOPY_INFO`, polls, on their own duplicates of them)
/// while this thread drives the device (SET to random states, RESET,
/// `MIG_DATA_SIZE`, GET) and then closes it under them. Every call must
/// answer; after each round the reopened device must be in RUNNING with
/// its memory unchanged (no data FD write may load anything: the bytes are
/// random). With `vf UUID`, against that VF mdev instead of a new sample
/// mdev: it must reopen in RUNNING (the resets reset its registers, so
/// there is nothing else to compare).
pub(crate) fn race_campaign(seed: &str, rounds: &str, vf: Option<&str>) -> TestResult {
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    const WORKERS: u64 = 3;
    let seed: u64 = seed.parse().map_err(|e| format!("seed: {e}"))?;
    let rounds: usize = rounds.parse().map_err(|e| format!("rounds: {e}"))?;
    let start = Instant::now();
    let (ty, size) = TYPES[0];
    // The sample's mdev, filled, or the VF's.
    let sample = match vf {
        Some(_) => None,
        None => Some(Mdev::create(ty)?),
    };
    let open = || match (&sample, vf) {
        (Some(m), _) => m.open(),
        (None, Some(uuid)) => ctx(Device::open(uuid), &format!("open {uuid}")),
        (None, None) => Err("no device".to_string()),
    };
    let fill: Vec<u8> = (0..size).map(|i| (i * 13 + seed as usize) as u8).collect();
    if sample.is_some() {
        ctx(open()?.write_at(vfio::BAR2, 0, &fill), "fill")?;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (calls, sets) = (AtomicUsize::new(0), AtomicUsize::new(0));
    for round in 0..rounds {
        let fail = |what: String| format!("seed {seed} round {round}: {what}");
        let data: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());
        let stop = AtomicBool::new(false);
        let dev = open().map_err(fail)?;
        std::thread::scope(|s| {
            for w in 0..WORKERS {
                let (data, stop, calls) = (&data, &stop, &calls);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed ^ ((round as u64) << 8) ^ (w << 56));
                    let mut buf = vec![0u8; 8192];
                    while !stop.load(Ordering::Relaxed) {
                        // A duplicate of a data FD, ours to use and close:
                        // no other thread's close can reuse its number.
                        let fd = {
                            let fds = data.lock().unwrap_or_else(|e| e.into_inner());
                            if fds.is_empty() {
                                None
                            } else {
                                fds[rng.gen_range(0..fds.len())]
                                    .as_fd()
                                    .try_clone_to_owned()
                                    .ok()
                            }
                        };
                        let Some(fd) = fd else {
                            std::thread::yield_now();
                            continue;
                        };
                        let n = rng.gen_range(0..buf.len());
                        match rng.gen_range(0..4) {
                            0 => {
                                let _ = vfio::read_fd(&fd, &mut buf[..n]);
                            }
                            1 => {
                                rng.fill(&mut buf[..n]);
                                let _ = vfio::write_fd(&fd, &buf[..n]);
                            }
                            2 => {
                                let _ = vfio::precopy_info(&fd);
                            }
                            _ => {
                                let _ = vfio::poll_fd(
                                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                                    libc::POLLIN | libc::POLLOUT,
                                    0,
                                );
                            }
                        }
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            for _ in 0..rng.gen_range(20..60) {
                match rng.gen_range(0..6) {
                    0..=2 => {
                        if let Ok(Some(fd)) = dev.set_state(rng.gen_range(1..8)) {
                            let mut fds = data.lock().unwrap_or_else(|e| e.into_inner());
                            fds.push(fd);
                            if fds.len() > 4 {
                                drop(fds.remove(0));
                            }
                        }
                        sets.fetch_add(1, Ordering::Relaxed);
                    }
                    3 => {
                        let _ = dev.reset();
                    }
                    4 => {
                        let _ = dev.data_size();
                    }
                    _ => {
                        let _ = dev.state();
                    }
                }
            }
            // The device closes under the workers, who go on with the data
            // FDs a little while.
            drop(dev);
            std::thread::sleep(std::time::Duration::from_millis(20));
            stop.store(true, Ordering::Relaxed);
        });
        drop(data);
        let dev = open().map_err(fail)?;
        let state = ctx(dev.state(), "GET").map_err(fail)?;
        if state != State::Running.raw() {
            return Err(fail(format!("reopened in state {state}, not RUNNING")));
        }
        if sample.is_some() && read_memory(&dev, size).map_err(fail)? != fill {
            return Err(fail("the device memory changed".into()));
        }
    }
    println!(
        "  race campaign{}: seed {seed}, {rounds} rounds, {} SETs against {} data FD calls from {WORKERS} threads and a close each round, in {:.1} s",
        vf.map_or(String::new(), |u| format!(" (VF mdev {u})")),
        sets.load(Ordering::Relaxed),
        calls.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How a teardown round takes the mdev away.
enum Teardown {
    /// The operator writes the mdev's `remove`.
    Remove,
    /// The operator unbinds the parent PCI function (its mdev parent
    /// unregisters), and binds it again after the round.
    Unbind { pci: String, driver: String },
}

/// `teardown-campaign TYPE-DIR SEED ROUNDS [unbind PCI]`: the user's files
/// while the operator takes the mdev away. Each round an mdev of the type
/// at TYPE-DIR is created and opened, its user registers a request eventfd
/// and opens save or resume sessions (1 to 3 random SETs), and 3 threads
/// hammer the data FDs and read and write the mdev's and its type's
/// `migration_version` while the mdev is removed through sysfs (with
/// `unbind PCI`: while the PCI function PCI, the type's parent, is unbound
/// from its driver, which unregisters the mdev parent, then bound again). The user closes the device when
/// the removal asks for it, after a random delay. The removal must
/// complete, the mdev must be gone, every data FD must then answer
/// `ENODEV`, and the type must offer as many instances as before.
pub(crate) fn teardown_campaign(
    dir: &str,
    seed: &str,
    rounds: &str,
    unbind: Option<&str>,
) -> TestResult {
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;
    const WORKERS: u64 = 3;
    let seed: u64 = seed.parse().map_err(|e| format!("seed: {e}"))?;
    let rounds: usize = rounds.parse().map_err(|e| format!("rounds: {e}"))?;
    let dir = dir.trim_end_matches('/');
    let teardown = match unbind {
        None => Teardown::Remove,
        Some(pci) => {
            let driver = ctx(
                std::fs::read_link(format!("/sys/bus/pci/devices/{pci}/driver")),
                &format!("the driver of {pci}"),
            )?;
            let driver = driver
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("the driver has no name")?
                .to_string();
            Teardown::Unbind {
                pci: pci.to_string(),
                driver,
            }
        }
    };
    let ty_version = format!("{dir}/migration_version");
    let available = |what: &str| -> Result<String, String> {
        ctx(
            std::fs::read_to_string(format!("{dir}/available_instances")),
            &format!("available_instances {what}"),
        )
    };
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let (calls, sessions) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut waits = Duration::ZERO;
    for round in 0..rounds {
        let fail = |what: String| format!("seed {seed} round {round}: {what}");
        let before = available("before").map_err(fail)?;
        let uuid = super::new_uuid();
        ctx(std::fs::write(format!("{dir}/create"), &uuid), "create").map_err(fail)?;
        let dev_version = format!("/sys/bus/mdev/devices/{uuid}/migration_version");
        let dev = ctx(Device::open(&uuid), "open").map_err(fail)?;
        let req = super::new_eventfd().map_err(fail)?;
        ctx(dev.set_req_eventfd(req.as_raw_fd()), "request eventfd").map_err(fail)?;
        // The data FDs, with whether each is a save (true) or resume file:
        // SETs to the states that open sessions (those the device lacks
        // fail), and a save session at least.
        let mut data: Vec<(OwnedFd, bool)> = Vec::new();
        let sessions_of = [
            State::StopCopy,
            State::Resuming,
            State::PreCopy,
            State::PreCopyP2p,
        ];
        for _ in 0..rng.gen_range(1..4) {
            let to = sessions_of[rng.gen_range(0..sessions_of.len())];
            if let Ok(Some(fd)) = dev.set_state(to.raw()) {
                data.push((fd, to != State::Resuming));
            }
        }
        if data.is_empty() {
            let fd = ctx(dev.set_state(State::StopCopy.raw()), "SET STOP_COPY")
                .map_err(fail)?
                .ok_or_else(|| fail("STOP_COPY opened no data FD".into()))?;
            data.push((fd, true));
        }
        sessions.fetch_add(data.len(), Ordering::Relaxed);
        let version = std::fs::read_to_string(&ty_version).unwrap_or_default();
        let delay = Duration::from_micros(rng.gen_range(0..5000));
        let stop = AtomicBool::new(false);
        let shared: &[(OwnedFd, bool)] = &data;
        let taken = std::thread::scope(|s| -> Result<Duration, String> {
            for w in 0..WORKERS {
                let (stop, calls) = (&stop, &calls);
                let (ty_version, dev_version, version) = (&ty_version, &dev_version, &version);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed ^ ((round as u64) << 8) ^ (w << 56));
                    let mut buf = vec![0u8; 8192];
                    while !stop.load(Ordering::Relaxed) {
                        // A duplicate: the FDs close after the scope.
                        let fd = if shared.is_empty() {
                            None
                        } else {
                            let at = rng.gen_range(0..shared.len());
                            shared[at].0.as_fd().try_clone_to_owned().ok()
                        };
                        let n = rng.gen_range(0..buf.len());
                        match (rng.gen_range(0..6), fd) {
                            (0, Some(fd)) => {
                                let _ = vfio::read_fd(&fd, &mut buf[..n]);
                            }
                            (1, Some(fd)) => {
                                let _ = vfio::write_fd(&fd, &buf[..n]);
                            }
                            (2, Some(fd)) => {
                                let _ = vfio::precopy_info(&fd);
                            }
                            (3, _) => {
                                let _ = std::fs::read_to_string(ty_version);
                            }
                            (4, _) => {
                                let _ = std::fs::read_to_string(dev_version);
                            }
                            _ => {
                                let f = if rng.gen() { ty_version } else { dev_version };
                                let _ = std::fs::write(f, version.trim());
                            }
                        }
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // The user: closes the device when asked to.
            let user = s.spawn(move || -> TestResult {
                let revents = ctx(
                    vfio::poll_fd(req.as_raw_fd(), libc::POLLIN, 30_000),
                    "poll the request eventfd",
                )?;
                std::thread::sleep(delay);
                drop(dev);
                if revents & libc::POLLIN == 0 {
                    return Err("no release request within 30 s".into());
                }
                Ok(())
            });
            let t = Instant::now();
            let taken = match &teardown {
                Teardown::Remove => {
                    std::fs::write(format!("/sys/bus/mdev/devices/{uuid}/remove"), "1")
                }
                Teardown::Unbind { pci, driver } => {
                    std::fs::write(format!("/sys/bus/pci/drivers/{driver}/unbind"), pci)
                }
            };
            let waited = t.elapsed();
            let asked = user
                .join()
                .map_err(|_| "the user thread panicked".to_string());
            // The workers go on with the data FDs a little while.
            std::thread::sleep(Duration::from_millis(10));
            stop.store(true, Ordering::Relaxed);
            ctx(taken, "the teardown")?;
            asked??;
            Ok(waited)
        });
        let taken = taken.map_err(fail)?;
        waits = waits.max(taken);
        if std::path::Path::new(&format!("/sys/bus/mdev/devices/{uuid}")).exists() {
            return Err(fail(format!("mdev {uuid} still there after its teardown")));
        }
        for (fd, save) in &data {
            let r = if *save {
                vfio::read_fd(fd, &mut [0u8; 64])
            } else {
                vfio::write_fd(fd, &[0u8; 64])
            };
            let errno = r.err().and_then(|e| e.raw_os_error());
            if errno != Some(libc::ENODEV) {
                return Err(fail(format!(
                    "a {} file after the teardown answered {errno:?}, not ENODEV",
                    if *save { "save" } else { "resume" }
                )));
            }
        }
        drop(data);
        if let Teardown::Unbind { pci, driver } = &teardown {
            ctx(
                std::fs::write(format!("/sys/bus/pci/drivers/{driver}/bind"), pci),
                "bind again",
            )
            .map_err(fail)?;
        }
        let after = available("after").map_err(fail)?;
        if after != before {
            return Err(fail(format!(
                "available_instances {} before, {} after",
                before.trim(),
                after.trim()
            )));
        }
    }
    println!(
        "  teardown campaign ({}): seed {seed}, {rounds} rounds, {} sessions open at the teardown, {} calls from {WORKERS} threads, longest teardown {} ms, in {:.1} s",
        match &teardown {
            Teardown::Remove => "remove".to_string(),
            Teardown::Unbind { pci, .. } => format!("unbind {pci}"),
        },
        sessions.load(Ordering::Relaxed),
        calls.load(Ordering::Relaxed),
        waits.as_millis(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `rmmod-race TYPE-DIR MODULE SEED ATTEMPTS`: `rmmod` against a user that
/// keeps opening the device. An mdev of the type at TYPE-DIR is created;
/// its user opens it, opens 1 to 8 save or resume sessions in turn (random
/// SETs, a few data FD calls, a reset after each), closes and opens again
/// (one time in 16 after a random pause of up to 2 ms). Once it has done
/// that 5 times and holds the device again, this thread asks the kernel to
/// unload MODULE (the vendor of the type, `delete_module` without waiting)
/// up to ATTEMPTS times. Every refusal must be `EWOULDBLOCK` or `EBUSY`
/// ("in use") and leave the device usable (the user's next cycle must
/// work); once an unload goes through, the module and the mdev must be
/// gone and the user's next open must fail (it stops there). An unload that never won
/// the race is done after the user stops, and must then succeed.
pub(crate) fn rmmod_race(dir: &str, module: &str, seed: &str, attempts: &str) -> TestResult {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;
    let seed: u64 = seed.parse().map_err(|e| format!("seed: {e}"))?;
    let attempts: usize = attempts.parse().map_err(|e| format!("attempts: {e}"))?;
    let dir = dir.trim_end_matches('/');
    let name = std::ffi::CString::new(module).map_err(|e| format!("module: {e}"))?;
    let unload = || -> Result<(), i32> {
        // SAFETY: `name` is a NUL-terminated string that outlives the call;
        // delete_module reads it and the flags only.
        let r = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    };
    // The module's state in /proc/modules: None once it is gone.
    let state = || -> Option<String> {
        let m = std::fs::read_to_string("/proc/modules").ok()?;
        let line = m.lines().find(|l| l.split(' ').next() == Some(module))?;
        Some(line.split(' ').nth(4).unwrap_or("").to_string())
    };
    let loaded = || state().is_some();
    let uuid = super::new_uuid();
    ctx(std::fs::write(format!("{dir}/create"), &uuid), "create")?;
    let start = Instant::now();
    let (unloaded, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    // Whether the user holds the device open (set after its open, cleared
    // before its close).
    let holding = AtomicBool::new(false);
    let cycles = AtomicUsize::new(0);
    let mut refused = 0usize;
    let user = std::thread::scope(|s| -> TestResult {
        let (unloaded, stop, cycles, uuid) = (&unloaded, &stop, &cycles, &uuid);
        let holding = &holding;
        let user = s.spawn(move || -> TestResult {
            let mut rng = StdRng::seed_from_u64(seed);
            let states = [State::StopCopy, State::Resuming, State::PreCopy];
            let mut buf = vec![0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                // Whether the unload had gone through before this open.
                let gone_before = unloaded.load(Ordering::Acquire);
                let dev = match Device::open(uuid) {
                    Ok(dev) => dev,
                    Err(_) if gone_before || unloaded.load(Ordering::Acquire) => return Ok(()),
                    Err(e) => {
                        // An unload may be under way, its call not yet
                        // returned: the module is then going.
                        if state().is_none_or(|s| s == "Unloading") {
                            return Ok(());
                        }
                        return Err(format!("open failed with {module} loaded: {e}"));
                    }
                };
                if gone_before {
                    return Err(format!("the mdev opened after {module} was unloaded"));
                }
                holding.store(true, Ordering::Release);
                // 1 to 8 sessions per open, a reset after each: the
                // device is held most of the time.
                for _ in 0..rng.gen_range(1..9) {
                    let to = states[rng.gen_range(0..states.len())];
                    if let Ok(Some(fd)) = dev.set_state(to.raw()) {
                        for _ in 0..rng.gen_range(1..4) {
                            let n = rng.gen_range(0..buf.len());
                            let _ = if to == State::Resuming {
                                vfio::write_fd(&fd, &buf[..n])
                            } else {
                                vfio::read_fd(&fd, &mut buf[..n])
                            };
                        }
                    }
                    dev.reset()
                        .map_err(|e| format!("reset with {module} loaded: {e}"))?;
                }
                holding.store(false, Ordering::Release);
                drop(dev);
                cycles.fetch_add(1, Ordering::Release);
                // Mostly straight back to the open: the unload gets a
                // window between two cycles only now and then.
                if rng.gen_range(0..16) == 0 {
                    std::thread::sleep(Duration::from_micros(rng.gen_range(0..2000)));
                }
            }
            Ok(())
        });
        // The unloads start once the user is cycling, while it holds the
        // device: the first ones are likely refused (not asserted: the
        // user may close before the first attempt lands).
        let t = Instant::now();
        while (cycles.load(Ordering::Acquire) < 5 || !holding.load(Ordering::Acquire))
            && !user.is_finished()
        {
            if t.elapsed() > Duration::from_secs(30) {
                stop.store(true, Ordering::Relaxed);
                return Err(
                    "the user did not cycle 5 times and hold the device within 30 s".into(),
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        for _ in 0..attempts {
            if user.is_finished() {
                break;
            }
            match unload() {
                Ok(()) => {
                    unloaded.store(true, Ordering::Release);
                    break;
                }
                Err(e) if e == libc::EWOULDBLOCK || e == libc::EBUSY => refused += 1,
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(format!(
                        "unloading {module} answered errno {e}, not 'in use'"
                    ));
                }
            }
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..200)));
        }
        if !unloaded.load(Ordering::Relaxed) {
            stop.store(true, Ordering::Relaxed);
        }
        user.join()
            .map_err(|_| "the user thread panicked".to_string())?
    });
    user.map_err(|e| format!("seed {seed}: {e}"))?;
    // Whether an unload went through while the user cycled.
    let won = unloaded.into_inner();
    if !won {
        unload().map_err(|e| {
            format!("seed {seed}: unloading {module} once the user stopped: errno {e}")
        })?;
    }
    if loaded() {
        return Err(format!(
            "seed {seed}: {module} still loaded after its unload"
        ));
    }
    if std::path::Path::new(&format!("/sys/bus/mdev/devices/{uuid}")).exists() {
        return Err(format!(
            "seed {seed}: mdev {uuid} still there after {module} was unloaded"
        ));
    }
    println!(
        "  rmmod race ({module}): seed {seed}, {refused} unloads refused while the user cycled ({} opens), {} in {:.1} s",
        cycles.load(Ordering::Relaxed),
        if won { "then one went through between two of its opens" } else { "none went through while it ran; done after it stopped" },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
