// SPDX-License-Identifier: GPL-2.0

//! rmdev_igbvf: a mediated device on a real SR-IOV function, an Intel 82576
//! (igb) virtual function.
//!
//! The operator hands a VF to this driver with `driver_override` (it never
//! takes one by itself); each bound VF becomes an mdev parent with one type,
//! `rmdev_igbvf-vf`, of which it holds one mdev. The mdev is a vfio-pci
//! device:
//!
//! - config space (region 7): emulated by the framework, with the VF's own
//!   vendor, device, subsystem and revision IDs and class;
//! - BAR0 (region 0), the size of the VF's BAR0: the registers in
//!   [`ALLOWED`] are forwarded to the VF's hardware as 32-bit accesses, with
//!   the bits in their `deny` mask kept clear; queue 0's registers are the
//!   vendor's shadow: transmit ([`tx`]) reads the user's ring through its
//!   IOMMU context and sends its frames through a ring of the vendor's own,
//!   receive ([`rx`]) receives into the vendor's buffers and copies each
//!   frame into the user's; the interrupt registers are emulated
//!   ([`intr`]); every other offset reads as zero and ignores writes. The
//!   VF only ever reaches memory the vendor mapped for it: its own rings
//!   and buffers and the pages of frames it is sending, which stay mapped
//!   read-only between rounds while the user keeps them mapped (the
//!   framework's cache of pins; see `Documentation/vendors/igbvf.rst`). The VF's set-up for both
//!   queues is the vendor's ([`hw`]), so is its mailbox ([`mailbox`]); the
//!   user's is an emulation of the PF's side ([`user_mailbox`]). The VF's
//!   own MSI-X vector 0 is the vendor's too ([`VfIrq`]): the hardware
//!   signals both queues' write-backs on it, and the vendor delivers what
//!   the VF received from its interrupt thread (or, while a transmit
//!   doorbell holds the queues, at the doorbell's end);
//! - BAR3 (region 3), 16 KiB like the VF's: its MSI-X table (3 vectors, at
//!   0, the framework's) and pending-bit array (at 0x2000, reads as zero:
//!   the user's emulation keeps what is pending).
//!
//! It migrates with `STOP_COPY | P2P`: the stream carries the emulated
//! config space (the framework's record), one record with the allowed
//! registers, read from the source VF's hardware and written into the
//! target VF's, one each with transmit and receive queue 0 as the user
//! programmed them, one with the interrupt registers and one with the
//! user's mailbox. The `migration_version` names the hardware (VF IDs and
//! revision, the PF's device ID) and the data format
//! (`4.<format_minor>`), in the default format, so the default rule refuses
//! other hardware, a source with a newer format and formats 1 to 3.
//!
//! Stream records (little-endian), in this order: [`TAG_REGS`]: `u32`
//! count, then `count` pairs of `u32` offset and `u32` value, in the order
//! of [`ALLOWED`]; [`TAG_TX`]: the nine registers of transmit queue 0;
//! [`TAG_RX`]: the seven registers of receive queue 0; [`TAG_INTR`]: EICR,
//! EIMS, EIAC, EIAM, IVAR0, IVAR_MISC; [`TAG_MBX`]: the user's mailbox
//! (16 buffer words, then its state bits).

#[path = "../core/rmdev.rs"]
pub mod rmdev;

#[path = "igbvf/hw.rs"]
mod hw;
#[path = "igbvf/intr.rs"]
mod intr;
#[path = "igbvf/mailbox.rs"]
mod mailbox;
#[path = "igbvf/ring.rs"]
mod ring;
#[path = "igbvf/rx.rs"]
mod rx;
#[path = "igbvf/tx.rs"]
mod tx;
#[path = "igbvf/user_mailbox.rs"]
mod user_mailbox;

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::{c_str, new_mutex};

use hw::{Ctx, Queues};
use intr::IntrRegs;
use rmdev::device::{
    region, BarKind, Device, GuestMemory, Identity, Interrupts, Msix, PciConfig, Region, SavePhase,
    SaveWaker, Saved, StopCopySize,
};
use rmdev::fsm::{FlagSet, StepFailure, StopCopyP2pArc};
use rmdev::mdev::{self, Parent, TypeInfo};
use rmdev::pci::{self, Bar, Binding, DeviceId, DmaFunction, Event, IrqHandler};
use rmdev::version::VersionBuf;
use rx::{RxQueue, RxRegs};
use tx::{TxQueue, TxRegs};
use user_mailbox::{Request, UserMailbox};

