// SPDX-License-Identifier: GPL-2.0

//! The user's mailbox: the PF's side of the 82576 VF mailbox, emulated by
//! the vendor (the VF's real mailbox is the vendor's, [`super::mailbox`]).
//!
//! The user (a guest's igbvf driver) sees V2PMAILBOX (0x0c40) and the
//! 16-word buffer VMBMEM (0x0800-0x083c) as on the VF: it takes the buffer
//! (VFU), writes a message, requests (REQ), and waits for the PF's
//! acknowledgement (PFACK) and reply (PFSTS), which a read of V2PMAILBOX
//! clears. The REQ write sets PFACK; the vendor answers in it while the
//! device runs, and when it runs again otherwise (nothing of the device
//! changes while it is stopped):
//!
//! - `VF_RESET`: the vendor resets the VF and makes the handshake with the
//!   PF's igb itself (at most once a second; a reset asked again sooner is
//!   answered with the last handshake's result); the reply is
//!   `VF_RESET | ACK` with the MAC address the operator gave the VF (`ip
//!   link set <pf> vf <n> mac ...`), or `VF_RESET | NACK` if it has none.
//!   If the PF does not answer the vendor (its interface is down), the
//!   user gets PFACK and no reply, as from a PF that does not answer.
//! - every other message (MAC, multicast, VLAN, packet size requests):
//!   `NACK`, nothing changed; what the VF may use is the operator's. After
//!   a `VF_RESET` reply the replies carry CTS (clear to send), as igb's do.
//! - a message that carries ACK or NACK already (a reply sent back): only
//!   PFACK, as igb ignores it.
//!
//! A reply raises the mailbox cause on the vector IVAR_MISC routes it to.

use kernel::prelude::*;

/// The registers (VF BAR0 offsets).
pub(crate) const V2PMAILBOX: u64 = 0x0c40;
pub(crate) const VMBMEM: u64 = 0x0800;
const WORDS: usize = 16;
/// V2PMAILBOX bits.
const REQ: u32 = 1 << 0;
const VFU: u32 = 1 << 2;
const PFSTS: u32 = 1 << 4;
const PFACK: u32 = 1 << 5;
/// The bits the vendor keeps: the buffer's lock, the read-clear ones and
/// its own.
const STATE_BITS: u32 = VFU | PFSTS | PFACK | PENDING | CTS;
/// The bits a read of V2PMAILBOX shows.
const REGISTER_BITS: u32 = VFU | PFSTS | PFACK;
/// Messages (word 0: type in bits 15:0, then information, then flags).
const VF_RESET: u32 = 0x01;
const MSG_TYPE: u32 = 0xffff;
const MSG_ACK: u32 = 1 << 31;
const MSG_NACK: u32 = 1 << 30;
const MSG_CTS: u32 = 1 << 29;
/// State bits that are not V2PMAILBOX's: a request waits for the device to
/// run; replies carry CTS (a `VF_RESET` was answered).
const PENDING: u32 = 1 << 16;
const CTS: u32 = 1 << 17;
/// The stream record: the 16 words, then the state bits.
pub(crate) const RECORD_LEN: usize = 4 * (WORDS + 1);

/// What a pending request asks of the vendor.
pub(crate) enum Request {
    /// Nothing (none pending, or one that needs no answer).
    None,
    /// A `VF_RESET`: the vendor resets the VF and tells
    /// [`UserMailbox::reset_done`] what the PF said.
    Reset,
    /// Another message: [`UserMailbox::refuse`].
    Other,
}

/// The user's side of the mailbox.
#[derive(Clone, Copy, Default)]
pub(crate) struct UserMailbox {
    mem: [u32; WORDS],
    /// VFU, PFSTS, PFACK, PENDING, CTS.
    bits: u32,
}

impl UserMailbox {
    /// Whether `offset` is one of the mailbox's registers.
    pub(crate) fn owns(offset: u64) -> bool {
        offset == V2PMAILBOX
            || (offset % 4 == 0 && (VMBMEM..VMBMEM + 4 * WORDS as u64).contains(&offset))
    }

    /// The user reads a register; a read of V2PMAILBOX clears PFSTS and
    /// PFACK.
    pub(crate) fn read(&mut self, offset: u64) -> u32 {
        if offset == V2PMAILBOX {
            let v = self.bits & REGISTER_BITS;
            self.bits &= !(PFSTS | PFACK);
            return v;
        }
        self.mem.get(word(offset)).copied().unwrap_or(0)
    }

    /// The user writes a register; whether it posted a request (REQ).
    pub(crate) fn write(&mut self, offset: u64, value: u32) -> bool {
        if offset != V2PMAILBOX {
            if let Some(w) = self.mem.get_mut(word(offset)) {
                *w = value;
            }
            return false;
        }
        // VFU is a lock the user holds while the bit is written as 1.
        self.bits = (self.bits & !VFU) | (value & VFU);
        if value & REQ == 0 {
            return false;
        }
        // The PF took the message; the answer may wait.
        self.bits |= PFACK | PENDING;
        true
    }

    /// Takes the pending request, if any.
    pub(crate) fn take_request(&mut self) -> Request {
        if self.bits & PENDING == 0 {
            return Request::None;
        }
        self.bits &= !PENDING;
        let msg = self.mem[0];
        if msg & (MSG_ACK | MSG_NACK) != 0 {
            Request::None
        } else if msg == VF_RESET {
            Request::Reset
        } else {
            Request::Other
        }
    }

    /// Refuses the message in the buffer; there is a reply.
    pub(crate) fn refuse(&mut self) -> bool {
        let cts = if self.bits & CTS != 0 { MSG_CTS } else { 0 };
        self.mem[0] = (self.mem[0] & MSG_TYPE) | MSG_NACK | cts;
        self.bits |= PFSTS;
        true
    }

    /// The vendor's reset of the VF is done: `Ok(mac)` what the PF told it
    /// (`None`: no address set), `Err` the PF did not answer (no reply).
    /// Whether a reply is there.
    pub(crate) fn reset_done(&mut self, result: Result<Option<[u8; 6]>>) -> bool {
        let Ok(mac) = result else {
            return false;
        };
        self.mem = [0; WORDS];
        self.bits |= CTS;
        match mac {
            Some(m) => {
                self.mem[0] = VF_RESET | MSG_ACK;
                self.mem[1] = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
                self.mem[2] = u32::from_le_bytes([m[4], m[5], 0, 0]);
            }
            None => self.mem[0] = VF_RESET | MSG_NACK,
        }
        self.bits |= PFSTS;
        true
    }

    /// The state as the stream carries it.
    pub(crate) fn to_record(self, out: &mut [u8]) -> Result {
        let mut words = [0u32; WORDS + 1];
        words[..WORDS].copy_from_slice(&self.mem);
        words[WORDS] = self.bits;
        super::put_words(out, &words)
    }

    /// The state from a stream record, checked: only the kept bits.
    pub(crate) fn from_record(rec: &[u8]) -> Result<Self> {
        let w: [u32; WORDS + 1] = super::get_words(rec)?;
        let mut m = UserMailbox::default();
        m.mem.copy_from_slice(&w[..WORDS]);
        m.bits = w[WORDS];
        if m.bits & !STATE_BITS != 0 {
            return Err(EINVAL);
        }
        Ok(m)
    }
}

/// The buffer word at `offset` (an index past the buffer if not in it).
fn word(offset: u64) -> usize {
    usize::try_from(offset.wrapping_sub(VMBMEM) / 4).unwrap_or(usize::MAX)
}
