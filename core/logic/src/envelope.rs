// SPDX-License-Identifier: GPL-2.0

//! The migration stream envelope: a framework header and typed records around
//! the vendor's data, so every vendor gets integrity and compatibility checks.
//!
//! All integers are little-endian. A stream is a header, any number of DATA
//! records, one END record, and nothing after it.
//!
//! ```text
//! header (24 + N bytes)
//!   0   8  magic "RMDEVMIG"
//!   8   2  envelope format version (1)
//!  10   2  header length in bytes (24 + N)
//!  12   4  flags (none defined: must be 0)
//!  16   2  N, length of the version string (1 to 255)
//!  18   2  reserved (must be 0)
//!  20   N  the source's migration_version string (vendor, type and data
//!          format version, in the default format or the vendor's own)
//!  20+N 4  CRC-32C of bytes 0 to 20+N
//! record (12 + L bytes)
//!   0   2  kind: 1 = DATA, 2 = END
//!   2   2  tag: the vendor's record tag (DATA), 0 (END)
//!   4   4  L, payload length (DATA: 1 to the receiver's limit; END: 8)
//!   8   L  payload (END: u64 total of all DATA payload lengths)
//!   8+L 4  CRC-32C of the whole stream from its first byte to here,
//!          leaving out the earlier checksum fields
//! ```
//!
//! Each record's checksum covers everything before it except the earlier
//! checksums (a CRC run over its own value gives a constant, which would
//! break the chain), so a flipped bit, a dropped, repeated or reordered record,
//! or a record from another stream is detected at the first record after it,
//! and a stream cut anywhere lacks its END. The receiver buffers one record,
//! checks it, and only then hands it to the vendor: nothing unchecked is ever
//! loaded, and memory is bounded by the largest record accepted, not by the
//! stream. [`Parser`] accepts the bytes in any segmentation.

use super::crc32c::Crc32c;
use super::version::{VersionError, MAX_LEN as MAX_VERSION_LEN};
use core::fmt;
use core::ops::DerefMut;

/// The first 8 bytes of every rmdev stream.
pub const MAGIC: [u8; 8] = *b"RMDEVMIG";
/// The envelope format version this code writes and reads.
pub const ENVELOPE_VERSION: u16 = 1;
/// Header bytes besides the version string.
pub const HEADER_FIXED: usize = 24;
/// The largest header.
pub const HEADER_MAX: usize = HEADER_FIXED + MAX_VERSION_LEN;
/// Record bytes besides the payload (8 before, 4 after).
pub const RECORD_OVERHEAD: usize = 12;
/// No record payload is ever larger, whatever the receiver's buffer.
pub const MAX_RECORD_PAYLOAD: usize = 1 << 24;
/// The END record's payload (the total of the DATA payload bytes). A
/// receiver's record buffer must hold it, so no device may declare a largest
/// record below this.
pub const END_PAYLOAD: usize = 8;
/// The smallest largest-record size a device may declare: a receiver with a
/// smaller record buffer could not take the END record.
pub const MIN_RECORD_PAYLOAD: usize = END_PAYLOAD;
/// DATA record tags from this one up are the framework's own records, which
/// it writes and reads itself; vendor tags are below it.
pub const FRAMEWORK_TAGS: u16 = 0xff00;
/// Framework record: the device's emulated PCI configuration space (256
/// bytes), written after the vendor's last record.
pub const TAG_PCI_CONFIG: u16 = 0xff00;
/// The encoded END record's length.
pub const END_LEN: usize = RECORD_OVERHEAD + END_PAYLOAD;

const KIND_DATA: u16 = 1;
const KIND_END: u16 = 2;

