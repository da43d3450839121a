// SPDX-License-Identifier: GPL-2.0

//! The VF's mailbox to its PF, which the vendor holds (the user never
//! reaches it): the function reset and the `VF_RESET` handshake, after
//! which the PF's igb driver enables the VF's transmit and receive pools
//! and tells its MAC address, if the operator set one.
//!
//! The protocol is the 82576's (`drivers/net/ethernet/intel/igbvf/mbx.c`
//! and `vf.c` in the kernel tree): lock the buffer (VFU), write the
//! message, request (REQ), wait for the PF's acknowledgement (PFACK), wait
//! for its reply (PFSTS), lock, read, acknowledge (ACK). PFACK, PFSTS and
//! RSTD clear when read, so what a read saw is kept until it is used.

use kernel::prelude::*;

use super::rmdev::pci::{sleep_ms, timed_out, Bar};

/// CTRL and its function-reset bit.
const CTRL: usize = 0x0000;
const CTRL_RST: u32 = 1 << 26;
/// The mailbox control register and its bits.
const V2PMAILBOX: usize = 0x0c40;
const REQ: u32 = 1 << 0;
const ACK: u32 = 1 << 1;
const VFU: u32 = 1 << 2;
const PFSTS: u32 = 1 << 4;
const PFACK: u32 = 1 << 5;
const RSTI: u32 = 1 << 6;
const RSTD: u32 = 1 << 7;
/// The bits a read clears.
const READ_CLEARS: u32 = PFSTS | PFACK | RSTD;
/// The message buffer (16 words).
const VMBMEM: usize = 0x0800;
/// Message types and flags (word 0).
const VF_RESET: u32 = 0x01;
const MSG_ACK: u32 = 1 << 31;
const MSG_NACK: u32 = 1 << 30;
/// How many 1 ms waits the PF may take to answer (the igbvf driver
/// waits 1 s; the PF answers from its interrupt handler).
const PF_TIMEOUT_MS: u32 = 1000;

/// The mailbox's state: the read-clear bits seen but not used yet.
#[derive(Default)]
pub(crate) struct Mailbox {
    seen: u32,
}

impl Mailbox {
    /// The control bits now, with those seen before.
    fn bits(&mut self, bar: &Bar) -> Result<u32> {
        let v = bar.read32(V2PMAILBOX)?;
        self.seen |= v & READ_CLEARS;
        Ok(v | self.seen)
    }

    /// Whether one of `mask` is set; uses them up.
    fn take(&mut self, bar: &Bar, mask: u32) -> Result<bool> {
        let hit = self.bits(bar)? & mask != 0;
        self.seen &= !mask;
        Ok(hit)
    }

    /// Waits up to [`PF_TIMEOUT_MS`] for one of `mask`.
    fn wait(&mut self, bar: &Bar, mask: u32) -> Result {
        for _ in 0..PF_TIMEOUT_MS {
            if self.take(bar, mask)? {
                return Ok(());
            }
            sleep_ms(1);
        }
        Err(timed_out())
    }

    /// Takes the message buffer.
    fn lock(&mut self, bar: &Bar) -> Result {
        for _ in 0..10 {
            bar.write32(V2PMAILBOX, VFU)?;
            if self.bits(bar)? & VFU != 0 {
                return Ok(());
            }
            sleep_ms(1);
        }
        Err(EBUSY)
    }

    /// Resets the function and makes the `VF_RESET` handshake with the PF.
    /// Returns the MAC address the operator gave the VF (`None`: none, the
    /// PF answered NACK). `ETIMEDOUT` when the PF does not answer (its
    /// interface is down: igb handles the mailbox in its interrupt
    /// handler).
    pub(crate) fn reset(&mut self, bar: &Bar) -> Result<Option<[u8; 6]>> {
        bar.write32(CTRL, CTRL_RST)?;
        // The PF sees the reset (VFLRE) and resets the VF's state; no
        // message may go before it completed.
        let mut settled = false;
        for _ in 0..200 {
            sleep_ms(1);
            if !self.take(bar, RSTI | RSTD)? {
                settled = true;
                break;
            }
        }
        if !settled {
            return Err(timed_out());
        }
        self.lock(bar)?;
        // Stale acknowledgements would answer this message.
        self.take(bar, PFSTS | PFACK)?;
        bar.write32(VMBMEM, VF_RESET)?;
        bar.write32(V2PMAILBOX, REQ)?;
        self.wait(bar, PFACK)?;
        self.wait(bar, PFSTS)?;
        self.lock(bar)?;
        let w0 = bar.read32(VMBMEM)?;
        let w1 = bar.read32(VMBMEM + 4)?;
        let w2 = bar.read32(VMBMEM + 8)?;
        bar.write32(V2PMAILBOX, ACK)?;
        if w0 == VF_RESET | MSG_ACK {
            let (a, b) = (w1.to_le_bytes(), w2.to_le_bytes());
            Ok(Some([a[0], a[1], a[2], a[3], b[0], b[1]]))
        } else if w0 == VF_RESET | MSG_NACK {
            Ok(None)
        } else {
            Err(EIO)
        }
    }
}
