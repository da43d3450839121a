// SPDX-License-Identifier: GPL-2.0

//! VFIO migration v2 for every migratable device: `vfio_migration_ops`,
//! `vfio_log_ops`, and the walk of the state machine.
//!
//! C header: [`include/linux/vfio.h`](srctree/include/linux/vfio.h)
//!
//! A `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` SET takes the device's state lock
//! and walks from the current state to the target by single arcs, with
//! [`super::fsm::transition`] (the Linux 6.12 path, checked against the
//! kernel's table on the host). Around each of the vendor's steps the
//! framework applies the arc's session effect: it opens the save or resume
//! data file, switches a save session to stop-copy, or ends a session (its
//! file reports `-ENODEV` from then on). Only the last arc of a path can
//! open a session, so at most one file is returned per SET.
//!
//! Errors: ERROR as a target, a state outside the flag set or a blocked arc
//! (STOP_COPY to PRE_COPY) give `-EINVAL` with no arc taken; any SET while
//! the device is in ERROR gives `-EIO` (only `VFIO_DEVICE_RESET` leaves it);
//! a failed vendor step gives the vendor's errno and leaves the device in
//! the last state reached (or ERROR if the vendor reports the state lost).
//! A complete stream whose `load_finish` fails also ends in ERROR: the
//! stream is used up and the device half loaded.
//!
//! Sessions end in one place, [`MigState::enter`], which every state change
//! goes through: a data file never outlives its data transfer state.

use core::marker::PhantomData;
use kernel::ffi::{c_int, c_ulong};

use kernel::prelude::*;
use kernel::sync::Arc;

use super::bindings;
use super::device::{Core, Device, StopCopySize};
use super::envelope::{
    END_LEN, HEADER_MAX, MAX_RECORD_PAYLOAD, MIN_RECORD_PAYLOAD, RECORD_OVERHEAD,
};
use super::fsm::{self, FlagSet, SessionEffect, State, StateArc, StepFailure, TransitionError};
use super::stream::{ResumeStream, SaveStream};

/// The migration state of one device, under its state lock.
pub(crate) struct MigState {
    /// The device's flag set; `None` if it cannot migrate.
    pub(crate) flags: Option<FlagSet>,
    /// The current state.
    pub(crate) state: State,
    /// The device's largest record payload, read once and checked at
    /// registration: sessions size their buffers by this, never by a
    /// second call to the vendor.
    pub(crate) max_record: usize,
    save: Option<Arc<SaveStream>>,
    resume: Option<Arc<ResumeStream>>,
}

impl MigState {
    pub(crate) fn new() -> Self {
        Self {
            flags: None,
            state: State::Running,
            max_record: 0,
            save: None,
            resume: None,
        }
    }

    /// The open save session, if any.
    pub(crate) fn save(&self) -> Option<&Arc<SaveStream>> {
        self.save.as_ref()
    }
}

/// Ends any open session and returns the state to RUNNING: close, open and
/// reset.
pub(crate) fn back_to_running<D: Device>(core: &Core<D>, mig: &mut MigState) {
    mig.enter(core, State::Running);
}

/// Checks a new device's migration setup; returns its flag set and largest
/// record payload.
pub(crate) fn check_device<D: Device>(core: &Core<D>) -> Result<Option<(FlagSet, usize)>> {
    let Some(flags) = core.dev.migration() else {
        return Ok(None);
    };
    let version = core.version();
    // A device must at least accept its own state: this catches an empty,
    // over-long or malformed string, whatever the rule.
    let sane = super::version::check_written(core.dev.version_rule(), version, version.as_bytes());
    if let Err(e) = sane {
        pr_err!(
            "{}: migratable device with an unusable migration_version {:?}: {}\n",
            core.name(),
            version,
            e
        );
        return Err(EINVAL);
    }
    if let Err(e) = fsm::check_arcs::<D::Arcs>(flags) {
        pr_err!("{}: {}\n", core.name(), e);
        return Err(EINVAL);
    }
    let max = core.dev.max_record();
    if !(MIN_RECORD_PAYLOAD..=MAX_RECORD_PAYLOAD).contains(&max) {
        pr_err!(
            "{}: the device's largest record is {} bytes; it must be {} to {}\n",
            core.name(),
            max,
            MIN_RECORD_PAYLOAD,
            MAX_RECORD_PAYLOAD
        );
        return Err(EINVAL);
    }
    Ok(Some((flags, max)))
}