module! {
    type: IgbVfModule,
    name: "rmdev_igbvf",
    author: "rmdev developers",
    description: "rmdev: mediated devices on igb SR-IOV virtual functions",
    license: "GPL",
}

/// The driver's name (PCI and mdev).
const NAME: &CStr = c_str!("rmdev_igbvf");
/// Intel 82576 virtual function.
const VF_ID: DeviceId = DeviceId {
    vendor: 0x8086,
    device: 0x10ca,
};
/// The data format's major version; the minor is the `format_minor`
/// parameter. Format 1 (before transmit queue 0 was shadowed) carried
/// queue 0's transmit registers in [`TAG_REGS`], format 2 (before MSI-X)
/// IVAR0 and IVAR_MISC there and had no interrupt record, format 3 (before
/// receive queue 0 was shadowed) its receive registers there; their
/// streams are refused.
const FORMAT_MAJOR: u16 = 4;
/// Record tag: the allowed registers.
pub const TAG_REGS: u16 = 1;
/// Record tag: transmit queue 0 as the user programmed it
/// ([`tx::RECORD_LEN`] bytes: TDBAL, TDBAH, TDLEN, TDH, TXCTL, TDT,
/// TXDCTL, TDWBAL, TDWBAH).
pub const TAG_TX: u16 = 2;
/// Record tag: the interrupt registers ([`intr::RECORD_LEN`] bytes).
pub const TAG_INTR: u16 = 3;
/// Record tag: the user's mailbox ([`user_mailbox::RECORD_LEN`] bytes).
pub const TAG_MBX: u16 = 4;
/// Record tag: receive queue 0 as the user programmed it
/// ([`rx::RECORD_LEN`] bytes: RDBAL, RDBAH, RDLEN, SRRCTL, RDH, RDT,
/// RXDCTL).
pub const TAG_RX: u16 = 5;
/// BAR3: the MSI-X table and PBA, the size of the VF's.
const MSIX_BAR: u32 = 3;
const MSIX_BAR_LEN: u64 = 16 * 1024;
/// The VF's MSI-X layout (82576 datasheet; QEMU's igbvf alike).
const MSIX: Msix = Msix {
    vectors: intr::VECTORS,
    bar: MSIX_BAR as usize,
    table_offset: 0,
    pba_offset: 0x2000,
};

/// One register the mdev forwards to the hardware.
pub struct Allowed {
    /// Offset in BAR0.
    pub offset: u32,
    /// Bits never written to the hardware (always written as 0).
    pub deny: u32,
}

const fn reg(offset: u32, deny: u32) -> Allowed {
    Allowed { offset, deny }
}

/// RXDCTL/TXDCTL bit 25: queue enable. An enabled queue fetches descriptors
/// and moves packets by DMA.
const QUEUE_ENABLE: u32 = 1 << 25;
/// TDWBAL bit 0: head write-back enable, a DMA write of the head pointer.
const HEAD_WB_ENABLE: u32 = 1;
/// The registers forwarded to the hardware: queue 1's (the VF has two
/// queues; queue 1 is 0x100 above queue 0) and the interrupt moderation.
/// Tail registers (RDT 0x2918, TDT 0x3918) are doorbells and are not here;
/// neither are CTRL (reset), the mailbox and the statistics. Queue 0
/// (receive and transmit) and the interrupt cause, mask and routing
/// registers are not forwarded either: the vendor shadows them ([`rx`],
/// [`tx`], [`intr`]).
pub const ALLOWED: [Allowed; 17] = [
    // Receive queue 1: RDBAL, RDBAH, RDLEN, SRRCTL, RDH, RXDCTL.
    reg(0x2900, 0),
    reg(0x2904, 0),
    reg(0x2908, 0),
    reg(0x290c, 0),
    reg(0x2910, 0),
    reg(0x2928, QUEUE_ENABLE),
    // Transmit queue 1: TDBAL, TDBAH, TDLEN, TDH, TXCTL, TXDCTL, TDWBAL,
    // TDWBAH.
    reg(0x3900, 0),
    reg(0x3904, 0),
    reg(0x3908, 0),
    reg(0x3910, 0),
    reg(0x3914, 0),
    reg(0x3928, QUEUE_ENABLE),
    reg(0x3938, HEAD_WB_ENABLE),
    reg(0x393c, 0),
    // EITR0 to EITR2: interrupt throttling.
    reg(0x1680, 0),
    reg(0x1684, 0),
    reg(0x1688, 0),
];

