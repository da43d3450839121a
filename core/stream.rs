// SPDX-License-Identifier: GPL-2.0

//! The migration data files: the save file a source is read through and the
//! resume file a target is written through.
//!
//! C header: [`include/linux/anon_inodes.h`](srctree/include/linux/anon_inodes.h)
//!
//! Both are anonymous-inode files in stream mode (no seek, no positional
//! I/O: `-ESPIPE`). The save file is read-only: it streams the framework's
//! envelope (`Documentation/stream-envelope.rst`) around the vendor's
//! records, one record at a time, so a save session holds one record buffer
//! however large the device. In pre-copy, when nothing is ready, `read`
//! fails with `-ENOMSG` and `poll` waits for the device to change; in
//! stop-copy the end of the state is a permanent end of file. The resume
//! file is write-only: every write goes through the envelope parser, which
//! checks the header (the source's `migration_version`, with the target's
//! rule) as soon as it is complete and every record's checksum before the
//! vendor loads it.
//!
//! A session ends when the state machine leaves its states, on reset and
//! on close: the file then reports `-ENODEV` (and `poll` reports `EPOLLHUP`)
//! but stays safe to use and to close, whatever happened to the device,
//! because it only holds the session (an `Arc`), which ending drops.
//!
//! Locking: the device's state lock comes before a stream's lock; `read`
//! and `write` take only the stream lock.

use core::mem::MaybeUninit;
use core::ptr;
use kernel::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::static_lock_class;
use kernel::sync::{Arc, ArcBorrow, Mutex};
use kernel::types::{ForeignOwnable, Opaque};

use super::bindings;
use super::device::{Core, Device, PrecopyInfo, SavePhase, Saved, StopCopySize};
use super::envelope::{
    Encoder, EnvelopeError, Parser, Sink, StreamError, END_LEN, FRAMEWORK_TAGS, HEADER_MAX,
    RECORD_OVERHEAD, TAG_PCI_CONFIG,
};
use super::pci_config::CONFIG_SIZE;
use super::sync::IrqSafeSpinLock;
use super::user::{UserIn, UserOut};

/// The stream bytes of the configuration space record.
pub(crate) const CONFIG_RECORD: usize = RECORD_OVERHEAD + CONFIG_SIZE;
// A save session's buffer holds at least a header, so it holds this record.
const _: () = assert!(CONFIG_RECORD <= HEADER_MAX);
use super::fsm::{State, StepFailure};
use super::version::VersionError;

/// The errno a refused stream gets: `-EBADMSG` for corrupted data (a
/// checksum mismatch), the version rule's errno for an incompatible source,
/// `-EINVAL` for anything else that is not a well-formed stream.
fn envelope_errno(e: EnvelopeError) -> Error {
    match e {
        EnvelopeError::ChecksumMismatch { .. } => bindings::error(bindings::EBADMSG),
        EnvelopeError::Incompatible(v) => version_errno(v),
        _ => EINVAL,
    }
}

/// The errno of an incompatible version: the vendor's, or `-EINVAL`.
pub(crate) fn version_errno(e: VersionError) -> Error {
    match e {
        VersionError::Vendor(errno) if errno > 0 && errno < 4096 => Error::from_errno(-errno),
        _ => EINVAL,
    }
}

/// Makes a `KBox<dyn Trait>` from a value (6.12's `KBox` does not coerce).
macro_rules! box_dyn {
    ($value:expr, $tr:path) => {{
        let b = KBox::new($value, GFP_KERNEL_ACCOUNT)?;
        let raw = KBox::into_raw(b);
        let raw: *mut dyn $tr = raw;
        // SAFETY: `raw` comes from `KBox::into_raw` just above; only its
        // type changed, by an unsizing coercion.
        unsafe { KBox::from_raw(raw) }
    }};
}

/// The device side of a save session, behind a trait object so that the
/// file operations are not generic.
trait SaveSource: Send {
    /// The vendor's next record, into `buf`.
    fn next(&mut self, phase: SavePhase, buf: &mut [u8]) -> Result<Saved>;
    /// The vendor's next record, through `out`; `None` if it only has `next`.
    fn next_to(&mut self, phase: SavePhase, out: &mut RecordOut<'_>) -> Option<Result<Saved>>;
    /// The vendor's pre-copy progress.
    fn precopy_info(&self) -> PrecopyInfo;
    /// The vendor's records still needed to complete stop-copy.
    fn stop_copy_size(&self) -> StopCopySize;
    /// The device's emulated configuration space, if it has one.
    fn pci_config(&self) -> Option<[u8; CONFIG_SIZE]>;
    /// The device's name, for messages.
    fn name(&self) -> &str;
}

struct DeviceSaveSource<D: Device> {
    core: Arc<Core<D>>,
    state: D::Save,
}

impl<D: Device> SaveSource for DeviceSaveSource<D> {
    fn next(&mut self, phase: SavePhase, buf: &mut [u8]) -> Result<Saved> {
        self.core.dev.save(&mut self.state, phase, buf)
    }

    fn next_to(&mut self, phase: SavePhase, out: &mut RecordOut<'_>) -> Option<Result<Saved>> {
        self.core.dev.save_to(&mut self.state, phase, out)
    }

    fn precopy_info(&self) -> PrecopyInfo {
        self.core.dev.precopy_info(&self.state)
    }

    fn stop_copy_size(&self) -> StopCopySize {
        self.core.dev.stop_copy_size(Some(&self.state))
    }

    fn pci_config(&self) -> Option<[u8; CONFIG_SIZE]> {
        self.core.config.lock().as_ref().map(|c| *c.as_bytes())
    }