/// Why a stream is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The stream does not start with the rmdev magic: not an rmdev stream.
    BadMagic,
    /// An envelope format version this code does not read.
    UnsupportedEnvelopeVersion(u16),
    /// Header fields are inconsistent (length, reserved bits, string).
    BadHeader,
    /// The source's version is not loadable here (wrong vendor or type,
    /// incompatible data format version, different instance settings).
    Incompatible(VersionError),
    /// A checksum does not match: the stream is corrupted. The offset is
    /// that of the checksum's last byte.
    ChecksumMismatch {
        /// Stream offset of the end of the failing checksum.
        offset: u64,
    },
    /// The stream ended before its END record.
    Truncated,
    /// A record is larger than the receiver accepts.
    OversizeRecord {
        /// The record's payload length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// A record of unknown kind, an empty DATA record, or a malformed END.
    BadRecord,
    /// Bytes after the END record.
    TrailingData,
    /// The device refused an earlier record; the stream cannot go on.
    Aborted,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::BadMagic => f.write_str("not an rmdev migration stream (bad magic)"),
            EnvelopeError::UnsupportedEnvelopeVersion(v) => {
                write!(
                    f,
                    "unsupported stream envelope version {v} (this side reads {ENVELOPE_VERSION})"
                )
            }
            EnvelopeError::BadHeader => f.write_str("malformed stream header"),
            EnvelopeError::Incompatible(e) => write!(f, "incompatible stream: {e}"),
            EnvelopeError::ChecksumMismatch { offset } => {
                write!(f, "stream corrupted: checksum mismatch at byte {offset}")
            }
            EnvelopeError::Truncated => f.write_str("stream truncated (no end record)"),
            EnvelopeError::OversizeRecord { len, max } => {
                write!(f, "stream record of {len} bytes exceeds the limit of {max}")
            }
            EnvelopeError::BadRecord => f.write_str("malformed stream record"),
            EnvelopeError::TrailingData => f.write_str("data after the end of the stream"),
            EnvelopeError::Aborted => {
                f.write_str("the device refused an earlier record of this stream")
            }
        }
    }
}

/// What a [`Parser`] or an [`Encoder`] call failed with: the envelope, or the
/// vendor's sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError<E> {
    /// The envelope is broken or incompatible.
    Envelope(EnvelopeError),
    /// The vendor refused a record.
    Vendor(E),
}

impl<E> From<EnvelopeError> for StreamError<E> {
    fn from(e: EnvelopeError) -> Self {
        StreamError::Envelope(e)
    }
}

/// Receives what a [`Parser`] has checked.
pub trait Sink {
    /// The vendor's error.
    type Error;
    /// The source's version string, from a header whose checksum matched.
    /// Apply the device's [`super::version::VersionRule`] here.
    fn check_version(&mut self, source: &str) -> Result<(), VersionError>;
    /// A DATA record whose checksum matched.
    fn record(&mut self, tag: u16, payload: &[u8]) -> Result<(), Self::Error>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the header; `want` grows from the fixed part to the full length.
    Header,
    /// Reading a record's 8-byte head.
    RecordHead,
    /// Reading a record's payload into the buffer.
    Payload,
    /// Reading a record's checksum.
    Checksum,
    /// After a good END record.
    Done,
    /// After an error: every further call fails with it.
    Failed(EnvelopeError),
}