/// Number of allowed registers.
const NR_ALLOWED: usize = ALLOWED.len();
/// The register record's payload length.
const REGS_LEN: usize = 4 + NR_ALLOWED * 8;

fn find(offset: u64) -> Option<&'static Allowed> {
    ALLOWED.iter().find(|a| u64::from(a.offset) == offset)
}

/// Module parameters (defined in `igbvf_params.c`).
mod params {
    extern "C" {
        fn rmdev_igbvf_format_minor() -> u32;
    }

    /// The `format_minor` parameter.
    pub(crate) fn format_minor() -> u32 {
        // SAFETY: Reads a module parameter; no precondition.
        unsafe { rmdev_igbvf_format_minor() }
    }
}

/// The VF's own interrupt, the vendor's: the hardware signals MSI-X vector
/// 0 when it wrote back a descriptor of one of the vendor's rings (its
/// IVAR0 routes both queues 0 there, [`hw`]): the transmit round waiting
/// for the hardware wakes up, and what the VF received is delivered to the
/// open device.
#[pin_data]
struct VfIrq {
    #[pin]
    done: Event,
    /// The device while a user has it open. Held while delivering, so the
    /// close that takes it waits for a delivery under way, and the state is
    /// never dropped here.
    #[pin]
    open: Mutex<Option<Arc<VfState>>>,
}

impl IrqHandler for VfIrq {
    fn handle(&self, _vector: u32) {
        // First: a transmit round may hold the queues' lock waiting for it.
        self.done.signal();
        if let Some(state) = self.open.lock().as_ref() {
            state.rx_interrupt();
        }
    }
}

/// The parent: one bound VF.
struct VfParent {
    bar: Arc<Bar>,
    func: Arc<DmaFunction>,
    irq: Arc<VfIrq>,
    ids: pci::Ids,
    version: VersionBuf,
}

impl mdev::Driver for VfParent {
    const NAME: &'static CStr = NAME;
    const DEVICE_API: &'static CStr = c_str!("vfio-pci");
    const TYPES: &'static [TypeInfo] = &[TypeInfo {
        sysfs_name: c_str!("vf"),
        name: c_str!("igbvf"),
        description: c_str!("the registers of one igb virtual function, migratable"),
        max_instances: 1,
    }];
    type Device = VfDevice;

    fn create(
        &self,
        _type_index: usize,
        irqs: Interrupts,
        guest: GuestMemory,
        // No pre-copy: the VF's state is saved in stop-copy only.
        _waker: SaveWaker,
    ) -> impl PinInit<VfDevice, Error> {
        let state = Arc::pin_init(
            try_pin_init!(VfState {
                bar: self.bar.clone(),
                func: self.func.clone(),
                irq: self.irq.clone(),
                guest,
                irqs,
                ids: self.ids,
                queues <- new_mutex!(Queues::new(), "rmdev_igbvf:queues"),
                intr <- new_mutex!(IntrRegs::default(), "rmdev_igbvf:intr"),
                mbx <- new_mutex!(UserMailbox::default(), "rmdev_igbvf:mbx"),
                serving: AtomicU32::new(0),
                rx_due: AtomicBool::new(false),
            }),
            GFP_KERNEL,
        );
        try_pin_init!(VfDevice { state: state? })
    }

    fn type_version(&self, _type_index: usize) -> Option<Result<VersionBuf>> {
        Some(Ok(self.version.clone()))
    }
}

/// The `migration_version` of a VF: the driver, the type, the format, and
/// the hardware it was read from.
fn vf_version(ids: &pci::Ids, pf: u16, minor: u16) -> Result<VersionBuf> {
    let mut id = [0u8; 9];
    let mut subsys = [0u8; 9];
    let mut rev = [0u8; 2];
    let mut pfid = [0u8; 4];
    let v = VersionBuf::new("rmdev_igbvf", "vf", FORMAT_MAJOR, minor)
        .and_then(|v| v.field("id", hex_pair(&mut id, ids.vendor, ids.device)))
        .and_then(|v| {
            v.field(
                "subsys",
                hex_pair(&mut subsys, ids.subsystem_vendor, ids.subsystem),
            )
        })
        .and_then(|v| v.field("rev", hex(&mut rev, u32::from(ids.revision))))
        .and_then(|v| v.field("pf", hex(&mut pfid, u32::from(pf))));
    v.map_err(|_| EINVAL)
}

