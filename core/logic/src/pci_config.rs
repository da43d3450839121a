// SPDX-License-Identifier: GPL-2.0

//! An emulated PCI configuration space (a type 0 header, 256 bytes) for
//! mdevs that present themselves as PCI functions through vfio-pci's region
//! layout.
//!
//! It behaves like a real function's registers, which is what QEMU's
//! vfio-pci expects when it realizes, resets and migrates a device:
//!
//! - identity (vendor, device, revision, class, subsystem ids), the header
//!   type and the capabilities pointer are read-only;
//! - every BAR has the size-probing behaviour of hardware: writing all ones
//!   reads back the size mask with the type bits, whatever was there; a
//!   64-bit BAR spans two dwords; an absent BAR reads 0 and ignores writes;
//! - the expansion ROM BAR reads 0 (no ROM) and ignores writes;
//! - command (I/O and memory decoding, bus master, parity and SERR response,
//!   INTx disable), cache line size, latency timer and interrupt line are
//!   read-write; the status register's error bits are write-1-to-clear;
//! - an optional capability list, each capability's bytes read-only unless
//!   its write mask says otherwise;
//! - writes are accepted at any offset and length within the space and
//!   applied byte by byte through the masks, so a write always consumes its
//!   full count; reads and writes outside it are refused.
//!
//! The masks follow the model real devices (and QEMU's own PCI devices)
//! use: a write mask and a write-1-to-clear mask per byte.

use core::fmt;

/// The size of the emulated space (a conventional PCI function).
pub const CONFIG_SIZE: usize = 256;

/// Register offsets of the type 0 header.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: usize = 0x02;
    /// Command (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status (16 bits).
    pub const STATUS: usize = 0x06;
    /// Revision ID.
    pub const REVISION: usize = 0x08;
    /// Class code (programming interface, subclass, class: 24 bits).
    pub const CLASS: usize = 0x09;
    /// Cache line size.
    pub const CACHE_LINE: usize = 0x0c;
    /// Latency timer.
    pub const LATENCY: usize = 0x0d;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0e;
    /// The first BAR; BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID.
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Expansion ROM base address.
    pub const ROM: usize = 0x30;
    /// Capabilities pointer.
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line.
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (0: none, 1 to 4: INTA# to INTD#).
    pub const INTERRUPT_PIN: usize = 0x3d;
    /// The first byte after the header: capabilities live from here on.
    pub const HEADER_END: usize = 0x40;
}

/// Command register bits.
pub mod command {
    /// I/O space decoding.
    pub const IO: u16 = 1 << 0;
    /// Memory space decoding.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus master.
    pub const MASTER: u16 = 1 << 2;
    /// Parity error response.
    pub const PARITY: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// INTx emulation disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits.
pub mod status {
    /// INTx is asserted (read-only, reflects the device).
    pub const INTERRUPT: u16 = 1 << 3;
    /// The function has a capability list.
    pub const CAP_LIST: u16 = 1 << 4;
    /// The error bits, write-1-to-clear: master data parity error, signaled
    /// and received target abort, received master abort, signaled system
    /// error, detected parity error.
    pub const ERRORS_W1C: u16 = 0xf900;
}

/// The number of BARs of a type 0 header.
pub const NUM_BARS: usize = 6;

/// What a BAR maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory; takes this BAR and the next.
    Mem64 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O space.
    Io,
}

/// One BAR of the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// The BAR's index, 0 to 5 (a 64-bit BAR also uses `index + 1`).
    pub index: usize,
    /// Size in bytes: a power of two, at least 16 for memory and 4 for I/O,
    /// at most 2 GiB for a 32-bit memory BAR and 256 bytes for I/O.
    pub size: u64,
    /// What it maps.
    pub kind: BarKind,
}

/// The function's identity (read-only registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class, subclass and programming interface, as
    /// `0x00BBSSPP`.
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Interrupt pin: 0 for none, 1 to 4 for INTA# to INTD#.
    pub interrupt_pin: u8,
}

/// One capability of the list: its ID, its body (the bytes after the ID
/// and next pointer) and which bits of the body software may write.
#[derive(Clone, Copy, Debug)]
pub struct Capability<'a> {
    /// Capability ID (`PCI_CAP_ID_*`).
    pub id: u8,
    /// The capability's bytes after its two-byte header.
    pub body: &'a [u8],
    /// Write mask of the body: empty for read-only, else `body.len()` bytes.
    pub wmask: &'a [u8],
}