    fn name(&self) -> &str {
        self.core.name()
    }
}

struct SaveSession {
    src: KBox<dyn SaveSource>,
    /// Keeps the device alive for `in_precopy` without the stream lock.
    owner: Arc<dyn PrecopyOwner>,
    phase: SavePhase,
    enc: Encoder,
    /// One record (or the header, or the END record) ready to be read.
    buf: KVVec<u8>,
    head: usize,
    tail: usize,
    /// Whether the buffered bytes belong to the initial image.
    buffered_initial: bool,
    /// The END record has been buffered: what remains is all there is.
    ended: bool,
    /// The device's largest record payload.
    max_record: usize,
    /// The error the save failed with: every later read gets it, so a
    /// reader never sees a stream that skips what the device failed to save.
    failed: Option<Error>,
    /// The vendor said `Done` in stop-copy: only the framework's records
    /// and the END record are left.
    vendor_done: bool,
    /// The configuration space record still to send, taken from the device
    /// when the vendor is done.
    config: Option<[u8; CONFIG_SIZE]>,
    /// Whether the device has an emulated configuration space (for
    /// estimates before `config` is taken).
    has_config: bool,
    /// The device answered `save_to` with `None`: it only has `save`.
    no_save_to: bool,
}

/// What the `VFIO_MIG_GET_PRECOPY_INFO` ioctl needs from the device: the
/// state check under the state lock, taken before the stream's lock.
trait PrecopyOwner: Send + Sync {
    /// Runs `f` under the device's state lock if the device is in pre-copy
    /// with `stream` as its session.
    fn with_precopy(&self, stream: &SaveStream, f: &mut dyn FnMut()) -> bool;
}

impl<D: Device> PrecopyOwner for Core<D> {
    fn with_precopy(&self, stream: &SaveStream, f: &mut dyn FnMut()) -> bool {
        let mig = self.mig.lock();
        let ours = mig.save().is_some_and(|s| ptr::eq(&**s, stream));
        let ok = ours && matches!(mig.state, State::PreCopy | State::PreCopyP2p);
        if ok {
            f();
        }
        ok
    }
}

enum Refill {
    Data,
    Later,
}

/// Where [`Device::save_to`](super::device::Device::save_to) sends a
/// record: straight into the reader's buffer, checksummed on the way.
pub struct RecordOut<'a> {
    enc: &'a mut Encoder,
    w: &'a mut UserOut,
    /// Where the record is kept if the reader's buffer faults (its pages
    /// are not there: the copy runs with page faults disabled), for the
    /// read to copy once they are: nothing is lost.
    spill: &'a mut [u8],
    max: usize,
    sent: Option<Sent>,
}

/// What a [`RecordOut`] did with the record.
#[derive(Clone, Copy)]
enum Sent {
    /// In the reader's buffer.
    Delivered { tag: u16, len: usize },
    /// Kept in the session's buffer, `bytes` long (the reader's faulted).
    Spilled { tag: u16, len: usize, bytes: usize },
    /// Refused: not a record the stream may carry.
    Refused,
}