/// `value` as lowercase hex in exactly `buf.len()` digits.
fn hex(buf: &mut [u8], value: u32) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = buf.len();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = DIGITS[((value >> (4 * (n - 1 - i))) & 0xf) as usize];
    }
    core::str::from_utf8(buf).unwrap_or("")
}

/// `aaaa-bbbb`.
fn hex_pair(buf: &mut [u8; 9], a: u16, b: u16) -> &str {
    let (x, rest) = buf.split_at_mut(4);
    hex(x, u32::from(a));
    rest[0] = b'-';
    hex(&mut rest[1..], u32::from(b));
    core::str::from_utf8(buf).unwrap_or("")
}

/// One mdev: the VF's registers, mediated, its queues 0, shadowed, and its
/// interrupts, emulated. The state is shared with the VF's interrupt
/// handler while a user has the device open.
#[pin_data]
struct VfDevice {
    state: Arc<VfState>,
}

impl core::ops::Deref for VfDevice {
    type Target = VfState;

    fn deref(&self) -> &VfState {
        &self.state
    }
}

/// The device's state.
#[pin_data]
struct VfState {
    bar: Arc<Bar>,
    func: Arc<DmaFunction>,
    irq: Arc<VfIrq>,
    guest: GuestMemory,
    irqs: Interrupts,
    ids: pci::Ids,
    /// Taken before `intr`.
    #[pin]
    queues: Mutex<Queues>,
    #[pin]
    intr: Mutex<IntrRegs>,
    /// The user's mailbox; taken before `queues`.
    #[pin]
    mbx: Mutex<UserMailbox>,
    /// How many callers of [`VfState::serve`] are at or in `queues`: one
    /// that holds them may wait for the VF's interrupt, whose thread must
    /// then not wait for the lock (only that thread signals the wait's
    /// end: the round would fall back to polling each tick, and under
    /// emulation the waiting thread spins on a CPU the VF's emulation
    /// needs). They deliver what the VF received when they are done
    /// (`rx_due`).
    serving: AtomicU32,
    /// The VF signalled while `serving` was not 0: receive delivery is due.
    rx_due: AtomicBool,
}

/// A save session: how many of the records were sent.
struct VfSave {
    sent: usize,
}

/// A resume session: which records arrived.
struct VfLoad {
    regs: bool,
    tx: bool,
    rx: bool,
    intr: bool,
    mbx: bool,
}

/// The stream's records, in their order: tag and length.
const RECORDS: [(u16, usize); 5] = [
    (TAG_REGS, REGS_LEN),
    (TAG_TX, tx::RECORD_LEN),
    (TAG_RX, rx::RECORD_LEN),
    (TAG_INTR, intr::RECORD_LEN),
    (TAG_MBX, user_mailbox::RECORD_LEN),
];

impl VfState {
    /// Writes an allowed register, its denied bits clear.
    fn write_hw(&self, a: &Allowed, value: u32) -> Result {
        self.bar.write32(a.offset as usize, value & !a.deny)
    }

    /// The register record: every allowed register, read from the VF.
    fn regs_record(&self, buf: &mut [u8]) -> Result {
        let out = buf.get_mut(..REGS_LEN).ok_or(EINVAL)?;
        out[..4].copy_from_slice(&(NR_ALLOWED as u32).to_le_bytes());
        for (a, chunk) in ALLOWED.iter().zip(out[4..].chunks_exact_mut(8)) {
            let value = self.bar.read32(a.offset as usize)?;
            chunk[..4].copy_from_slice(&a.offset.to_le_bytes());
            chunk[4..].copy_from_slice(&value.to_le_bytes());
        }
        Ok(())
    }