impl MigState {
    /// Moves the device to `state` and ends every session that does not
    /// belong to it: a save session outside PRE_COPY, PRE_COPY_P2P and
    /// STOP_COPY, a resume session outside RESUMING. This is the one place
    /// sessions end (ending arcs, ERROR, reset, close and open all come
    /// here), so a data file never outlives its data transfer state: its
    /// reads and writes fail with `-ENODEV` and `poll` reports `EPOLLHUP`.
    ///
    /// Every arc comes here, and most end nothing: that test is inline, the
    /// ending is not.
    #[inline]
    pub(crate) fn enter<D: Device>(&mut self, core: &Core<D>, state: State) {
        self.state = state;
        let ends_save = self.save.is_some() && !state.is_saving();
        let ends_resume = self.resume.is_some() && state != State::Resuming;
        if ends_save || ends_resume {
            self.end_sessions(core, state);
        }
    }

    /// [`MigState::enter`]'s ending of the sessions `state` has no place for.
    #[inline(never)]
    fn end_sessions<D: Device>(&mut self, core: &Core<D>, state: State) {
        if !state.is_saving() {
            if let Some(s) = self.save.take() {
                // Dropped after the spinlock is released: never free under it.
                let waker = core.waker.replace(None);
                drop(waker);
                s.disable();
            }
        }
        if state != State::Resuming {
            if let Some(r) = self.resume.take() {
                r.disable();
            }
        }
    }
}

/// Walks the state machine for one SET: performs each arc with the vendor
/// and applies its session effect.
struct Walk<'a, D: Device> {
    core: &'a Arc<Core<D>>,
    mig: &'a mut MigState,
    /// The data file the last arc opened, handed to the VFIO core.
    file: *mut bindings::file,
}

impl<D: Device> Walk<'_, D> {
    /// The vendor's step for `arc`, then the state it leads to: `arc.to()`
    /// on success, ERROR if the vendor lost the state, unchanged otherwise.
    #[inline]
    fn vendor_step(&mut self, arc: D::Arcs) -> core::result::Result<(), StepFailure<Error>> {
        let to = Into::<StateArc>::into(arc).to();
        match self.core.dev.step(arc) {
            Ok(()) => {
                self.mig.enter(self.core, to);
                Ok(())
            }
            Err(f) => {
                if f.device_lost {
                    self.mig.enter(self.core, State::Error);
                }
                Err(f)
            }
        }
    }
}

impl<D: Device> Walk<'_, D> {
    /// The vendor's step for an arc that opens a session, registered before
    /// the step so that a lost arc ends it. On failure the device is where
    /// it was (or in ERROR), a state without that session: `enter` ends it,
    /// and its file, never handed out, is dropped. On success the file goes
    /// to the user.
    fn open_step(
        &mut self,
        arc: D::Arcs,
        file: *mut bindings::file,
    ) -> core::result::Result<(), StepFailure<Error>> {
        if let Err(f) = self.vendor_step(arc) {
            let state = self.mig.state;
            self.mig.enter(self.core, state);
            super::stream::drop_file(file);
            return Err(f);
        }
        self.file = file;
        Ok(())
    }
}