impl RecordOut<'_> {
    /// The largest payload a record may have: the device's
    /// [`max_record`](super::device::Device::max_record).
    pub fn max_payload(&self) -> usize {
        self.max
    }

    /// Sends the record with vendor tag `tag` whose payload is `parts`, one
    /// after the other (1 to [`max_payload`](Self::max_payload) bytes in
    /// all). Once per `save_to` call; `EINVAL` for a second record, a tag
    /// of the framework's or a length out of range (the save then fails).
    ///
    /// The parts are read more than once (checksum, copy, and a second
    /// copy if the reader's buffer faults): they must not change until
    /// `send` returns, so the device holds the lock its writers take.
    pub fn send(&mut self, tag: u16, parts: &[&[u8]]) -> Result {
        let len = parts
            .iter()
            .try_fold(0usize, |n, p| n.checked_add(p.len()))
            .unwrap_or(usize::MAX);
        if self.sent.is_some() || len == 0 || len > self.max || tag >= FRAMEWORK_TAGS {
            self.sent = Some(Sent::Refused);
            return Err(EINVAL);
        }
        // Until the record is out, a failure below leaves it refused.
        self.sent = Some(Sent::Refused);
        let head = self.enc.begin(tag, len).map_err(|_| EIO)?;
        for p in parts {
            self.enc.payload(p).map_err(|_| EIO)?;
        }
        let crc = self.enc.end_record().map_err(|_| EIO)?;
        // The reader's buffer moves on only once the whole record is in it.
        let mut w = *self.w;
        let mut delivered = w.write_nofault(&head);
        for p in parts {
            delivered = delivered.and_then(|()| w.write_nofault(p));
        }
        delivered = delivered.and_then(|()| w.write_nofault(&crc));
        self.sent = Some(match delivered {
            Ok(()) => {
                *self.w = w;
                Sent::Delivered { tag, len }
            }
            Err(_) => {
                // The caller's buffer holds a whole record: so does this.
                let bytes = RECORD_OVERHEAD + len;
                let rec = self.spill.get_mut(..bytes).ok_or(EIO)?;
                rec[..8].copy_from_slice(&head);
                let mut at = 8;
                for p in parts {
                    rec[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                rec[at..].copy_from_slice(&crc);
                Sent::Spilled { tag, len, bytes }
            }
        });
        Ok(())
    }
}

/// What sending a record straight to the reader came to.
enum Direct {
    /// The device has no `save_to`.
    Unsupported,
    /// The record is in the reader's buffer.
    Sent,
    /// The reader's buffer faulted: the record waits in the session's.
    Spilled,
    /// No record from the device: as [`SaveSession::refill`] would say.
    Refilled(Refill),
}

impl SaveSession {
    fn buffered(&self) -> usize {
        self.tail - self.head
    }

    /// Encodes the record whose payload is at `buf[8..8 + len]` around it.
    fn buffer_record(&mut self, tag: u16, len: usize, initial: bool) -> Result {
        let head = self.enc.begin(tag, len).map_err(|_| EIO)?;
        self.buf[..8].copy_from_slice(&head);
        self.enc.payload(&self.buf[8..8 + len]).map_err(|_| EIO)?;
        let crc = self.enc.end_record().map_err(|_| EIO)?;
        self.buf[8 + len..8 + len + 4].copy_from_slice(&crc);
        self.head = 0;
        self.tail = 8 + len + 4;
        self.buffered_initial = initial;
        Ok(())
    }

    /// Buffers the next record: the vendor's, then in stop-copy the
    /// framework's own (the configuration space) and the END record.
    fn refill(&mut self) -> Result<Refill> {
        if self.vendor_done {
            if let Some(config) = self.config.take() {
                self.buf[8..8 + CONFIG_SIZE].copy_from_slice(&config);
                self.buffer_record(TAG_PCI_CONFIG, CONFIG_SIZE, false)?;
                return Ok(Refill::Data);
            }
            let end = self.enc.end().map_err(|_| EIO)?;
            self.buf[..END_LEN].copy_from_slice(&end);
            self.head = 0;
            self.tail = END_LEN;
            self.ended = true;
            self.buffered_initial = false;
            return Ok(Refill::Data);
        }
        let initial = self.initial();
        // The vendor gets exactly its declared largest record: the buffer
        // may be longer (it also holds the header), but a target sizes its
        // record buffer by `max_record()`, so nothing longer may go out.
        let max = self.max_record;
        let saved = self.src.next(self.phase, &mut self.buf[8..8 + max])?;
        self.after_vendor(saved, initial)
    }

    /// Whether the vendor's next record belongs to the initial image.
    fn initial(&self) -> bool {
        self.phase == SavePhase::PreCopy && self.src.precopy_info().initial_bytes > 0
    }

    /// Buffers what the vendor's `save` produced: its record (in the
    /// buffer already), or what comes after its last one.
    fn after_vendor(&mut self, saved: Saved, initial: bool) -> Result<Refill> {
        let max = self.max_record;
        match saved {
            Saved::Record { tag, len } => {
                if len == 0 || len > max || tag >= FRAMEWORK_TAGS {
                    warn_ratelimited!(
                        "{}: the device saved a record of {} bytes (1 to {} allowed) with tag {:#x} (below {:#x} allowed); the save fails\n",
                        self.src.name(),
                        len,
                        max,
                        tag,
                        FRAMEWORK_TAGS
                    );
                    return Err(EIO);
                }
                self.buffer_record(tag, len, initial)?;
                Ok(Refill::Data)
            }
            Saved::Done if self.phase == SavePhase::StopCopy => {
                self.vendor_done = true;
                self.config = self.src.pci_config();
                self.refill()
            }
            // A device with nothing left in pre-copy, or still busy.
            Saved::Done | Saved::Later if self.phase == SavePhase::PreCopy => Ok(Refill::Later),
            // Stop-copy must produce the whole state: a vendor bug.
            Saved::Later | Saved::Done => Err(EIO),
        }
    }

    /// Sends the vendor's next record straight into the reader's buffer,
    /// which has room for it (the device's `save_to`).
    fn send_direct(&mut self, w: &mut UserOut) -> Result<Direct> {
        if self.no_save_to {
            return Ok(Direct::Unsupported);
        }
        let initial = self.initial();
        let mut out = RecordOut {
            enc: &mut self.enc,
            w,
            spill: &mut self.buf[..],
            max: self.max_record,
            sent: None,
        };
        let Some(saved) = self.src.next_to(self.phase, &mut out) else {
            self.no_save_to = true;
            return Ok(Direct::Unsupported);
        };
        let sent = out.sent;
        match (saved, sent) {
            (Ok(Saved::Record { tag, len }), Some(Sent::Delivered { tag: t, len: l }))
                if (t, l) == (tag, len) =>
            {
                Ok(Direct::Sent)
            }
            (
                Ok(Saved::Record { tag, len }),
                Some(Sent::Spilled {
                    tag: t,
                    len: l,
                    bytes,
                }),
            ) if (t, l) == (tag, len) => {
                self.head = 0;
                self.tail = bytes;
                self.buffered_initial = initial;
                Ok(Direct::Spilled)
            }
            (Ok(next @ (Saved::Later | Saved::Done)), None) => {
                self.after_vendor(next, initial).map(Direct::Refilled)
            }
            // The vendor's own error, even after a record went out: the
            // save fails with it either way.
            (Err(e), _) => Err(e),
            (saved, _) => {
                warn_ratelimited!(
                    "{}: the device's record ({:?}) is not the one it sent (1 to {} bytes, a tag below {:#x}, once); the save fails\n",
                    self.src.name(),
                    saved,
                    self.max_record,
                    FRAMEWORK_TAGS
                );
                Err(EIO)
            }
        }
    }

    /// Copies the stream's next bytes into `out`, with page faults
    /// disabled: the session's lock is held. `Ok(None)` when the read is
    /// over (`out` is full, or the stream has nothing more for now);
    /// `Ok(Some(n))` when up to `n` more bytes of `out` must be faulted in,
    /// with the lock dropped, before the read goes on (the rest of the
    /// stream stays buffered).
    fn read(&mut self, out: &mut UserOut) -> Result<Option<usize>> {
        while out.remaining() > 0 {
            if self.buffered() == 0 {
                if self.ended {
                    break;
                }
                if let Some(e) = self.failed {
                    return if out.written() > 0 { Ok(None) } else { Err(e) };
                }
                // Room for a whole record: the device may send it straight
                // into the reader's buffer, one copy instead of two.
                let direct =
                    if !self.vendor_done && out.remaining() >= RECORD_OVERHEAD + self.max_record {
                        self.send_direct(out)
                    } else {
                        Ok(Direct::Unsupported)
                    };
                let refilled = match direct {
                    Ok(Direct::Sent) => continue,
                    // Copied from the session's buffer below, once the
                    // reader's pages are there.
                    Ok(Direct::Spilled) => Ok(Refill::Data),
                    Ok(Direct::Refilled(r)) => Ok(r),
                    Ok(Direct::Unsupported) => self.refill(),
                    Err(e) => Err(e),
                };
                match refilled {
                    Ok(Refill::Data) => {}
                    Ok(Refill::Later) if out.written() > 0 => break,
                    Ok(Refill::Later) => return Err(bindings::error(bindings::ENOMSG)),
                    Err(e) => {
                        // Report the bytes copied first; the error is sticky.
                        self.failed = Some(e);
                        if out.written() > 0 {
                            break;
                        }
                        return Err(e);
                    }
                }
            }
            let n = out.remaining().min(self.buffered());
            let copied = out.write_present(&self.buf[self.head..self.head + n]);
            self.head += copied;
            if copied < n {
                return Ok(Some(FAULT_AHEAD));
            }
        }
        Ok(None)
    }

    fn readable(&self) -> bool {
        if self.buffered() > 0
            || self.ended
            || self.failed.is_some()
            || self.phase == SavePhase::StopCopy
        {
            return true;
        }
        let info = self.src.precopy_info();
        info.initial_bytes > 0 || info.dirty_bytes > 0
    }

    /// The stream bytes still to be read to complete stop-copy: what is
    /// buffered, then the vendor's remaining records and the END record.
    fn stop_copy_size(&self) -> usize {
        let rest = if self.ended || self.failed.is_some() {
            0
        } else if self.vendor_done {
            self.config.map_or(0, |_| CONFIG_RECORD) + END_LEN
        } else {
            let config = if self.has_config { CONFIG_RECORD } else { 0 };
            super::migration::envelope_size(self.src.stop_copy_size(), self.max_record, config)
        };
        self.buffered().saturating_add(rest)
    }

    fn precopy_info(&self) -> PrecopyInfo {
        let mut info = self.src.precopy_info();
        let buffered = self.buffered() as u64;
        // The vendor's figures can be anything: saturate rather than wrap.
        if self.buffered_initial {
            info.initial_bytes = info.initial_bytes.saturating_add(buffered);
        } else {
            info.dirty_bytes = info.dirty_bytes.saturating_add(buffered);
        }
        info
    }
}

/// Wakes the device's pre-copy reader, for a device whose state changes on
/// its own (an engine, the hardware) rather than through the user's
/// accesses, which the framework answers itself. The framework hands one to
/// [`Driver::create`](super::mdev::Driver::create); it may be cloned and
/// kept, like [`Interrupts`](super::device::Interrupts).
///
/// A reader of the save file that found nothing to read (`-ENOMSG`) waits
/// in `poll` until the session has data again, which the framework learns
/// from [`Device::precopy_info`]. Nothing tells it when the device wrote its
/// own state: the vendor calls [`SaveWaker::wake`] after such a change has
/// become visible to `precopy_info`, and the waiting reader looks again.
#[derive(Clone)]
pub struct SaveWaker(Arc<SaveSlot>);

/// The open save session of a device, if any: what [`SaveWaker`] wakes.
#[pin_data]
pub(crate) struct SaveSlot {
    /// Taken with interrupts disabled: a hard interrupt handler wakes
    /// through it.
    #[pin]
    stream: IrqSafeSpinLock<Option<Arc<SaveStream>>>,
}

impl SaveSlot {
    /// An empty slot.
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                stream <- IrqSafeSpinLock::new(None, lock_name!("save_waker"), static_lock_class!()),
            }),
            GFP_KERNEL,
        )
    }

    /// A handle for the device's vendor.
    pub(crate) fn handle(self: &Arc<Self>) -> SaveWaker {
        SaveWaker(self.clone())
    }

    /// Sets the session pollers are woken for; returns the previous one,
    /// for the caller to drop (never under the spinlock: it may be the last
    /// reference).
    pub(crate) fn replace(&self, stream: Option<Arc<SaveStream>>) -> Option<Arc<SaveStream>> {
        core::mem::replace(&mut *self.stream.lock(), stream)
    }

    /// Wakes the session's pollers, if a session is open.
    pub(crate) fn wake(&self) {
        // Under the lock: the session's reference is never dropped here,
        // which in a hard interrupt handler could free it.
        if let Some(s) = self.stream.lock().as_ref() {
            s.wake();
        }
    }
}