    /// What the queues work with.
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            bar: &self.bar,
            func: &self.func,
            done: &self.irq.done,
            guest: &self.guest,
        }
    }

    /// Stops and forgets the queues, the interrupt set-up and the user's
    /// mailbox.
    fn reset_queues(&self) {
        let mut m = self.mbx.lock();
        let mut q = self.queues.lock();
        q.reset(&self.ctx());
        *self.intr.lock() = IntrRegs::default();
        *m = UserMailbox::default();
    }

    /// The user wrote a mailbox register: a request it posted is answered
    /// if the device runs.
    fn mailbox_write(&self, offset: u64, value: u32) {
        let mut m = self.mbx.lock();
        if m.write(offset, value) {
            self.mailbox_serve(&mut m);
        }
    }

    /// Answers the mailbox's pending request, if the device runs (else it
    /// waits until it runs again): a `VF_RESET` after the vendor reset
    /// the VF, anything else refused; a reply raises the mailbox's
    /// interrupt. Called with the mailbox's lock, which a reset takes too.
    fn mailbox_serve(&self, m: &mut UserMailbox) {
        let mut q = self.queues.lock();
        if !q.running() {
            return;
        }
        let replied = match m.take_request() {
            Request::None => false,
            Request::Other => m.refuse(),
            Request::Reset => {
                let result = q.reset_vf(&self.ctx());
                m.reset_done(result)
            }
        };
        self.completions(&mut q);
        drop(q);
        if replied {
            let sent = self.intr.lock().mailbox_done();
            self.send(sent);
        }
    }

    /// Runs `f` with the queues when it may wait for the VF's interrupt
    /// (a transmit round): the interrupt thread leaves receive delivery to
    /// this caller meanwhile, which makes it before it lets the queues go.
    fn serve(&self, f: impl FnOnce(&mut Queues, &Ctx<'_>)) {
        // Before the lock: a caller waiting for it counts too (the holder
        // may be another one, whose delivery may have run already).
        self.serving.fetch_add(1, Ordering::SeqCst);
        let mut q = self.queues.lock();
        f(&mut q, &self.ctx());
        self.serving.fetch_sub(1, Ordering::SeqCst);
        // After the decrement: the interrupt thread either saw `serving`
        // at 0 and waits for the lock, or set `rx_due` before it looked,
        // and it is seen here (both sequentially consistent).
        if self.rx_due.swap(false, Ordering::SeqCst) {
            q.rx_interrupt(&self.ctx());
        }
        self.completions(&mut q);
    }

    /// Whether doorbells and the mailbox are served, and if so serves what
    /// is pending.
    fn set_running(&self, running: bool) {
        self.serve(|q, cx| q.set_running(cx, running));
        if !running {
            return;
        }
        let mut m = self.mbx.lock();
        self.mailbox_serve(&mut m);
    }

    /// The VF signalled the vendor's vector (from its interrupt thread):
    /// delivers what it received, or leaves that to a caller of
    /// [`Self::serve`], which may hold the queues until the VF is done.
    fn rx_interrupt(&self) {
        self.rx_due.store(true, Ordering::SeqCst);
        // After the store above (see `serve`).
        if self.serving.load(Ordering::SeqCst) != 0 {
            return;
        }
        let mut q = self.queues.lock();
        if self.rx_due.swap(false, Ordering::SeqCst) {
            q.rx_interrupt(&self.ctx());
        }
        self.completions(&mut q);
    }

    /// Raises the queues' interrupts: transmit if a round completed
    /// descriptors the user asked to hear about (RS), receive if
    /// descriptors were written back.
    fn completions(&self, q: &mut Queues) {
        let tx = q.tx.take_completed();
        let rx = q.rx.take_completed();
        if tx || rx {
            let mut intr = self.intr.lock();
            let sent = if tx { intr.tx_done() } else { 0 } | if rx { intr.rx_done() } else { 0 };
            drop(intr);
            self.send(sent);
        }
    }

    /// Sends the MSI-X messages of the vectors in `vectors` (a bit each).
    fn send(&self, vectors: u32) {
        for v in 0..u32::from(intr::VECTORS) {
            if vectors & (1 << v) != 0 {
                self.irqs.raise_vector(v);
            }
        }
    }
}

/// Writes `words` little-endian at the start of `out` (a record).
fn put_words(out: &mut [u8], words: &[u32]) -> Result {
    let out = out.get_mut(..4 * words.len()).ok_or(EINVAL)?;
    for (w, chunk) in words.iter().zip(out.chunks_exact_mut(4)) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    Ok(())
}

/// The `N` little-endian words of a record of exactly `4 * N` bytes.
fn get_words<const N: usize>(rec: &[u8]) -> Result<[u32; N]> {
    if rec.len() != 4 * N {
        return Err(EINVAL);
    }
    let mut w = [0u32; N];
    for (v, chunk) in w.iter_mut().zip(rec.chunks_exact(4)) {
        *v = le32(chunk)?;
    }
    Ok(w)
}