impl<D: Device> fsm::Stepper for Walk<'_, D> {
    type Arcs = D::Arcs;
    type Error = Error;

    fn step(&mut self, arc: D::Arcs) -> core::result::Result<(), StepFailure<Error>> {
        let state_arc: StateArc = arc.into();
        match state_arc.session() {
            // Ending sessions is `MigState::enter`'s job, after the arc.
            SessionEffect::None | SessionEffect::EndSave => self.vendor_step(arc),
            SessionEffect::OpenSave => {
                let phase = if state_arc.to() == State::StopCopy {
                    super::device::SavePhase::StopCopy
                } else {
                    super::device::SavePhase::PreCopy
                };
                let (stream, file) = SaveStream::open(self.core, phase, self.mig.max_record)
                    .map_err(StepFailure::recoverable)?;
                // Registered before the arc, so a lost arc ends it in `enter`.
                let old = self.core.waker.replace(Some(stream.clone()));
                drop(old);
                self.mig.save = Some(stream);
                self.open_step(arc, file)
            }
            SessionEffect::OpenResume => {
                let (stream, file) = ResumeStream::open(self.core, self.mig.max_record)
                    .map_err(StepFailure::recoverable)?;
                self.mig.resume = Some(stream);
                self.open_step(arc, file)
            }
            SessionEffect::ContinueSave => {
                self.vendor_step(arc)?;
                if let Some(s) = &self.mig.save {
                    s.stop_copy();
                }
                Ok(())
            }
            SessionEffect::EndResume => {
                // Load and validate before the arc. An incomplete or refused
                // stream fails the SET and the device stays in RESUMING with
                // its file; a complete stream the vendor cannot load
                // (`load_finish`) has been used up into a half-loaded
                // device: ERROR.
                let finished = self.mig.resume.as_ref().map_or(Ok(()), |r| r.finish());
                if let Err(f) = finished {
                    if f.device_lost {
                        self.mig.enter(self.core, State::Error);
                    }
                    return Err(f);
                }
                self.vendor_step(arc)
            }
        }
    }
}

/// The `vfio_migration_ops` and `vfio_log_ops` trampolines for `D`.
struct Ops<D>(PhantomData<D>);

/// The `vfio_migration_ops` of devices of type `D`.
pub(crate) fn mig_ops<D: Device>() -> &'static bindings::vfio_migration_ops {
    &Ops::<D>::MIG_OPS
}

/// The `vfio_log_ops` of devices of type `D`: dirty logging of the guest
/// memory they reach through [`GuestMemory`](super::dma::GuestMemory),
/// which QEMU needs before it migrates a device by default.
pub(crate) fn log_ops<D: Device>() -> &'static bindings::vfio_log_ops {
    &Ops::<D>::LOG_OPS
}

impl<D: Device> Ops<D> {
    const MIG_OPS: bindings::vfio_migration_ops = bindings::vfio_migration_ops {
        migration_set_state: Some(Self::set_state),
        migration_get_state: Some(Self::get_state),
        migration_get_data_size: Some(Self::get_data_size),
    };

    /// `vfio_log_ops`: dirty logging of guest memory, for every device
    /// that migrates ([`super::dma`]).
    const LOG_OPS: bindings::vfio_log_ops = bindings::vfio_log_ops {
        log_start: Some(Self::log_start),
        log_stop: Some(Self::log_stop),
        log_read_and_clear: Some(Self::log_read_and_clear),
    };

