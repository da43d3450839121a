// SPDX-License-Identifier: GPL-2.0

//! The stream envelope: round trips, every segmentation, every bit flip,
//! every truncation, each refusal with its own error, and a bounded fuzz.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{for_budget, Rng};
use rmdev_logic::crc32c::{crc32c, Crc32c};
use rmdev_logic::envelope::*;
use rmdev_logic::version::{DefaultRule, VersionError, VersionRule};

const SRC: &str = "rmdev_sample:rmdev_sample-64k:1.2";
const TGT: &str = "rmdev_sample:rmdev_sample-64k:1.3";

/// Collects records after checking versions with the default rule.
struct Collect {
    target: &'static str,
    records: Vec<(u16, Vec<u8>)>,
    refuse_tag: Option<u16>,
}

impl Collect {
    fn new() -> Self {
        Collect {
            target: TGT,
            records: vec![],
            refuse_tag: None,
        }
    }
}

impl Sink for Collect {
    type Error = i32;
    fn check_version(&mut self, source: &str) -> Result<(), VersionError> {
        DefaultRule.check(self.target, source)
    }
    fn record(&mut self, tag: u16, payload: &[u8]) -> Result<(), i32> {
        if self.refuse_tag == Some(tag) {
            return Err(-22);
        }
        self.records.push((tag, payload.to_vec()));
        Ok(())
    }
}

fn encode(version: &str, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let (mut enc, header) = Encoder::new(version).unwrap();
    let mut out = header.as_bytes().to_vec();
    for (tag, payload) in records {
        out.extend(enc.begin(*tag, payload.len()).unwrap());
        // Payload accounted in two pieces, as a streaming save would.
        let (a, b) = payload.split_at(payload.len() / 2);
        enc.payload(a).unwrap();
        enc.payload(b).unwrap();
        out.extend_from_slice(payload);
        out.extend(enc.end_record().unwrap());
    }
    out.extend(enc.end().unwrap());
    out
}

fn sample_records() -> Vec<(u16, Vec<u8>)> {
    vec![
        (1, b"registers".to_vec()),
        (2, (0..=255u8).collect()),
        (7, vec![0xAA; 3]),
    ]
}

fn parse_segments(
    stream: &[u8],
    cuts: &[usize],
    max: usize,
) -> (Collect, Result<(), StreamError<i32>>) {
    let mut p = Parser::new(vec![0u8; max]);
    let mut c = Collect::new();
    let mut last = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        if let Err(e) = p.feed(&stream[last..cut], &mut c) {
            return (c, Err(e));
        }
        last = cut;
    }
    let r = p.finish().map_err(StreamError::Envelope);
    (c, r)
}

fn parse(stream: &[u8]) -> (Collect, Result<(), StreamError<i32>>) {
    parse_segments(stream, &[], 4096)
}

#[test]
fn crc32c_known_answers() {
    // The standard check value, and RFC 3720 (iSCSI) B.4 vectors.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    let inc: Vec<u8> = (0..32).collect();
    assert_eq!(crc32c(&inc), 0x46DD_794E);
    // Any split gives the same value.
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    for cut in 0..data.len() {
        let c = Crc32c::new().update(&data[..cut]).update(&data[cut..]);
        assert_eq!(c.value(), crc32c(&data));
    }
}

#[test]
fn round_trip() {
    let recs = sample_records();
    let s = encode(SRC, &recs);
    let (c, r) = parse(&s);
    r.unwrap();
    assert_eq!(c.records, recs);
    // An empty stream (header + END) is valid too.
    let (c, r) = parse(&encode(SRC, &[]));
    r.unwrap();
    assert!(c.records.is_empty());
}