fn le32(b: &[u8]) -> Result<u32> {
    let b: [u8; 4] = b.try_into().map_err(|_| EINVAL)?;
    Ok(u32::from_le_bytes(b))
}

impl Device for VfDevice {
    type Save = VfSave;
    type Load = VfLoad;
    type Arcs = StopCopyP2pArc;
    // The device writes guest memory only through `GuestMemory::write`
    // (transmit completions, receive write-backs) and through writable
    // pins (received frames), whose unpin logs them: the framework's dirty
    // log has every page it wrote.

    fn region(&self, index: u32) -> Region {
        match index {
            region::BAR0 => Region::read_write(self.bar.len() as u64),
            MSIX_BAR => Region::read_write(MSIX_BAR_LEN),
            _ => Region::NONE,
        }
    }

    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result {
        if index == MSIX_BAR {
            // The PBA and the rest: nothing is pending at the device (what
            // it raises goes straight to the user's eventfds); the table is
            // the framework's.
            buf.fill(0);
            return Ok(());
        }
        if index != region::BAR0 {
            return Err(EINVAL);
        }
        // Only aligned 32-bit reads of allowed registers reach the VF (its
        // registers take no other width); everything else reads as zero.
        let value = match find(offset) {
            Some(a) if buf.len() == 4 => self.bar.read32(a.offset as usize)?,
            _ if buf.len() == 4 && TxQueue::owns(offset) => self.queues.lock().tx.read(offset),
            _ if buf.len() == 4 && RxQueue::owns(offset) => self.queues.lock().rx.read(offset),
            _ if buf.len() == 4 && IntrRegs::owns(offset) => self.intr.lock().read(offset),
            _ if buf.len() == 4 && UserMailbox::owns(offset) => self.mbx.lock().read(offset),
            _ => 0,
        };
        if buf.len() == 4 {
            buf.copy_from_slice(&value.to_le_bytes());
        } else {
            buf.fill(0);
        }
        Ok(())
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result {
        if index == MSIX_BAR {
            return Ok(());
        }
        if index != region::BAR0 {
            return Err(EINVAL);
        }
        match find(offset) {
            Some(a) if data.len() == 4 => self.write_hw(a, le32(data)?),
            _ if data.len() == 4 && TxQueue::owns(offset) => {
                let value = le32(data)?;
                self.serve(|q, cx| q.tx_write(cx, offset, value));
                Ok(())
            }
            _ if data.len() == 4 && RxQueue::owns(offset) => {
                let mut q = self.queues.lock();
                q.rx_write(&self.ctx(), offset, le32(data)?);
                self.completions(&mut q);
                Ok(())
            }
            _ if data.len() == 4 && IntrRegs::owns(offset) => {
                let sent = self.intr.lock().write(offset, le32(data)?);
                self.send(sent);
                Ok(())
            }
            _ if data.len() == 4 && UserMailbox::owns(offset) => {
                self.mailbox_write(offset, le32(data)?);
                Ok(())
            }
            // Not forwarded: ignored, as absent registers are.
            _ => Ok(()),
        }
    }

    fn open(&self) -> Result {
        // A new user meets the queues and the interrupts as after a reset
        // (and the VF's queues disabled, whatever a PF reset left in them).
        self.reset_queues();
        // From now the VF's interrupts deliver what it receives.
        *self.irq.open.lock() = Some(self.state.clone());
        Ok(())
    }

    fn close(&self) {
        // No delivery from the VF's interrupt after this (one under way
        // holds the lock), and the state is not dropped in the handler.
        let taken = self.irq.open.lock().take();
        drop(taken);
        // The hardware is off the user's pages before the framework unpins
        // them.
        self.reset_queues();
    }

    fn guest_unmapped(&self, _iova: u64, _length: u64) {
        // A transmit round holds its pins only while it runs, with the
        // queues' lock: once the lock is free the VF's ring points at none
        // of the user's pages (the pins given back stay mapped, idle, and
        // the framework unpins them after this returns), and the framework
        // refuses new pins into the range until it is unmapped. Receive
        // pins a buffer only while it writes it, under the same lock.
        drop(self.queues.lock());
    }

    fn pci_config(&self) -> Option<PciConfig> {
        // The VF's own identity, so a guest driver and QEMU's config check
        // see the hardware; BAR0 and BAR3 like the VF's (64-bit,
        // prefetchable); MSI-X like the VF's, no INTx or MSI.
        Some(PciConfig {
            identity: Identity {
                vendor: self.ids.vendor,
                device: self.ids.device,
                revision: self.ids.revision,
                class: self.ids.class,
                subsystem_vendor: self.ids.subsystem_vendor,
                subsystem: self.ids.subsystem,
                interrupt_pin: 0,
            },
            bars: [
                Some(BarKind::Mem64 { prefetchable: true }),
                None,
                None,
                Some(BarKind::Mem64 { prefetchable: true }),
                None,
                None,
            ],
            capabilities: &[],
            msi_vectors: 0,
            msix: Some(MSIX),
        })
    }

    fn reset(&self) {
        // A function reset clears the queues and interrupt set-up. A BAR
        // revoked under us (the VF is going) has nothing left to reset.
        self.reset_queues();
        for a in ALLOWED.iter() {
            let _ = self.write_hw(a, 0);
        }
    }

    fn migration(&self) -> Option<FlagSet> {
        Some(FlagSet::StopCopyP2p)
    }

    fn step(&self, arc: StopCopyP2pArc) -> core::result::Result<(), StepFailure<Error>> {
        // The engines are queue 0's. Transmit rounds run to their end
        // inside a doorbell: stopping means serving no doorbell (what is
        // rung is kept, in the stream too) until it runs again. Receive
        // stops by delivering what the VF received and disabling the VF's
        // queue: frames arriving while stopped are lost, as on a wire.
        // RUNNING_P2P still moves the user's frames (no peer-to-peer DMA is
        // involved). The rest of the state is the registers, read at save
        // and written at load.
        match arc {
            StopCopyP2pArc::RunningP2pToStop => {
                self.set_running(false);
                Ok(())
            }
            StopCopyP2pArc::StopToRunningP2p => {
                self.set_running(true);
                Ok(())
            }
            StopCopyP2pArc::RunningToRunningP2p
            | StopCopyP2pArc::RunningP2pToRunning
            | StopCopyP2pArc::StopToStopCopy
            | StopCopyP2pArc::StopCopyToStop
            | StopCopyP2pArc::StopToResuming
            | StopCopyP2pArc::ResumingToStop => Ok(()),
        }
    }

    fn stop_copy_size(&self, s: Option<&VfSave>) -> StopCopySize {
        let left = RECORDS.get(s.map_or(0, |s| s.sent)..).unwrap_or_default();
        StopCopySize {
            bytes: left.iter().map(|r| r.1).sum(),
            records: left.len(),
        }
    }

    fn save_open(&self) -> Result<VfSave> {
        Ok(VfSave { sent: 0 })
    }

    fn save(&self, s: &mut VfSave, phase: SavePhase, buf: &mut [u8]) -> Result<Saved> {
        if phase != SavePhase::StopCopy {
            return Ok(Saved::Later);
        }
        let Some(&(tag, len)) = RECORDS.get(s.sent) else {
            return Ok(Saved::Done);
        };
        // The device is stopped: no round runs, and what is saved is what
        // the target starts from.
        match tag {
            TAG_TX => self.queues.lock().tx.regs.to_record(buf)?,
            TAG_RX => self.queues.lock().rx.regs.to_record(buf)?,
            TAG_INTR => self.intr.lock().to_record(buf)?,
            TAG_MBX => self.mbx.lock().to_record(buf)?,
            _ => self.regs_record(buf)?,
        }
        s.sent += 1;
        Ok(Saved::Record { tag, len })
    }

    fn load_open(&self) -> Result<VfLoad> {
        Ok(VfLoad {
            regs: false,
            tx: false,
            rx: false,
            intr: false,
            mbx: false,
        })
    }

    fn load(&self, l: &mut VfLoad, tag: u16, payload: &[u8]) -> Result {
        if tag == TAG_TX && !l.tx {
            let regs = TxRegs::from_record(payload)?;
            // The target's queue starts stopped (RESUMING is only reached
            // from STOP, where `set_running(false)` ran), from the source's
            // user view; the hardware is set up at its first round.
            let mut q = self.queues.lock();
            q.tx.regs = regs;
            l.tx = true;
            return Ok(());
        }
        if tag == TAG_RX && !l.rx {
            let regs = RxRegs::from_record(payload)?;
            // Likewise: the hardware starts when the device runs.
            let mut q = self.queues.lock();
            q.rx.regs = regs;
            l.rx = true;
            return Ok(());
        }
        if tag == TAG_INTR && !l.intr {
            // The user's emulation keeps its own pending bits: nothing is
            // sent at load.
            *self.intr.lock() = IntrRegs::from_record(payload)?;
            l.intr = true;
            return Ok(());
        }
        if tag == TAG_MBX && !l.mbx {
            // A reply the source's user had not read yet stays for the
            // target's.
            *self.mbx.lock() = UserMailbox::from_record(payload)?;
            l.mbx = true;
            return Ok(());
        }
        if tag != TAG_REGS || l.regs || payload.len() != REGS_LEN {
            return Err(EINVAL);
        }
        if le32(&payload[..4])? as usize != NR_ALLOWED {
            return Err(EINVAL);
        }
        // Check the whole record before touching the hardware: the offsets
        // must be exactly ours, in order.
        for (a, chunk) in ALLOWED.iter().zip(payload[4..].chunks_exact(8)) {
            if le32(&chunk[..4])? != a.offset {
                return Err(EINVAL);
            }
        }
        for (a, chunk) in ALLOWED.iter().zip(payload[4..].chunks_exact(8)) {
            self.write_hw(a, le32(&chunk[4..])?)?;
        }
        l.regs = true;
        Ok(())
    }

    fn load_finish(&self, l: VfLoad) -> Result {
        if l.regs && l.tx && l.rx && l.intr && l.mbx {
            Ok(())
        } else {
            Err(EINVAL)
        }
    }
}

/// The PCI driver.
struct IgbVf;

/// What a bound VF keeps: its mdev parent. Dropped in remove, before the
/// framework unmaps the BAR: the mdevs go first.
struct VfBinding {
    _parent: Parent<VfParent>,
}

impl pci::Driver for IgbVf {
    const NAME: &'static CStr = NAME;
    const IDS: &'static [DeviceId] = &[VF_ID];
    type Context = Arc<mdev::Registration<VfParent>>;
    type Data = VfBinding;