impl SaveWaker {
    /// The device's state changed: a reader of its open pre-copy save file
    /// waiting in `poll` looks again at [`Device::precopy_info`]. A no-op
    /// when no save session is open. From any context: process, softirq or
    /// a hardware interrupt handler; it never sleeps. (On PREEMPT_RT its
    /// spinlocks sleep, as [`Interrupts`](super::device::Interrupts)'s do:
    /// there, not from a handler that stays in hard interrupt context, such
    /// as an `HRTIMER_MODE_HARD` timer's.)
    pub fn wake(&self) {
        self.0.wake();
    }
}

/// A save session's file state.
#[pin_data]
pub(crate) struct SaveStream {
    /// Serialises the file's reads, faults in their buffers included: a
    /// read is one contiguous piece of the stream. Only reads take it,
    /// before `inner`.
    #[pin]
    io: Mutex<()>,
    #[pin]
    inner: Mutex<Option<SaveSession>>,
    #[pin]
    wq: Opaque<bindings::wait_queue_head>,
}

// SAFETY: The wait queue head is made for use from any thread; the rest is
// behind a mutex.
unsafe impl Send for SaveStream {}
// SAFETY: As above.
unsafe impl Sync for SaveStream {}

impl SaveStream {
    /// Opens a save session of `core`'s device and its file (one reference,
    /// which the caller hands to the user or drops with [`drop_file`]).
    /// `max_record` is the device's checked largest record payload.
    pub(crate) fn open<D: Device>(
        core: &Arc<Core<D>>,
        phase: SavePhase,
        max_record: usize,
    ) -> Result<(Arc<Self>, *mut bindings::file)> {
        let (enc, header) = Encoder::new(core.version()).map_err(|_| EINVAL)?;
        let cap = (RECORD_OVERHEAD + max_record).max(HEADER_MAX);
        // Charged to the user's memory cgroup, like everything below that a
        // data session allocates: a user opening sessions pays for them.
        let mut buf = KVVec::from_elem(0u8, cap, GFP_KERNEL_ACCOUNT)?;
        let hdr = header.as_bytes();
        buf[..hdr.len()].copy_from_slice(hdr);
        let state = core.dev.save_open()?;
        let src = box_dyn!(
            DeviceSaveSource {
                core: core.clone(),
                state,
            },
            SaveSource
        );
        let owner: Arc<dyn PrecopyOwner> = core.clone();
        let session = SaveSession {
            src,
            owner,
            phase,
            enc,
            buf,
            head: 0,
            tail: hdr.len(),
            buffered_initial: true,
            ended: false,
            max_record,
            failed: None,
            vendor_done: false,
            config: None,
            has_config: core.emulates_config(),
            no_save_to: false,
        };
        let stream = Arc::pin_init(
            pin_init!(Self {
                io <- Mutex::new((), lock_name!("save_io"), static_lock_class!()),
                inner <- Mutex::new(Some(session), lock_name!("save"), static_lock_class!()),
                wq <- init_wait_queue(),
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        let file = new_file(
            kernel::c_str!("[rmdev_save]"),
            &SAVE_FOPS.0,
            stream.clone().into_foreign(),
            true,
        )?;
        Ok((stream, file))
    }

    /// The stream bytes still needed to complete stop-copy (0 once the
    /// session ended).
    pub(crate) fn stop_copy_size(&self) -> usize {
        self.inner.lock().as_ref().map_or(0, |s| s.stop_copy_size())
    }

    /// Switches the session to stop-copy (PRE_COPY* to STOP_COPY).
    pub(crate) fn stop_copy(&self) {
        if let Some(s) = self.inner.lock().as_mut() {
            s.phase = SavePhase::StopCopy;
        }
        self.wake();
    }

    /// Ends the session: the file reports `-ENODEV` from now on.
    pub(crate) fn disable(&self) {
        // Dropped outside the lock: it may drop the last device reference.
        let session = self.inner.lock().take();
        drop(session);
        // With EPOLLHUP in the key: an epoll waiter that asked for no event
        // (EPOLLHUP is always reported) is woken too, not only readers.
        self.wake_with(bindings::RMDEV_EPOLLIN | bindings::RMDEV_EPOLLHUP);
    }

    /// Wakes pollers: there may be new data.
    pub(crate) fn wake(&self) {
        self.wake_with(bindings::RMDEV_EPOLLIN);
    }

    fn wake_with(&self, key: c_uint) {
        // SAFETY: `wq` was initialised by `open` and lives as long as `self`.
        unsafe { bindings::rmdev_wake_up_poll(self.wq.get(), key) };
    }

    fn read(&self, buf: usize, count: usize) -> Result<usize> {
        let _io = self.io.lock();
        let mut out = UserOut::new(buf, count);
        let mut tries = FaultTries::default();
        loop {
            let step = match self.inner.lock().as_mut() {
                Some(s) => s.read(&mut out),
                None => Err(ENODEV),
            };
            let fault = match step {
                Ok(None) => return Ok(out.written()),
                Ok(Some(n)) => tries.next(out.written()).and_then(|()| out.fault_in(n)),
                Err(e) => Err(e),
            };
            // Outside the lock: a fault the user holds up holds up only
            // this read. What was read stays read, the rest stays buffered.
            if let Err(e) = fault {
                return if out.written() > 0 {
                    Ok(out.written())
                } else {
                    Err(e)
                };
            }
        }
    }

    fn poll(&self, file: *mut bindings::file, pt: *mut bindings::poll_table) -> c_uint {
        // SAFETY: `file` and `pt` come from the VFS; `wq` lives as long as the
        // file (the file holds a reference to `self`).
        unsafe { bindings::rmdev_poll_wait(file, self.wq.get(), pt) };
        match self.inner.lock().as_ref() {
            None => bindings::RMDEV_EPOLLIN | bindings::RMDEV_EPOLLHUP,
            Some(s) if s.readable() => bindings::RMDEV_EPOLLIN,
            Some(_) => 0,
        }
    }

    fn precopy_info_ioctl(&self, arg: usize) -> Result {
        const MINSZ: usize = core::mem::size_of::<bindings::vfio_precopy_info>();
        let mut info: bindings::vfio_precopy_info = super::user::copy_in(arg, MINSZ)?;
        if (info.argsz as usize) < MINSZ {
            return Err(EINVAL);
        }
        // The state lock comes first: take the device out of the session
        // without holding the stream lock. A session ended with the device
        // leaving PRE_COPY*, where upstream drivers check the state first
        // and answer EINVAL; so does this file. (They answer ENODEV on an
        // old file while a newer pre-copy session runs; this file no longer
        // holds the device to tell, and answers EINVAL there too.)
        let owner = match self.inner.lock().as_ref() {
            Some(s) => s.owner.clone(),
            None => return Err(EINVAL),
        };
        let mut got = None;
        let in_precopy = owner.with_precopy(self, &mut || {
            got = self.inner.lock().as_ref().map(|s| s.precopy_info());
        });
        if !in_precopy {
            return Err(EINVAL);
        }
        let got = got.ok_or(ENODEV)?;
        info.flags = 0;
        info.initial_bytes = got.initial_bytes;
        info.dirty_bytes = got.dirty_bytes;
        super::user::copy_out(arg, &info, MINSZ)
    }
}

/// The device side of a resume session.
trait LoadTarget: Send {
    /// The stream's source version, checked with the device's rule.
    fn check_version(&mut self, source: &str) -> core::result::Result<(), VersionError>;
    /// One checked record.
    fn record(&mut self, tag: u16, payload: &[u8]) -> Result;
    /// The whole stream arrived: load and validate.
    fn finish(&mut self) -> Result;
    /// The device's name, for messages.
    fn name(&self) -> &str;
}

struct DeviceLoadTarget<D: Device> {
    core: Arc<Core<D>>,
    state: Option<D::Load>,
}

impl<D: Device> LoadTarget for DeviceLoadTarget<D> {
    fn check_version(&mut self, source: &str) -> core::result::Result<(), VersionError> {
        self.core
            .dev
            .version_rule()
            .check(self.core.version(), source)
    }

    fn record(&mut self, tag: u16, payload: &[u8]) -> Result {
        if tag >= FRAMEWORK_TAGS {
            // The framework's own records; a device without an emulated
            // configuration space cannot take one.
            let mut config = self.core.config.lock();
            return match (tag, config.as_mut()) {
                (TAG_PCI_CONFIG, Some(c)) => {
                    c.restore(payload).map_err(|_| EINVAL)?;
                    self.core.config_changed(c);
                    Ok(())
                }
                _ => Err(EINVAL),
            };
        }
        let state = self.state.as_mut().ok_or(EINVAL)?;
        self.core.dev.load(state, tag, payload)
    }

    fn finish(&mut self) -> Result {
        let state = self.state.take().ok_or(EINVAL)?;
        self.core.dev.load_finish(state)
    }

    fn name(&self) -> &str {
        self.core.name()
    }
}

/// Adapts a [`LoadTarget`] to the envelope parser.
struct ParserSink<'a>(&'a mut dyn LoadTarget);

impl Sink for ParserSink<'_> {
    type Error = Error;

    fn check_version(&mut self, source: &str) -> core::result::Result<(), VersionError> {
        self.0.check_version(source)
    }

    fn record(&mut self, tag: u16, payload: &[u8]) -> Result {
        self.0.record(tag, payload)
    }
}

struct ResumeSession {
    target: KBox<dyn LoadTarget>,
    parser: Parser<KVVec<u8>>,
    /// The errno the stream was refused with: every later write gets it.
    failed: Option<Error>,
    /// The vendor loaded the whole stream (`load_finish` succeeded): a retry
    /// of RESUMING to STOP after a failed arc does not load it again.
    loaded: bool,
}

impl ResumeSession {
    /// Parses the next bytes of `input`, copied with page faults disabled:
    /// the session's lock is held. `Ok(None)` when all of them are parsed;
    /// `Ok(Some(n))` when up to `n` more bytes of `input` must be faulted
    /// in, with the lock dropped, before the write goes on.
    fn write(&mut self, input: &mut UserIn) -> Result<Option<usize>> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        while input.remaining() > 0 {
            // Straight from the user into the parser's record buffer (or
            // header, or record head): the stream's one copy before the
            // vendor's. Once the stream ended the window is empty and the
            // commit reports the trailing data.
            let window = self.parser.window();
            let want = input.remaining().min(window.len());
            let n = input.read_present(&mut window[..want]);
            if n == 0 && want > 0 {
                return Ok(Some(FAULT_AHEAD));
            }
            let at = self.parser.offset();
            let res = self.parser.commit(n, &mut ParserSink(&mut *self.target));
            if let Err(e) = res {
                let errno = match e {
                    StreamError::Envelope(env) => {
                        warn_ratelimited!(
                            "{}: migration stream refused near byte {}: {}\n",
                            self.target.name(),
                            at,
                            env
                        );
                        envelope_errno(env)
                    }
                    StreamError::Vendor(v) => {
                        warn_ratelimited!(
                            "{}: migration stream refused near byte {}: the device rejected a record ({})\n",
                            self.target.name(),
                            at,
                            v.to_errno()
                        );
                        v
                    }
                };
                self.failed = Some(errno);
                return Err(errno);
            }
        }
        Ok(None)
    }