#[test]
fn header_layout_is_as_documented() {
    let s = encode(SRC, &[]);
    assert_eq!(&s[..8], b"RMDEVMIG");
    assert_eq!(u16::from_le_bytes([s[8], s[9]]), 1);
    let hlen = u16::from_le_bytes([s[10], s[11]]) as usize;
    assert_eq!(hlen, 24 + SRC.len());
    assert_eq!(&s[12..16], &[0; 4]);
    assert_eq!(u16::from_le_bytes([s[16], s[17]]) as usize, SRC.len());
    assert_eq!(&s[20..20 + SRC.len()], SRC.as_bytes());
    let crc = u32::from_le_bytes(s[hlen - 4..hlen].try_into().unwrap());
    assert_eq!(crc, crc32c(&s[..hlen - 4]));
    // END: kind 2, tag 0, length 8, total data bytes 0.
    assert_eq!(&s[hlen..hlen + 8], &[2, 0, 0, 0, 8, 0, 0, 0]);
    assert_eq!(s.len(), hlen + END_LEN);
}

#[test]
fn every_split_point_and_byte_by_byte() {
    let recs = sample_records();
    let s = encode(SRC, &recs);
    for cut in 0..=s.len() {
        let (c, r) = parse_segments(&s, &[cut], 4096);
        r.unwrap_or_else(|e| panic!("split at {cut}: {e:?}"));
        assert_eq!(c.records, recs, "split at {cut}");
    }
    let cuts: Vec<usize> = (1..s.len()).collect();
    let (c, r) = parse_segments(&s, &cuts, 4096);
    r.unwrap();
    assert_eq!(c.records, recs);
}

#[test]
fn every_single_bit_flip_is_detected() {
    let recs = sample_records();
    let s = encode(SRC, &recs);
    for bit in 0..s.len() * 8 {
        let mut m = s.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        let (c, r) = parse(&m);
        assert!(r.is_err(), "flip of bit {bit} accepted");
        // No corrupted record ever reaches the vendor.
        for rec in &c.records {
            assert!(recs.contains(rec), "flip of bit {bit} delivered {rec:?}");
        }
    }
}

#[test]
fn truncation_at_every_offset_is_detected() {
    let s = encode(SRC, &sample_records());
    for len in 0..s.len() {
        let (_, r) = parse(&s[..len]);
        assert_eq!(
            r,
            Err(StreamError::Envelope(EnvelopeError::Truncated)),
            "cut at {len}"
        );
    }
}

#[test]
fn each_refusal_has_its_own_error() {
    let good = encode(SRC, &sample_records());
    let env = |s: &[u8]| parse(s).1.unwrap_err();

    // Not an rmdev stream: refused at the first differing byte.
    let mut p = Parser::new(vec![0u8; 64]);
    assert_eq!(
        p.feed(b"X", &mut Collect::new()),
        Err(StreamError::Envelope(EnvelopeError::BadMagic))
    );
    assert_eq!(
        env(b"\x7fELF\x02\x01\x01\0\0\0\0\0"),
        StreamError::Envelope(EnvelopeError::BadMagic)
    );

    let mut m = good.clone();
    m[8] = 2;
    assert_eq!(
        env(&m),
        StreamError::Envelope(EnvelopeError::UnsupportedEnvelopeVersion(2))
    );

    let mut m = good.clone();
    m[12] = 1; // an undefined flag
    assert_eq!(env(&m), StreamError::Envelope(EnvelopeError::BadHeader));

    let incompatible = |v: &str| env(&encode(v, &sample_records()));
    assert_eq!(
        incompatible("other_vendor:rmdev_sample-64k:1.2"),
        StreamError::Envelope(EnvelopeError::Incompatible(VersionError::WrongVendor))
    );
    assert_eq!(
        incompatible("rmdev_sample:rmdev_sample-4k:1.2"),
        StreamError::Envelope(EnvelopeError::Incompatible(VersionError::WrongType))
    );
    assert_eq!(
        incompatible("rmdev_sample:rmdev_sample-64k:2.0"),
        StreamError::Envelope(EnvelopeError::Incompatible(VersionError::MajorMismatch))
    );
    assert_eq!(
        incompatible("rmdev_sample:rmdev_sample-64k:1.4"),
        StreamError::Envelope(EnvelopeError::Incompatible(VersionError::MinorTooNew))
    );

    let mut m = good.clone();
    let last = m.len() - 1;
    m[last] ^= 0x80; // END's checksum
    assert!(matches!(
        env(&m),
        StreamError::Envelope(EnvelopeError::ChecksumMismatch { .. })
    ));

    let mut m = good.clone();
    m.push(0);
    assert_eq!(env(&m), StreamError::Envelope(EnvelopeError::TrailingData));

    let big = encode(SRC, &[(1, vec![1; 100])]);
    let (c, r) = parse_segments(&big, &[], 99);
    assert_eq!(
        r,
        Err(StreamError::Envelope(EnvelopeError::OversizeRecord {
            len: 100,
            max: 99
        }))
    );
    assert!(c.records.is_empty());
    let (_, r) = parse_segments(&big, &[], 100);
    r.unwrap();

    // A record the vendor refuses stops the stream; later bytes fail too.
    let mut p = Parser::new(vec![0u8; 4096]);
    let mut c = Collect::new();
    c.refuse_tag = Some(2);
    assert_eq!(p.feed(&good, &mut c), Err(StreamError::Vendor(-22)));
    assert_eq!(
        p.feed(b"x", &mut c),
        Err(StreamError::Envelope(EnvelopeError::Aborted))
    );
    assert_eq!(p.finish(), Err(EnvelopeError::Aborted));
}