    /// The `log_start` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn log_start(
        vdev: *mut bindings::vfio_device,
        ranges: *mut bindings::rb_root_cached,
        _nnodes: u32,
        page_size: *mut u64,
    ) -> c_int {
        // SAFETY: As in `log_read_and_clear`; `page_size` is the user's
        // page size, in the core's copy of the request.
        let (core, page_size) = unsafe { (Self::core(vdev), &mut *page_size) };
        // Reports are at least page granular: the log keeps pages.
        if *page_size < super::dma::PAGE_SIZE {
            *page_size = super::dma::PAGE_SIZE;
        }
        // SAFETY: `ranges` is the core's tree (the callback's contract).
        match unsafe { core.dma.log_start(ranges) } {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// The `log_stop` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn log_stop(vdev: *mut bindings::vfio_device) -> c_int {
        // SAFETY: As in `log_read_and_clear`.
        unsafe { Self::core(vdev) }.dma.log_stop();
        0
    }

    /// The `log_read_and_clear` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn log_read_and_clear(
        vdev: *mut bindings::vfio_device,
        iova: c_ulong,
        length: c_ulong,
        dirty: *mut bindings::iova_bitmap,
    ) -> c_int {
        // SAFETY: The VFIO core calls this on a registered device with
        // `log_ops`, which only `device::register` sets.
        let core = unsafe { Self::core(vdev) };
        // SAFETY: `dirty` is the core's bitmap for this range.
        match unsafe { core.dma.log_read(iova as u64, length as u64, dirty) } {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// The framework state of `vdev`.
    ///
    /// # Safety
    ///
    /// `vdev` must be a registered device of type `D` with migration.
    unsafe fn core<'a>(vdev: *mut bindings::vfio_device) -> &'a Arc<Core<D>> {
        // SAFETY: By the contract (see `device::VfioDevice`).
        unsafe { super::device::core_of::<D>(vdev) }
    }

    /// The `set_state` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn set_state(
        vdev: *mut bindings::vfio_device,
        new: bindings::vfio_device_mig_state,
    ) -> *mut bindings::file {
        // SAFETY: The VFIO core calls this on a registered device with
        // `mig_ops`, which only `device::register` sets.
        let core = unsafe { Self::core(vdev) };
        let Some(target) = State::from_raw(new) else {
            return EINVAL.to_ptr();
        };
        let mut mig = core.mig.lock();
        let Some(flags) = mig.flags else {
            return ENOTTY.to_ptr();
        };
        let mut state = mig.state;
        let mut walk = Walk {
            core,
            mig: &mut mig,
            file: core::ptr::null_mut(),
        };
        let res = fsm::transition(flags, &mut state, target, &mut walk);
        let file = walk.file;
        // `walk` entered every state it reached; this restates the final one
        // so that no path out of the walk can skip ending a session.
        mig.enter(core, state);
        if res.is_err() && !file.is_null() {
            // Not reachable with Linux 6.12's paths (only a path's last arc
            // opens a session; the host tests check every path), but a file
            // the user will never get must not leak if that ever changes.
            super::stream::drop_file(file);
        }
        match res {
            Ok(_) => file,
            Err(TransitionError::InError) => EIO.to_ptr(),
            Err(TransitionError::Invalid) | Err(TransitionError::ArcNotHandled(_)) => {
                EINVAL.to_ptr()
            }
            Err(TransitionError::Step { error, .. }) => error.to_ptr(),
        }
    }

    /// The `get_state` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn get_state(
        vdev: *mut bindings::vfio_device,
        out: *mut bindings::vfio_device_mig_state,
    ) -> c_int {
        // SAFETY: As in `set_state`.
        let core = unsafe { Self::core(vdev) };
        let state = core.mig.lock().state;
        // SAFETY: The VFIO core passes a valid pointer.
        unsafe { *out = state.raw() as bindings::vfio_device_mig_state };
        0
    }

    /// The `get_data_size` callback.
    ///
    /// # Safety
    ///
    /// Only called by the VFIO core, with the arguments it documents for this
    /// callback, on an object this module registered.
    unsafe extern "C" fn get_data_size(
        vdev: *mut bindings::vfio_device,
        out: *mut c_ulong,
    ) -> c_int {
        // SAFETY: As in `set_state`.
        let core = unsafe { Self::core(vdev) };
        // Under the state lock, as the uAPI expects of drivers; the save
        // session's lock comes after it.
        let mig = core.mig.lock();
        let size = match mig.save() {
            // What the open session still has to produce.
            Some(s) => s.stop_copy_size(),
            // A whole new stop-copy stream.
            None => {
                let framework = if core.emulates_config() {
                    super::stream::CONFIG_RECORD
                } else {
                    0
                };
                let data = core.dev.stop_copy_size(None);
                envelope_size(data, mig.max_record, HEADER_MAX + framework)
            }
        };
        // SAFETY: The VFIO core passes a valid pointer.
        unsafe { *out = size as c_ulong };
        0
    }
}

/// The stream bytes that carry the vendor's remaining records (`size`, in
/// records of at most `max_record` bytes) after `header` bytes (the stream
/// header if it is still to come, the framework's own records), up to and
/// including the END record. The vendor's figures can be anything: this
/// saturates rather than wraps, and `max_record` is at least
/// `MIN_RECORD_PAYLOAD` (checked at registration), so the division is
/// defined.
pub(crate) fn envelope_size(size: StopCopySize, max_record: usize, header: usize) -> usize {
    let records = size.records.max(size.bytes.div_ceil(max_record.max(1)));
    records
        .saturating_mul(RECORD_OVERHEAD)
        .saturating_add(size.bytes)
        .saturating_add(header)
        .saturating_add(END_LEN)
}