    /// The stream must be complete (recoverable if not: the user may write
    /// the rest), then the vendor loads it (its failure loses the state).
    fn finish(&mut self) -> core::result::Result<(), StepFailure<Error>> {
        if self.loaded {
            return Ok(());
        }
        if let Some(e) = self.failed {
            return Err(StepFailure::recoverable(e));
        }
        if let Err(e) = self.parser.finish() {
            warn_ratelimited!(
                "{}: migration stream incomplete at byte {}: {}\n",
                self.target.name(),
                self.parser.offset(),
                e
            );
            return Err(StepFailure::recoverable(envelope_errno(e)));
        }
        self.target.finish().map(|()| self.loaded = true).map_err(|e| {
            warn_ratelimited!(
                "{}: the device could not load a complete migration stream ({}); it is in ERROR until reset\n",
                self.target.name(),
                e.to_errno()
            );
            StepFailure::lost(e)
        })
    }
}

/// A resume session's file state.
#[pin_data]
pub(crate) struct ResumeStream {
    /// Serialises the file's writes, faults in their buffers included: a
    /// write is one contiguous piece of the stream. Only writes take it,
    /// before `inner`.
    #[pin]
    io: Mutex<()>,
    #[pin]
    inner: Mutex<Option<ResumeSession>>,
}

