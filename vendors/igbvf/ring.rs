// SPDX-License-Identifier: GPL-2.0

//! A descriptor ring as its user programs it: base address, length, head
//! and tail, the same five registers for the transmit and the receive
//! queue (`TDBAL`..`TDT`, `RDBAL`..`RDT`), with the same masks. Both
//! queues' rings are arrays of 16-byte descriptors in the user's memory,
//! reached by IOVA, and the stream checks both alike. Both queues also
//! check their ring in the VF alike ([`hw_ring_lost`]).

use kernel::prelude::*;

use super::rmdev::pci::Bar;

/// The bytes of a descriptor (advanced descriptors, both queues).
pub(crate) const DESC: usize = 16;
/// What the base address's low register keeps (128-byte aligned).
pub(crate) const BAL_MASK: u32 = !0x7f;
/// What the length register keeps (a multiple of 128 bytes, below 1 MiB).
pub(crate) const RING_LEN_MASK: u32 = 0x000f_ff80;

/// Whether the VF lost a ring of `descs` descriptors the vendor programmed
/// into it (a PF reset clears the VF's registers behind the vendor's back).
/// One register tells: the ring's length, `len_reg`, which the vendor
/// alone sets, to a value other than its reset value 0 (each read of the
/// VF's BAR is costly: one register it is).
pub(crate) fn hw_ring_lost(bar: &Bar, len_reg: u64, descs: usize) -> bool {
    bar.read32(len_reg as usize).ok() != Some((descs * DESC) as u32)
}

/// The ring's registers as the user wrote them (masked).
#[derive(Clone, Copy, Default)]
pub(crate) struct RingRegs {
    /// The base address, low half.
    pub(crate) bal: u32,
    /// The base address, high half.
    pub(crate) bah: u32,
    /// The length in bytes.
    pub(crate) len: u32,
    /// The head: the next descriptor the device uses.
    pub(crate) head: u32,
    /// The tail: the descriptor after the last one the user gave.
    pub(crate) tail: u32,
}

impl RingRegs {
    /// The ring's IOVA.
    pub(crate) fn base(&self) -> u64 {
        (u64::from(self.bah) << 32) | u64::from(self.bal)
    }

    /// The IOVA of descriptor `i`; `EINVAL` past the address space.
    pub(crate) fn desc_at(&self, i: u32) -> Result<u64> {
        self.base()
            .checked_add(u64::from(i) * DESC as u64)
            .ok_or(EINVAL)
    }

    /// Whether the ring ends inside the address space (a ring that does
    /// not is never enabled).
    pub(crate) fn fits(&self) -> bool {
        self.base().checked_add(u64::from(self.len)).is_some()
    }

    /// Descriptors in the ring.
    pub(crate) fn count(&self) -> u32 {
        self.len / DESC as u32
    }

    /// Whether values from a stream are ones a user could have programmed:
    /// within the masks, head and tail inside the ring (0 for an empty
    /// one), the ring inside the address space.
    pub(crate) fn valid(&self) -> bool {
        let n = self.count();
        let inside = |i: u32| i == 0 || i < n;
        self.bal & !BAL_MASK == 0
            && self.len & !RING_LEN_MASK == 0
            && inside(self.head)
            && inside(self.tail)
            && self.fits()
    }
}