    fn probe(mdev_driver: &Self::Context, b: &mut Binding) -> Result<VfBinding> {
        let ids = b.ids();
        let Some(pf) = ids.pf_device else {
            pr_err!("{}: not an SR-IOV virtual function\n", b.name());
            return Err(ENODEV);
        };
        let minor = params::format_minor();
        let minor = u16::try_from(minor).map_err(|_| {
            pr_err!("format_minor={} refused: must be 0 to 65535\n", minor);
            EINVAL
        })?;
        b.enable_mem()?;
        let bar = b.map_bar(0)?;
        let fits = bar.len().is_power_of_two()
            && ALLOWED.iter().all(|a| (a.offset as usize) + 4 <= bar.len());
        if !fits {
            pr_err!(
                "{}: BAR0 of {} bytes does not hold the VF registers\n",
                b.name(),
                bar.len()
            );
            return Err(ENODEV);
        }
        let version = vf_version(&ids, pf, minor)?;
        let func = b.dma()?;
        let irq = Arc::pin_init(
            pin_init!(VfIrq {
                done <- Event::new(),
                open <- new_mutex!(None, "rmdev_igbvf:open"),
            }),
            GFP_KERNEL,
        )?;
        b.request_msix(1, irq.clone())?;
        let parent = Parent::new_pci(
            mdev_driver,
            b,
            VfParent {
                bar,
                func,
                irq,
                ids,
                version,
            },
        )?;
        pr_info!(
            "{}: mdev parent, data format {}.{}\n",
            b.name(),
            FORMAT_MAJOR,
            minor
        );
        Ok(VfBinding { _parent: parent })
    }
}

struct IgbVfModule {
    // Dropped first: unbinds every VF, which removes their mdevs. The mdev
    // registration goes with its last reference and waits until the C side
    // released everything of the driver.
    _pci: pci::Registration<IgbVf>,
}

impl kernel::Module for IgbVfModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let mdev_driver = Arc::new(mdev::Registration::<VfParent>::new(module)?, GFP_KERNEL)?;
        let pci = pci::Registration::<IgbVf>::new(module, mdev_driver)?;
        pr_info!("ready: bind igb VFs with driver_override\n");
        Ok(Self { _pci: pci })
    }
}