/// An incremental stream parser.
///
/// `B` is the record buffer (a `Vec<u8>`, a `KVec<u8>`, a boxed slice...):
/// its length is the largest record payload accepted (capped at
/// [`MAX_RECORD_PAYLOAD`]). The parser needs no other memory.
pub struct Parser<B> {
    buf: B,
    phase: Phase,
    header: [u8; HEADER_MAX],
    small: [u8; 8],
    fill: usize,
    want: usize,
    kind: u16,
    tag: u16,
    crc: Crc32c,
    offset: u64,
    data_bytes: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<B: DerefMut<Target = [u8]>> Parser<B> {
    /// A parser whose largest accepted record payload is `buf.len()`.
    pub fn new(buf: B) -> Self {
        Self {
            buf,
            phase: Phase::Header,
            header: [0; HEADER_MAX],
            small: [0; 8],
            fill: 0,
            want: 20,
            kind: 0,
            tag: 0,
            crc: Crc32c::new(),
            offset: 0,
            data_bytes: 0,
        }
    }

    fn max_record(&self) -> usize {
        self.buf.len().min(MAX_RECORD_PAYLOAD)
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the END record has been read.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The error the parser stopped at, if any.
    pub fn error(&self) -> Option<EnvelopeError> {
        match self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Feeds the next bytes of the stream. On an envelope error the parser
    /// stays failed; on a vendor error too (the stream cannot go on).
    pub fn feed<S: Sink>(
        &mut self,
        mut input: &[u8],
        sink: &mut S,
    ) -> Result<(), StreamError<S::Error>> {
        while !input.is_empty() {
            let window = self.window();
            let n = window.len().min(input.len());
            window[..n].copy_from_slice(&input[..n]);
            self.commit(n, sink)?;
            input = &input[n..];
        }
        Ok(())
    }

    /// Where the stream's next bytes go: the parser's own memory for the
    /// part it is reading (the rest of the header, a record's head, payload
    /// or checksum). A caller that copies the stream from elsewhere anyway
    /// (the kernel, from user memory) copies straight into it and then
    /// calls [`commit`](Self::commit), with no buffer of its own. Empty
    /// once the stream ended or failed (`commit` then says why).
    pub fn window(&mut self) -> &mut [u8] {
        match self.phase {
            Phase::Header => &mut self.header[self.fill..self.want],
            Phase::RecordHead => &mut self.small[self.fill..8],
            Phase::Checksum => &mut self.small[self.fill..4],
            Phase::Payload => &mut self.buf[self.fill..self.want],
            Phase::Done | Phase::Failed(_) => &mut [],
        }
    }

    /// Takes the first `n` bytes of [`window`](Self::window) as the
    /// stream's next bytes. Errors are as for [`feed`](Self::feed); once
    /// the stream ended or failed, that error whatever `n` is; otherwise an
    /// `n` larger than the window fails the stream (`Aborted`).
    pub fn commit<S: Sink>(&mut self, n: usize, sink: &mut S) -> Result<(), StreamError<S::Error>> {
        let r = if n > self.window().len() {
            match self.phase {
                Phase::Failed(e) => Err(e.into()),
                Phase::Done => Err(EnvelopeError::TrailingData.into()),
                _ => Err(EnvelopeError::Aborted.into()),
            }
        } else {
            self.step(n, sink)
        };
        r.map_err(|e| {
            self.phase = Phase::Failed(match e {
                StreamError::Envelope(env) => env,
                StreamError::Vendor(_) => EnvelopeError::Aborted,
            });
            e
        })
    }

    /// Declares the end of the input: fine only after the END record.
    pub fn finish(&self) -> Result<(), EnvelopeError> {
        match self.phase {
            Phase::Done => Ok(()),
            Phase::Failed(e) => Err(e),
            _ => Err(EnvelopeError::Truncated),
        }
    }

    /// Advances over `n` bytes just written to the window (at most its
    /// length; none only when the stream ended or failed, which it reports).
    fn step<S: Sink>(&mut self, n: usize, sink: &mut S) -> Result<(), StreamError<S::Error>> {
        match self.phase {
            Phase::Failed(e) => return Err(e.into()),
            Phase::Done => return Err(EnvelopeError::TrailingData.into()),
            Phase::Header => {
                self.advance(n);
                self.check_header_prefix()?;
                if self.fill == self.want && self.want == 20 {
                    let len = usize::from(le16(&self.header, 16));
                    self.want = HEADER_FIXED + len;
                } else if self.fill == self.want {
                    self.finish_header(sink)?;
                }
            }
            Phase::RecordHead | Phase::Checksum => {
                let want = if self.phase == Phase::RecordHead {
                    8
                } else {
                    4
                };
                self.advance(n);
                if self.fill == want {
                    if self.phase == Phase::RecordHead {
                        self.start_record()?;
                    } else {
                        self.finish_record(sink)?;
                    }
                }
            }
            Phase::Payload => {
                self.advance(n);
                if self.fill == self.want {
                    self.crc = self.crc.update(&self.buf[..self.want]);
                    self.phase = Phase::Checksum;
                    self.fill = 0;
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, n: usize) {
        self.fill += n;
        self.offset += n as u64;
    }

    /// Checks the header fields as soon as their bytes are in, so a foreign
    /// stream is refused at its first bytes.
    fn check_header_prefix(&self) -> Result<(), EnvelopeError> {
        let h = &self.header[..self.fill];
        let magic_len = h.len().min(8);
        if h[..magic_len] != MAGIC[..magic_len] {
            return Err(EnvelopeError::BadMagic);
        }
        if h.len() >= 10 && le16(h, 8) != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedEnvelopeVersion(le16(h, 8)));
        }
        if h.len() >= 20 {
            let vlen = usize::from(le16(h, 16));
            if le32(h, 12) != 0
                || le16(h, 18) != 0
                || vlen == 0
                || vlen > MAX_VERSION_LEN
                || usize::from(le16(h, 10)) != HEADER_FIXED + vlen
            {
                return Err(EnvelopeError::BadHeader);
            }
        }
        Ok(())
    }

    fn finish_header<S: Sink>(&mut self, sink: &mut S) -> Result<(), StreamError<S::Error>> {
        let body = self.want - 4;
        let crc = Crc32c::new().update(&self.header[..body]);
        if crc.value() != le32(&self.header, body) {
            return Err(EnvelopeError::ChecksumMismatch {
                offset: self.offset,
            }
            .into());
        }
        let version =
            core::str::from_utf8(&self.header[20..body]).map_err(|_| EnvelopeError::BadHeader)?;
        sink.check_version(version)
            .map_err(EnvelopeError::Incompatible)?;
        // Records chain on from the header's checksum.
        self.crc = crc;
        self.phase = Phase::RecordHead;
        self.fill = 0;
        Ok(())
    }

    fn start_record(&mut self) -> Result<(), EnvelopeError> {
        let h = self.small;
        self.kind = le16(&h, 0);
        self.tag = le16(&h, 2);
        let len = le32(&h, 4);
        let max = self.max_record();
        match self.kind {
            KIND_DATA if len == 0 => return Err(EnvelopeError::BadRecord),
            KIND_DATA if len as usize > max => {
                return Err(EnvelopeError::OversizeRecord {
                    len,
                    max: max as u32,
                })
            }
            KIND_DATA => {}
            KIND_END if len as usize == END_PAYLOAD && self.tag == 0 => {}
            _ => return Err(EnvelopeError::BadRecord),
        }
        if self.kind == KIND_END && max < END_PAYLOAD {
            return Err(EnvelopeError::OversizeRecord {
                len,
                max: max as u32,
            });
        }
        self.crc = self.crc.update(&h);
        self.want = len as usize;
        self.fill = 0;
        self.phase = Phase::Payload;
        Ok(())
    }

    fn finish_record<S: Sink>(&mut self, sink: &mut S) -> Result<(), StreamError<S::Error>> {
        if self.crc.value() != le32(&self.small, 0) {
            return Err(EnvelopeError::ChecksumMismatch {
                offset: self.offset,
            }
            .into());
        }
        self.fill = 0;
        if self.kind == KIND_END {
            let mut total = [0u8; 8];
            total.copy_from_slice(&self.buf[..8]);
            if u64::from_le_bytes(total) != self.data_bytes {
                return Err(EnvelopeError::BadRecord.into());
            }
            self.phase = Phase::Done;
            return Ok(());
        }
        self.data_bytes += self.want as u64;
        self.phase = Phase::RecordHead;
        sink.record(self.tag, &self.buf[..self.want])
            .map_err(StreamError::Vendor)
    }
}

/// Why the encoder refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The version string is empty or longer than 255 bytes.
    BadVersion,
    /// A DATA record must have 1 to [`MAX_RECORD_PAYLOAD`] bytes.
    BadLength,
    /// The call does not fit the encoder's state (payload beyond the record's
    /// length, a record closed early, anything after END).
    OutOfOrder,
}

/// A stream encoder. It produces the envelope bytes; the caller writes them
/// and the payload bytes out in order. It never buffers payload, so a save
/// session can stream a large device memory in bounded memory.
#[derive(Clone, Debug)]
pub struct Encoder {
    crc: Crc32c,
    remaining: u32,
    in_record: bool,
    ended: bool,
    data_bytes: u64,
}

/// An encoded header.
pub struct Header {
    bytes: [u8; HEADER_MAX],
    len: usize,
}

impl Header {
    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Encoder {
    /// Starts a stream from a device whose version string is `version`.
    pub fn new(version: &str) -> Result<(Encoder, Header), EncodeError> {
        let v = version.as_bytes();
        if v.is_empty() || v.len() > MAX_VERSION_LEN {
            return Err(EncodeError::BadVersion);
        }
        let mut h = Header {
            bytes: [0; HEADER_MAX],
            len: HEADER_FIXED + v.len(),
        };
        let b = &mut h.bytes;
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&ENVELOPE_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(h.len as u16).to_le_bytes());
        b[16..18].copy_from_slice(&(v.len() as u16).to_le_bytes());
        b[20..20 + v.len()].copy_from_slice(v);
        let body = 20 + v.len();
        let crc = Crc32c::new().update(&b[..body]);
        b[body..body + 4].copy_from_slice(&crc.value().to_le_bytes());
        let enc = Encoder {
            crc,
            remaining: 0,
            in_record: false,
            ended: false,
            data_bytes: 0,
        };
        Ok((enc, h))
    }

    /// Starts a DATA record of `len` payload bytes with the vendor's `tag`;
    /// returns the record head to write.
    pub fn begin(&mut self, tag: u16, len: usize) -> Result<[u8; 8], EncodeError> {
        if self.in_record || self.ended {
            return Err(EncodeError::OutOfOrder);
        }
        if len == 0 || len > MAX_RECORD_PAYLOAD {
            return Err(EncodeError::BadLength);
        }
        let head = Self::head(KIND_DATA, tag, len as u32);
        self.crc = self.crc.update(&head);
        self.remaining = len as u32;
        self.in_record = true;
        self.data_bytes += len as u64;
        Ok(head)
    }

    /// Accounts for payload bytes about to be written.
    pub fn payload(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        if !self.in_record || data.len() > self.remaining as usize {
            return Err(EncodeError::OutOfOrder);
        }
        self.crc = self.crc.update(data);
        self.remaining -= data.len() as u32;
        Ok(())
    }

    /// Ends the record once all its payload went through
    /// [`Encoder::payload`]; returns the checksum bytes to write.
    pub fn end_record(&mut self) -> Result<[u8; 4], EncodeError> {
        if !self.in_record || self.remaining != 0 {
            return Err(EncodeError::OutOfOrder);
        }
        self.in_record = false;
        Ok(self.seal())
    }

    /// Ends the stream; returns the END record to write.
    pub fn end(&mut self) -> Result<[u8; END_LEN], EncodeError> {
        if self.in_record || self.ended {
            return Err(EncodeError::OutOfOrder);
        }
        let mut out = [0u8; END_LEN];
        out[..8].copy_from_slice(&Self::head(KIND_END, 0, 8));
        out[8..16].copy_from_slice(&self.data_bytes.to_le_bytes());
        self.crc = self.crc.update(&out[..16]);
        let crc = self.seal();
        out[16..].copy_from_slice(&crc);
        self.ended = true;
        Ok(out)
    }

    /// Whether [`Encoder::end`] was called.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    fn head(kind: u16, tag: u16, len: u32) -> [u8; 8] {
        let mut h = [0u8; 8];
        h[..2].copy_from_slice(&kind.to_le_bytes());
        h[2..4].copy_from_slice(&tag.to_le_bytes());
        h[4..].copy_from_slice(&len.to_le_bytes());
        h
    }

    fn seal(&mut self) -> [u8; 4] {
        self.crc.value().to_le_bytes()
    }
}