impl ResumeStream {
    /// Opens a resume session of `core`'s device and its file; records up
    /// to `max_record` bytes (the device's checked largest) are accepted.
    pub(crate) fn open<D: Device>(
        core: &Arc<Core<D>>,
        max_record: usize,
    ) -> Result<(Arc<Self>, *mut bindings::file)> {
        // Room for the framework's configuration space record too.
        let room = if core.emulates_config() {
            max_record.max(CONFIG_SIZE)
        } else {
            max_record
        };
        // Charged to the user's memory cgroup, as in `SaveStream::open`.
        let record_buf = KVVec::from_elem(0u8, room, GFP_KERNEL_ACCOUNT)?;
        let state = core.dev.load_open()?;
        let target = box_dyn!(
            DeviceLoadTarget {
                core: core.clone(),
                state: Some(state),
            },
            LoadTarget
        );
        let session = ResumeSession {
            target,
            parser: Parser::new(record_buf),
            failed: None,
            loaded: false,
        };
        let stream = Arc::pin_init(
            pin_init!(Self {
                io <- Mutex::new((), lock_name!("resume_io"), static_lock_class!()),
                inner <- Mutex::new(Some(session), lock_name!("resume"), static_lock_class!()),
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        let file = new_file(
            kernel::c_str!("[rmdev_resume]"),
            &RESUME_FOPS.0,
            stream.clone().into_foreign(),
            false,
        )?;
        Ok((stream, file))
    }

    /// RESUMING to STOP: the stream must be complete, then the vendor loads.
    pub(crate) fn finish(&self) -> core::result::Result<(), StepFailure<Error>> {
        match self.inner.lock().as_mut() {
            Some(s) => s.finish(),
            None => Err(StepFailure::recoverable(ENODEV)),
        }
    }

    /// Ends the session: the file reports `-ENODEV` from now on.
    pub(crate) fn disable(&self) {
        let session = self.inner.lock().take();
        drop(session);
    }

    fn write(&self, buf: usize, count: usize) -> Result<usize> {
        let _io = self.io.lock();
        let mut input = UserIn::new(buf, count);
        let mut tries = FaultTries::default();
        loop {
            let step = match self.inner.lock().as_mut() {
                Some(s) => s.write(&mut input),
                None if input.read() > 0 => return Ok(input.read()),
                None => return Err(ENODEV),
            };
            // Outside the lock: a fault the user holds up holds up only
            // this write. What was taken stays taken.
            let n = match step? {
                None => return Ok(input.read()),
                Some(n) => n,
            };
            if let Err(e) = tries.next(input.read()).and_then(|()| input.fault_in(n)) {
                return if input.read() > 0 {
                    Ok(input.read())
                } else {
                    Err(e)
                };
            }
        }
    }
}

/// How much of the user's buffer a data file faults in at once when a copy
/// with page faults disabled stopped at a missing page: room for several
/// records (the direct path of the next ones needs their pages there too),
/// and little enough to stay resident while the copy goes on.
const FAULT_AHEAD: usize = 1 << 20;

/// Bounds a data file copy's rounds of faulting the user's buffer in and
/// copying again. The copy after a fault-in can fail again if the first
/// page went away meanwhile (unmapped or protected by another of the
/// user's threads, reclaimed, migrated): after [`Self::MAX`] rounds in a
/// row with no byte copied, the copy gives up with `EFAULT` instead of
/// spinning for as long as that goes on.
#[derive(Default)]
struct FaultTries {
    at: usize,
    rounds: u32,
}

impl FaultTries {
    const MAX: u32 = 64;

    /// Another round, with `done` bytes copied so far.
    fn next(&mut self, done: usize) -> Result {
        if done != self.at {
            self.at = done;
            self.rounds = 0;
        }
        self.rounds += 1;
        if self.rounds > Self::MAX {
            return Err(EFAULT);
        }
        Ok(())
    }
}

/// Drops a data file an `open` returned that never reached the user.
pub(crate) fn drop_file(file: *mut bindings::file) {
    // SAFETY: `file` is the reference `open` returned, unused since; its
    // release drops the stream reference.
    unsafe { bindings::fput(file) };
}

/// Initialises a wait queue head in place.
fn init_wait_queue() -> impl PinInit<Opaque<bindings::wait_queue_head>> {
    Opaque::ffi_init(|wq| {
        // SAFETY: `wq` is valid for writes and pinned (pin-init contract);
        // the name is a `'static` string.
        unsafe { bindings::rmdev_init_waitqueue_head(wq, lock_name!("save_wq").as_char_ptr()) }
    })
}

/// Creates an anonymous-inode file in stream mode whose private data is
/// `private` (an `Arc` turned into a foreign pointer, released by the
/// file's `release`, or here on failure).
fn new_file(
    name: &CStr,
    fops: &'static bindings::file_operations,
    private: *const c_void,
    read: bool,
) -> Result<*mut bindings::file> {
    let flags = if read {
        bindings::RMDEV_O_RDONLY
    } else {
        bindings::RMDEV_O_WRONLY
    };
    // SAFETY: `name` and `fops` outlive the file (the name is copied; the
    // fops are static and pin this module through their owner).
    let file = unsafe {
        bindings::anon_inode_getfile(name.as_char_ptr(), fops, private.cast_mut(), flags as c_int)
    };
    match from_err_ptr(file) {
        Ok(file) => {
            // SAFETY: `file` was just created; stream_open only sets mode bits.
            unsafe { bindings::stream_open((*file).f_inode, file) };
            Ok(file)
        }
        Err(e) => {
            // SAFETY: The file was not created: take the reference back. Both
            // stream types are dropped through `Arc` of their own type, and
            // this drop is generic-free: the callers pass `Arc<SaveStream>` or
            // `Arc<ResumeStream>`; see `drop_private`.
            unsafe { drop_private(private, read) };
            Err(e)
        }
    }
}

/// Drops the private data of a data file.
///
/// # Safety
///
/// `private` must come from `Arc::<SaveStream>::into_foreign` if `read`, or
/// `Arc::<ResumeStream>::into_foreign` otherwise, and not be used after.
unsafe fn drop_private(private: *const c_void, read: bool) {
    if read {
        // SAFETY: By the contract.
        drop(unsafe { Arc::<SaveStream>::from_foreign(private) });
    } else {
        // SAFETY: By the contract.
        drop(unsafe { Arc::<ResumeStream>::from_foreign(private) });
    }
}

/// `file_operations` in a `static`: the C structure holds raw pointers.
struct Fops(bindings::file_operations);

// SAFETY: The structure is immutable and its pointers refer to functions and
// to this module, all valid from any thread.
unsafe impl Sync for Fops {}

/// A `file_operations` with every field empty.
const fn empty_fops() -> bindings::file_operations {
    // SAFETY: All-zero is a valid `file_operations`: null pointers and
    // `None` callbacks.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

// The owner is the module the framework is compiled into (`__this_module`,
// which modpost defines for every module): the VFS holds it while a file is
// open, so the callbacks cannot be unloaded under an open file.
static SAVE_FOPS: Fops = Fops(bindings::file_operations {
    owner: ptr::addr_of!(bindings::__this_module).cast_mut(),
    read: Some(save_read),
    poll: Some(save_poll),
    unlocked_ioctl: Some(save_ioctl),
    compat_ioctl: Some(bindings::compat_ptr_ioctl),
    release: Some(save_release),
    ..empty_fops()
});

static RESUME_FOPS: Fops = Fops(bindings::file_operations {
    owner: ptr::addr_of!(bindings::__this_module).cast_mut(),
    write: Some(resume_write),
    release: Some(resume_release),
    ..empty_fops()
});

/// The save stream of a save file.
///
/// # Safety
///
/// `file` must be a file created by [`SaveStream::open`], not yet released.
unsafe fn save_stream<'a>(file: *mut bindings::file) -> ArcBorrow<'a, SaveStream> {
    // SAFETY: By the contract, `private_data` came from
    // `Arc::<SaveStream>::into_foreign` and is given back only in
    // `save_release`, after every other callback.
    unsafe { <Arc<SaveStream> as ForeignOwnable>::borrow((*file).private_data) }
}

/// The `save_read` callback.
///
/// # Safety
///
/// Only called by the VFS, with the arguments it documents for this
/// callback, on an object this module registered.
unsafe extern "C" fn save_read(
    file: *mut bindings::file,
    buf: *mut c_char,
    count: usize,
    ppos: *mut bindings::loff_t,
) -> isize {
    if !ppos.is_null() {
        return ESPIPE.to_errno() as isize;
    }
    // SAFETY: The VFS calls read on a live file of ours.
    let stream = unsafe { save_stream(file) };
    match stream.read(buf as usize, count) {
        Ok(n) => n as isize,
        Err(e) => e.to_errno() as isize,
    }
}

/// The `save_poll` callback.
///
/// # Safety
///
/// Only called by the VFS, with the arguments it documents for this
/// callback, on an object this module registered.
unsafe extern "C" fn save_poll(file: *mut bindings::file, pt: *mut bindings::poll_table) -> c_uint {
    // SAFETY: The VFS calls poll on a live file of ours.
    unsafe { save_stream(file) }.poll(file, pt)
}

/// The `save_ioctl` callback.
///
/// # Safety
///
/// Only called by the VFS, with the arguments it documents for this
/// callback, on an object this module registered.
unsafe extern "C" fn save_ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
    if cmd != bindings::RMDEV_VFIO_MIG_GET_PRECOPY_INFO {
        return ENOTTY.to_errno() as c_long;
    }
    // SAFETY: The VFS calls ioctl on a live file of ours.
    match unsafe { save_stream(file) }.precopy_info_ioctl(arg) {
        Ok(()) => 0,
        Err(e) => e.to_errno() as c_long,
    }
}

/// The `save_release` callback.
///
/// # Safety
///
/// Only called by the VFS, with the arguments it documents for this
/// callback, on an object this module registered.
unsafe extern "C" fn save_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: The VFS releases each file once; `private_data` came from
    // `Arc::<SaveStream>::into_foreign`.
    unsafe { drop_private((*file).private_data, true) };
    0
}

/// The `resume_write` callback.
///
/// # Safety
///
/// Only called by the VFS, with the arguments it documents for this
/// callback, on an object this module registered.
unsafe extern "C" fn resume_write(
    file: *mut bindings::file,
    buf: *const c_char,
    count: usize,
    ppos: *mut bindings::loff_t,
) -> isize {
    if !ppos.is_null() {
        return ESPIPE.to_errno() as isize;
    }
    // SAFETY: The VFS calls write on a live file of ours, whose private
    // data came from `Arc::<ResumeStream>::into_foreign` and is given back
    // only in `resume_release`.
    let stream = unsafe { <Arc<ResumeStream> as ForeignOwnable>::borrow((*file).private_data) };
    match stream.write(buf as usize, count) {
        Ok(n) => n as isize,
        Err(e) => e.to_errno() as isize,
    }
}

/// The `resume_release` callback.
///
/// # Safety
///
/// Only called by the VFS, with the arguments it documents for this
/// callback, on an object this module registered.
unsafe extern "C" fn resume_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: The VFS releases each file once; `private_data` came from
    // `Arc::<ResumeStream>::into_foreign`.
    unsafe { drop_private((*file).private_data, false) };
    0
}
