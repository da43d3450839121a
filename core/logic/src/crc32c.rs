// SPDX-License-Identifier: GPL-2.0

//! CRC-32C (Castagnoli), the checksum of the migration stream envelope.
//!
//! CRC-32C is the checksum of iSCSI, SCTP, ext4 and btrfs metadata. Over the
//! lengths used here it detects every error of up to three flipped bits, every
//! odd number of flipped bits and every burst of up to 32 bits, with better
//! Hamming distance than the IEEE CRC-32 at these lengths; x86 (SSE4.2) and
//! arm64 compute it in hardware, so the kernel can later swap this software
//! version for `crc32c()` without changing the stream format. It is not a
//! cryptographic MAC: the stream comes from the device's privileged user, and
//! the checksum is there to catch corruption and truncation, not forgery.
//!
//! This is the reflected polynomial 0x82F63B78, initial value and final XOR
//! `0xFFFF_FFFF`, computed slicing-by-8 with tables built at compile time.

const POLY: u32 = 0x82F6_3B78;

const fn make_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = make_tables();

/// A running CRC-32C.
///
/// `Crc32c::new().update(a).update(b).value()` equals the CRC of `a ++ b`, so
/// a stream can be checked in any segmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// The CRC of no data.
    pub const fn new() -> Self {
        Self(0xFFFF_FFFF)
    }

    /// Feeds `data`.
    #[must_use]
    pub fn update(self, data: &[u8]) -> Self {
        let mut c = self.0;
        let mut chunks = data.chunks_exact(8);
        for ch in &mut chunks {
            let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
            let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
            c = TABLES[7][(lo & 0xff) as usize]
                ^ TABLES[6][((lo >> 8) & 0xff) as usize]
                ^ TABLES[5][((lo >> 16) & 0xff) as usize]
                ^ TABLES[4][(lo >> 24) as usize]
                ^ TABLES[3][(hi & 0xff) as usize]
                ^ TABLES[2][((hi >> 8) & 0xff) as usize]
                ^ TABLES[1][((hi >> 16) & 0xff) as usize]
                ^ TABLES[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            c = (c >> 8) ^ TABLES[0][((c ^ u32::from(b)) & 0xff) as usize];
        }
        Self(c)
    }

    /// The CRC of everything fed so far.
    pub const fn value(self) -> u32 {
        !self.0
    }
}

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    Crc32c::new().update(data).value()
}
