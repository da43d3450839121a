// SPDX-License-Identifier: GPL-2.0

//! The VF's interrupt registers, emulated: the user's MSI-X vectors are
//! raised by the vendor, never by the VF's hardware (whose own MSI-X
//! vector is the vendor's, programmed by the vendor alone: nothing the
//! user programs here reaches the hardware).
//!
//! The 82576 VF has three MSI-X vectors; each has one cause bit in EICR
//! (bits 0 to 2). IVAR0 routes queue causes to vectors (byte 0: receive
//! queue 0, byte 1: transmit queue 0, each a vector number in bits 1:0 and
//! a valid bit 7); a cause raised
//! on a vector sets its EICR bit, and the vector's message is sent when its
//! bit becomes both set in EICR and enabled in EIMS. Sending it clears the
//! cause when the vector is in EIAC (auto-clear) and the enable when it is
//! in EIAM (auto-mask). EICR reads clear it and 1s written clear those
//! bits; EICS sets causes, and enables again those of its vectors that are
//! in EIAM (Linux's igbvf relies on that to fire a masked vector once
//! more); EIMS sets enables, EIMC clears them.

use kernel::prelude::*;

/// The registers (VF BAR0 offsets).
pub(crate) const EICS: u64 = 0x1520;
pub(crate) const EIMS: u64 = 0x1524;
pub(crate) const EIMC: u64 = 0x1528;
pub(crate) const EIAC: u64 = 0x152c;
pub(crate) const EIAM: u64 = 0x1530;
pub(crate) const EICR: u64 = 0x1580;
pub(crate) const IVAR0: u64 = 0x1700;
pub(crate) const IVAR_MISC: u64 = 0x1740;

/// The VF's MSI-X vectors, one EICR bit each.
pub(crate) const VECTORS: u16 = 3;
const VECTOR_BITS: u32 = (1 << VECTORS) - 1;
/// An IVAR entry: vector (bits 1:0) and valid (bit 7).
const IVAR_ENTRY: u32 = 0x83;
const IVAR_VALID: u32 = 0x80;
/// IVAR0: four entries (receive 0, transmit 0, receive 1, transmit 1).
const IVAR0_BITS: u32 = 0x8383_8383;
/// The stream record's length: EICR, EIMS, EIAC, EIAM, IVAR0, IVAR_MISC.
pub(crate) const RECORD_LEN: usize = 24;

/// The user's interrupt registers.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct IntrRegs {
    eicr: u32,
    eims: u32,
    eiac: u32,
    eiam: u32,
    ivar0: u32,
    ivar_misc: u32,
}

impl IntrRegs {
    /// Whether `offset` is one of the registers.
    pub(crate) fn owns(offset: u64) -> bool {
        matches!(
            offset,
            EICS | EIMS | EIMC | EIAC | EIAM | EICR | IVAR0 | IVAR_MISC
        )
    }

    /// The user reads a register; reading EICR clears it.
    pub(crate) fn read(&mut self, offset: u64) -> u32 {
        match offset {
            EIMS => self.eims,
            EIAC => self.eiac,
            EIAM => self.eiam,
            EICR => core::mem::take(&mut self.eicr),
            IVAR0 => self.ivar0,
            IVAR_MISC => self.ivar_misc,
            // EICS and EIMC are write-only.
            _ => 0,
        }
    }

    /// The user writes a register; returns the vectors whose message is
    /// now sent (a bit per vector).
    #[must_use]
    pub(crate) fn write(&mut self, offset: u64, value: u32) -> u32 {
        let active = self.active();
        let v = value & VECTOR_BITS;
        match offset {
            EICS => {
                self.eims |= v & self.eiam;
                self.eicr |= v;
            }
            EIMS => self.eims |= v,
            EIMC => self.eims &= !v,
            EIAC => self.eiac = v,
            EIAM => self.eiam = v,
            EICR => self.eicr &= !v,
            IVAR0 => self.ivar0 = value & IVAR0_BITS,
            IVAR_MISC => self.ivar_misc = value & IVAR_ENTRY,
            _ => {}
        }
        self.send(active)
    }

    /// Transmit queue 0 completed descriptors: its cause goes to the
    /// vector IVAR0 routes it to, if valid. Returns the vectors sent.
    #[must_use]
    pub(crate) fn tx_done(&mut self) -> u32 {
        self.cause((self.ivar0 >> 8) & IVAR_ENTRY)
    }

    /// Receive queue 0 wrote descriptors back: its cause goes to the
    /// vector IVAR0 routes it to (byte 0), if valid. Returns the vectors
    /// sent.
    #[must_use]
    pub(crate) fn rx_done(&mut self) -> u32 {
        self.cause(self.ivar0 & IVAR_ENTRY)
    }

    /// The PF (the vendor) answered on the mailbox: its cause goes to the
    /// vector IVAR_MISC routes it to, if valid. Returns the vectors sent.
    #[must_use]
    pub(crate) fn mailbox_done(&mut self) -> u32 {
        self.cause(self.ivar_misc & IVAR_ENTRY)
    }

    /// A cause on the vector of IVAR entry `entry`, if valid.
    fn cause(&mut self, entry: u32) -> u32 {
        let vector = entry & 0x3;
        if entry & IVAR_VALID == 0 || u32::from(VECTORS) <= vector {
            return 0;
        }
        let active = self.active();
        self.eicr |= 1 << vector;
        self.send(active)
    }

    /// The causes that are set and enabled.
    fn active(&self) -> u32 {
        self.eicr & self.eims
    }

    /// Sends the vectors that became active since `before` were, with
    /// their auto-clear and auto-mask.
    fn send(&mut self, before: u32) -> u32 {
        let fire = self.active() & !before;
        self.eicr &= !(fire & self.eiac);
        self.eims &= !(fire & self.eiam);
        fire
    }

    /// The registers as the stream carries them.
    pub(crate) fn to_record(self, out: &mut [u8]) -> Result {
        let words = [
            self.eicr,
            self.eims,
            self.eiac,
            self.eiam,
            self.ivar0,
            self.ivar_misc,
        ];
        super::put_words(out, &words)
    }

    /// The registers from a stream record, checked: only values a user
    /// could have programmed.
    pub(crate) fn from_record(rec: &[u8]) -> Result<Self> {
        let w: [u32; RECORD_LEN / 4] = super::get_words(rec)?;
        let r = IntrRegs {
            eicr: w[0],
            eims: w[1],
            eiac: w[2],
            eiam: w[3],
            ivar0: w[4],
            ivar_misc: w[5],
        };
        let vectors_only = [r.eicr, r.eims, r.eiac, r.eiam]
            .iter()
            .all(|v| v & !VECTOR_BITS == 0);
        if !vectors_only || r.ivar0 & !IVAR0_BITS != 0 || r.ivar_misc & !IVAR_ENTRY != 0 {
            return Err(EINVAL);
        }
        Ok(r)
    }
}