/// Where a function's MSI-X table and pending-bit array (PBA) live, and how
/// many vectors it has: the body of its MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msix {
    /// Number of vectors, 1 to 2048.
    pub vectors: u16,
    /// The BAR (0 to 5) holding the table and the PBA.
    pub bar: usize,
    /// The table's offset in the BAR: 16 bytes per vector.
    pub table_offset: u32,
    /// The PBA's offset in the BAR: one bit per vector, in 64-bit words.
    pub pba_offset: u32,
}

/// The MSI-X capability's ID (`PCI_CAP_ID_MSIX`).
pub const CAP_ID_MSIX: u8 = 0x11;

impl Msix {
    /// The capability's write mask: only the message control's function
    /// mask (bit 14) and enable (bit 15) are writable.
    pub const WMASK: [u8; 10] = [0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// The table's length in bytes.
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * 16
    }

    /// The PBA's length in bytes.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// Whether `[offset, offset + len)` of the BAR touches the table (an
    /// empty range touches nothing).
    pub fn in_table(&self, offset: u64, len: u64) -> bool {
        let start = u64::from(self.table_offset);
        len > 0 && offset < start + self.table_len() && start < offset.saturating_add(len)
    }

    /// Checks the layout against the function's BARs: a memory BAR holds
    /// the table and the PBA, both 8-byte aligned, inside it and apart.
    pub fn check(&self, bars: &[Bar]) -> Result<(), ConfigError> {
        let bad = Err(ConfigError::BadMsix);
        if !(1..=2048).contains(&self.vectors) {
            return bad;
        }
        let Some(bar) = bars.iter().find(|b| b.index == self.bar) else {
            return bad;
        };
        if bar.kind == BarKind::Io {
            return bad;
        }
        let (t, p) = (u64::from(self.table_offset), u64::from(self.pba_offset));
        let (tl, pl) = (self.table_len(), self.pba_len());
        let apart = t + tl <= p || p + pl <= t;
        if t % 8 != 0 || p % 8 != 0 || t + tl > bar.size || p + pl > bar.size || !apart {
            return bad;
        }
        Ok(())
    }

    /// The capability's body after its header: message control (table size
    /// minus one; masked and disabled), table offset and BIR, PBA offset
    /// and BIR.
    pub fn body(&self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..2].copy_from_slice(&(self.vectors.saturating_sub(1) & 0x7ff).to_le_bytes());
        b[2..6].copy_from_slice(&(self.table_offset | self.bar as u32).to_le_bytes());
        b[6..].copy_from_slice(&(self.pba_offset | self.bar as u32).to_le_bytes());
        b
    }
}

/// Why a configuration space cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A BAR's index is beyond 5, or a 64-bit BAR starts at 5.
    BadBarIndex(usize),
    /// Two BARs use the same slot.
    OverlappingBars(usize),
    /// A BAR's size is not a power of two in its kind's range.
    BadBarSize(usize),
    /// The interrupt pin is beyond 4.
    BadInterruptPin(u8),
    /// The capabilities do not fit in the space, or a write mask's length
    /// differs from its body's.
    BadCapabilities,
    /// The MSI-X table or PBA is not 8-byte aligned, not inside a memory
    /// BAR of the function, or they overlap; or the vector count is not 1
    /// to 2048.
    BadMsix,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadBarIndex(i) => write!(f, "BAR {i} does not exist (0 to 5; a 64-bit BAR takes two)"),
            ConfigError::OverlappingBars(i) => write!(f, "BAR slot {i} is used twice"),
            ConfigError::BadBarSize(i) => write!(
                f,
                "BAR {i}: the size must be a power of two, 16 B to 2 GiB (32-bit), 16 B or more (64-bit), 4 to 256 B (I/O)"
            ),
            ConfigError::BadInterruptPin(p) => write!(f, "interrupt pin {p} (0 to 4)"),
            ConfigError::BadCapabilities => f.write_str(
                "the capabilities do not fit in the 192 bytes after the header, or a write mask's length differs from its body's",
            ),
            ConfigError::BadMsix => f.write_str(
                "MSI-X: 1 to 2048 vectors, the table and the PBA 8-byte aligned, apart, inside one memory BAR",
            ),
        }
    }
}