#[test]
fn records_from_another_stream_are_detected() {
    // Same version, different content: splicing a record of one stream into
    // the other breaks the chained checksum.
    let a = encode(SRC, &[(1, vec![1; 16]), (1, vec![2; 16])]);
    let b = encode(SRC, &[(1, vec![3; 16]), (1, vec![2; 16])]);
    let hlen = 24 + SRC.len();
    let rec = 12 + 16;
    let mut spliced = a.clone();
    spliced[hlen + rec..hlen + 2 * rec].copy_from_slice(&b[hlen + rec..hlen + 2 * rec]);
    assert_ne!(spliced, a);
    assert!(matches!(
        parse(&spliced).1,
        Err(StreamError::Envelope(
            EnvelopeError::ChecksumMismatch { .. }
        ))
    ));
    // Dropping or repeating a record is detected as well.
    let mut dropped = a[..hlen + rec].to_vec();
    dropped.extend_from_slice(&a[hlen + 2 * rec..]);
    assert!(parse(&dropped).1.is_err());
    let mut repeated = a[..hlen + 2 * rec].to_vec();
    repeated.extend_from_slice(&a[hlen + rec..]);
    assert!(parse(&repeated).1.is_err());
}

#[test]
fn encoder_refuses_calls_out_of_order() {
    assert!(Encoder::new("").is_err());
    assert!(Encoder::new(&"a".repeat(256)).is_err());
    let (mut e, _) = Encoder::new(SRC).unwrap();
    assert_eq!(e.payload(b"x"), Err(EncodeError::OutOfOrder));
    assert_eq!(e.end_record(), Err(EncodeError::OutOfOrder));
    assert_eq!(e.begin(1, 0), Err(EncodeError::BadLength));
    assert_eq!(
        e.begin(1, MAX_RECORD_PAYLOAD + 1),
        Err(EncodeError::BadLength)
    );
    e.begin(1, 2).unwrap();
    assert_eq!(e.begin(1, 2), Err(EncodeError::OutOfOrder));
    assert_eq!(e.end(), Err(EncodeError::OutOfOrder));
    assert_eq!(e.payload(b"abc"), Err(EncodeError::OutOfOrder));
    e.payload(b"a").unwrap();
    assert_eq!(e.end_record(), Err(EncodeError::OutOfOrder));
    e.payload(b"b").unwrap();
    e.end_record().unwrap();
    e.end().unwrap();
    assert!(e.is_ended());
    assert_eq!(e.end(), Err(EncodeError::OutOfOrder));
    assert_eq!(e.begin(1, 1), Err(EncodeError::OutOfOrder));
}

/// Bounded fuzz: random valid streams in random segmentations must parse;
/// random mutations (flips, byte changes, insertions, deletions, cuts, junk)
/// must be refused without a panic and without delivering a changed record.
#[test]
fn fuzz_bounded() {
    let mut rng = Rng::from_env("fuzz_bounded");
    let mut mutated = 0u64;
    let rounds = for_budget(|| {
        let n = rng.below(5);
        let recs: Vec<(u16, Vec<u8>)> = (0..n)
            .map(|_| {
                let len = 1 + rng.below(300);
                (rng.next() as u16, rng.bytes(len))
            })
            .collect();
        let s = encode(SRC, &recs);
        let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(s.len() + 1)).collect();
        cuts.sort_unstable();
        let (c, r) = parse_segments(&s, &cuts, 512);
        assert_eq!(r, Ok(()));
        assert_eq!(c.records, recs);

        let mut m = s.clone();
        match rng.below(6) {
            0 => {
                let bit = rng.below(m.len() * 8);
                m[bit / 8] ^= 1 << (bit % 8);
            }
            1 => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(m.len() + 1);
                let n = 1 + rng.below(8);
                let junk = rng.bytes(n);
                m.splice(i..i, junk);
            }
            3 => {
                let i = rng.below(m.len());
                let j = (i + 1 + rng.below(8)).min(m.len());
                m.drain(i..j);
            }
            4 => m.truncate(rng.below(m.len())),
            _ => {
                let n = rng.below(200);
                m = rng.bytes(n);
            }
        }
        if m == s {
            return;
        }
        mutated += 1;
        let (c, r) = parse_segments(
            &m,
            &cuts.iter().map(|&x| x.min(m.len())).collect::<Vec<_>>(),
            512,
        );
        assert!(r.is_err(), "mutation accepted");
        for rec in &c.records {
            assert!(recs.contains(rec), "changed record delivered");
        }
    });
    eprintln!("fuzz_bounded: {rounds} streams, {mutated} mutants refused");
    assert!(mutated > 0);
}

/// Parses `stream` the way the kernel's resume file does: copying straight
/// into the parser's window, at most `chunk` bytes at a time.
fn parse_in_place(stream: &[u8], chunk: usize) -> (Collect, Result<(), StreamError<i32>>) {
    let mut p = Parser::new(vec![0u8; 4096]);
    let mut c = Collect::new();
    let mut at = 0;
    while at < stream.len() {
        let w = p.window();
        let n = w.len().min(chunk).min(stream.len() - at);
        w[..n].copy_from_slice(&stream[at..at + n]);
        if let Err(e) = p.commit(n, &mut c) {
            return (c, Err(e));
        }
        at += n;
    }
    let r = p.finish().map_err(StreamError::Envelope);
    (c, r)
}

#[test]
fn window_and_commit_parse_as_feed_does() {
    let recs = sample_records();
    let s = encode(SRC, &recs);
    for chunk in [1, 3, 8, 13, 64, 4096] {
        let (c, r) = parse_in_place(&s, chunk);
        assert_eq!(r, Ok(()), "chunk {chunk}");
        assert_eq!(c.records, recs, "chunk {chunk}");
    }
    // Every bit flip and truncation is refused the same way as by feed.
    for bit in 0..s.len() * 8 {
        let mut m = s.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(parse_in_place(&m, 7).1, parse(&m).1, "flip of bit {bit}");
    }
    for len in 0..s.len() {
        assert_eq!(
            parse_in_place(&s[..len], 5).1,
            parse(&s[..len]).1,
            "cut at {len}"
        );
    }
}

#[test]
fn commit_refuses_what_the_window_cannot_hold() {
    let s = encode(SRC, &sample_records());
    let mut c = Collect::new();
    // More than the window: the stream fails, and stays failed.
    let mut p = Parser::new(vec![0u8; 4096]);
    let w = p.window().len();
    assert_eq!(
        p.commit(w + 1, &mut c),
        Err(StreamError::Envelope(EnvelopeError::Aborted))
    );
    assert!(p.window().is_empty());
    assert_eq!(
        p.commit(0, &mut c),
        Err(StreamError::Envelope(EnvelopeError::Aborted))
    );
    // After the END record: nothing more is taken.
    let mut p = Parser::new(vec![0u8; 4096]);
    p.feed(&s, &mut c).unwrap();
    assert!(p.is_done() && p.window().is_empty());
    assert_eq!(
        p.commit(0, &mut c),
        Err(StreamError::Envelope(EnvelopeError::TrailingData))
    );
    assert_eq!(
        p.feed(&[0], &mut c),
        Err(StreamError::Envelope(EnvelopeError::TrailingData))
    );
}