/// Why an access is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// The range is empty or not inside the space.
    OutOfRange,
    /// A saved space of another size, or from a function whose read-only
    /// registers differ.
    Mismatch,
}

/// An emulated configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    /// The current contents.
    bytes: [u8; CONFIG_SIZE],
    /// The contents after a reset.
    reset: [u8; CONFIG_SIZE],
    /// Bits software may write.
    wmask: [u8; CONFIG_SIZE],
    /// Bits a 1 clears.
    w1cmask: [u8; CONFIG_SIZE],
    /// The BAR sizes by slot (0: absent or the upper half of a 64-bit BAR).
    sizes: [u64; NUM_BARS],
}

fn put16(b: &mut [u8; CONFIG_SIZE], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8; CONFIG_SIZE], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get16(b: &[u8; CONFIG_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn get32(b: &[u8; CONFIG_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ConfigSpace {
    /// A function with `id`, `bars` and `caps` (laid out from offset 0x40
    /// in order, each dword-aligned), in its reset state.
    pub fn new(id: &Identity, bars: &[Bar], caps: &[Capability<'_>]) -> Result<Self, ConfigError> {
        let mut b = [0u8; CONFIG_SIZE];
        let mut wmask = [0u8; CONFIG_SIZE];
        let mut w1cmask = [0u8; CONFIG_SIZE];
        let mut sizes = [0u64; NUM_BARS];
        let mut used = [false; NUM_BARS];
        if id.interrupt_pin > 4 {
            return Err(ConfigError::BadInterruptPin(id.interrupt_pin));
        }
        put16(&mut b, reg::VENDOR_ID, id.vendor);
        put16(&mut b, reg::DEVICE_ID, id.device);
        b[reg::REVISION] = id.revision;
        b[reg::CLASS] = id.class as u8;
        b[reg::CLASS + 1] = (id.class >> 8) as u8;
        b[reg::CLASS + 2] = (id.class >> 16) as u8;
        put16(&mut b, reg::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        put16(&mut b, reg::SUBSYSTEM_ID, id.subsystem);
        b[reg::INTERRUPT_PIN] = id.interrupt_pin;

        let mut cmd_mask = command::MASTER | command::PARITY | command::SERR;
        if id.interrupt_pin != 0 {
            cmd_mask |= command::INTX_DISABLE;
        }
        for bar in bars {
            let i = bar.index;
            let wide = matches!(bar.kind, BarKind::Mem64 { .. });
            if i >= NUM_BARS || (wide && i + 1 >= NUM_BARS) {
                return Err(ConfigError::BadBarIndex(i));
            }
            for slot in [Some(i), wide.then_some(i + 1)].into_iter().flatten() {
                if used[slot] {
                    return Err(ConfigError::OverlappingBars(slot));
                }
                used[slot] = true;
            }
            let s = bar.size;
            let ok = s.is_power_of_two()
                && match bar.kind {
                    BarKind::Mem32 => (16..=1 << 31).contains(&s),
                    BarKind::Mem64 { .. } => s >= 16,
                    BarKind::Io => (4..=256).contains(&s),
                };
            if !ok {
                return Err(ConfigError::BadBarSize(i));
            }
            sizes[i] = s;
            let at = reg::BAR0 + 4 * i;
            let addr_mask = !(s - 1);
            let (flags, low_mask) = match bar.kind {
                BarKind::Mem32 => (0u32, 0xffff_fff0u32),
                BarKind::Mem64 { prefetchable } => {
                    (0x4 | if prefetchable { 0x8 } else { 0 }, 0xffff_fff0)
                }
                BarKind::Io => (0x1, 0xffff_fffc),
            };
            cmd_mask |= if bar.kind == BarKind::Io {
                command::IO
            } else {
                command::MEMORY
            };
            put32(&mut b, at, flags);
            put32(&mut wmask, at, (addr_mask as u32) & low_mask);
            if wide {
                put32(&mut wmask, at + 4, (addr_mask >> 32) as u32);
            }
        }
        put16(&mut wmask, reg::COMMAND, cmd_mask);
        put16(&mut w1cmask, reg::STATUS, status::ERRORS_W1C);
        wmask[reg::CACHE_LINE] = 0xff;
        wmask[reg::LATENCY] = 0xff;
        wmask[reg::INTERRUPT_LINE] = 0xff;

        // The capability list, dword-aligned from the end of the header.
        let mut at = reg::HEADER_END;
        let mut prev_next = reg::CAP_PTR;
        for cap in caps {
            let len = 2 + cap.body.len();
            if (!cap.wmask.is_empty() && cap.wmask.len() != cap.body.len())
                || at + len > CONFIG_SIZE
            {
                return Err(ConfigError::BadCapabilities);
            }
            b[prev_next] = at as u8;
            b[at] = cap.id;
            b[at + 2..at + len].copy_from_slice(cap.body);
            if !cap.wmask.is_empty() {
                wmask[at + 2..at + len].copy_from_slice(cap.wmask);
            }
            prev_next = at + 1;
            at = (at + len).next_multiple_of(4);
        }
        if !caps.is_empty() {
            put16(&mut b, reg::STATUS, status::CAP_LIST);
        }
        Ok(Self {
            bytes: b,
            reset: b,
            wmask,
            w1cmask,
            sizes,
        })
    }

    fn range(offset: u64, len: usize) -> Result<usize, AccessError> {
        let start = usize::try_from(offset).map_err(|_| AccessError::OutOfRange)?;
        match start.checked_add(len) {
            Some(end) if len > 0 && end <= CONFIG_SIZE => Ok(start),
            _ => Err(AccessError::OutOfRange),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let at = Self::range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }

    /// Writes `data` at `offset`, through the write and write-1-to-clear
    /// masks: read-only bits keep their value, whatever was written.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let at = Self::range(offset, data.len())?;
        for (i, &v) in data.iter().enumerate() {
            let p = at + i;
            let w = self.wmask[p];
            let c = self.w1cmask[p];
            self.bytes[p] = ((self.bytes[p] & !w) | (v & w)) & !(v & c);
        }
        Ok(())
    }

    /// Back to the state after [`ConfigSpace::new`] (a function reset).
    pub fn reset(&mut self) {
        self.bytes = self.reset;
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        get16(&self.bytes, reg::COMMAND)
    }

    /// The address BAR `index` is programmed with (the upper dword included
    /// for a 64-bit BAR), or `None` if the slot has no BAR of its own.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let size = *self.sizes.get(index)?;
        if size == 0 {
            return None;
        }
        let at = reg::BAR0 + 4 * index;
        let low = get32(&self.bytes, at);
        if low & 0x1 != 0 {
            return Some(u64::from(low & 0xffff_fffc));
        }
        let mut addr = u64::from(low & 0xffff_fff0);
        if low & 0x6 == 0x4 {
            addr |= u64::from(get32(&self.bytes, at + 4)) << 32;
        }
        Some(addr)
    }

    /// The size of BAR `index`, 0 if it has none (what a VFIO region of
    /// the BAR must report).
    pub fn bar_size(&self, index: usize) -> u64 {
        self.sizes.get(index).copied().unwrap_or(0)
    }

    /// Sets or clears the status register's interrupt bit (the device's
    /// INTx line as software sees it).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let s = get16(&self.bytes, reg::STATUS);
        let s = if asserted {
            s | status::INTERRUPT
        } else {
            s & !status::INTERRUPT
        };
        put16(&mut self.bytes, reg::STATUS, s);
    }

    /// The whole space, for a migration stream.
    pub fn as_bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.bytes
    }

    /// Restores a space saved with [`ConfigSpace::as_bytes`] on a function
    /// with the same layout: the writable and write-1-to-clear bits come
    /// from `saved`, the read-only ones stay. Refused, changing nothing, if
    /// `saved` is not the size of the space or its read-only bits differ
    /// (it comes from another function); the status register's interrupt
    /// bit follows this device, not the saved one.
    pub fn restore(&mut self, saved: &[u8]) -> Result<(), AccessError> {
        let saved: &[u8; CONFIG_SIZE] = saved.try_into().map_err(|_| AccessError::Mismatch)?;
        let fixed = |p: usize| {
            let m = !(self.wmask[p] | self.w1cmask[p]);
            if p == reg::STATUS {
                m & !(status::INTERRUPT as u8)
            } else {
                m
            }
        };
        if (0..CONFIG_SIZE).any(|p| (saved[p] ^ self.reset[p]) & fixed(p) != 0) {
            return Err(AccessError::Mismatch);
        }
        for (p, &v) in saved.iter().enumerate() {
            let keep = !(self.wmask[p] | self.w1cmask[p]);
            self.bytes[p] = (self.bytes[p] & keep) | (v & !keep);
        }
        Ok(())
    }
}
