// SPDX-License-Identifier: GPL-2.0

//! The VFIO migration v2 state machine.
//!
//! - [`State`] and [`FlagSet`]: the eight device states and the four flag sets
//!   the uAPI defines (`include/uapi/linux/vfio.h`); any other set of
//!   `VFIO_MIGRATION_*` bits is refused by [`FlagSet::from_bits`].
//! - [`next_step`]: the next single state on the way from a current to a
//!   target state, exactly as Linux 6.12's `vfio_mig_get_next_state()`; where
//!   the kernel would `WARN_ON`, it returns [`NextStepError::CurrentUnsupported`]
//!   instead.
//! - [`StateArc`]: the 18 single arcs any flag set uses, each with the data
//!   session effect the framework (not the vendor) applies; the typed arc sets
//!   ([`StopCopyArc`], [`StopCopyP2pArc`], [`StopCopyPreCopyArc`],
//!   [`StopCopyP2pPreCopyArc`]) hold exactly the arcs one flag set needs, so a
//!   vendor's exhaustive `match` on its set is a compile-time proof that it
//!   handles every arc; [`NoArcs`] is the empty set of a device that does not
//!   migrate, and [`check_arcs`] is the registration-time check that a
//!   device's arc set covers its flag set.
//! - [`transition`]: walks from the current state to a target by single arcs,
//!   stopping at the first failure in the last state reached (or in ERROR when
//!   the step reports the device lost).

use core::fmt;

/// A migration state, numbered as `enum vfio_device_mig_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum State {
    /// The device failed an arc and is in no defined state; only a reset leaves it.
    Error = 0,
    /// Stopped: no DMA, no interrupts, no internal state change.
    Stop = 1,
    /// Normal operation.
    Running = 2,
    /// Stopped, and the save session streams the final device state.
    StopCopy = 3,
    /// Stopped, loading the state written to the resume session.
    Resuming = 4,
    /// Running, but not initiating peer-to-peer DMA.
    RunningP2p = 5,
    /// Running, with the save session streaming iterative (pre-copy) data.
    PreCopy = 6,
    /// [`State::PreCopy`] with peer-to-peer quiescence.
    PreCopyP2p = 7,
}

/// The number of states (`VFIO_DEVICE_STATE_NR`).
pub const NR_STATES: usize = 8;

impl State {
    /// All states, in uAPI order.
    pub const ALL: [State; NR_STATES] = [
        State::Error,
        State::Stop,
        State::Running,
        State::StopCopy,
        State::Resuming,
        State::RunningP2p,
        State::PreCopy,
        State::PreCopyP2p,
    ];

    /// The state with uAPI value `raw`, if there is one.
    pub const fn from_raw(raw: u32) -> Option<State> {
        if (raw as usize) < NR_STATES {
            Some(Self::ALL[raw as usize])
        } else {
            None
        }
    }

    /// The uAPI value.
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// The name without the `VFIO_DEVICE_STATE_` prefix, as the kernel's
    /// debugfs and the FSM oracle spell it.
    pub const fn name(self) -> &'static str {
        match self {
            State::Error => "ERROR",
            State::Stop => "STOP",
            State::Running => "RUNNING",
            State::StopCopy => "STOP_COPY",
            State::Resuming => "RESUMING",
            State::RunningP2p => "RUNNING_P2P",
            State::PreCopy => "PRE_COPY",
            State::PreCopyP2p => "PRE_COPY_P2P",
        }
    }

    /// The state named `name` (as [`State::name`] spells it).
    pub fn from_name(name: &str) -> Option<State> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the state belongs to the saving group (PRE_COPY, PRE_COPY_P2P,
    /// STOP_COPY), whose states share one save session.
    pub const fn is_saving(self) -> bool {
        matches!(self, State::PreCopy | State::PreCopyP2p | State::StopCopy)
    }

    /// The `VFIO_MIGRATION_*` bits a device needs for this state
    /// (`state_flags_table` in `vfio_main.c`; ERROR needs every bit, so it is
    /// never a supported state).
    const fn required_bits(self) -> u32 {
        match self {
            State::Error => u32::MAX,
            State::Stop | State::Running | State::StopCopy | State::Resuming => STOP_COPY,
            State::RunningP2p => STOP_COPY | P2P,
            State::PreCopy => STOP_COPY | PRE_COPY,
            State::PreCopyP2p => STOP_COPY | P2P | PRE_COPY,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `VFIO_MIGRATION_STOP_COPY`.
pub const STOP_COPY: u32 = 1 << 0;
/// `VFIO_MIGRATION_P2P`.
pub const P2P: u32 = 1 << 1;
/// `VFIO_MIGRATION_PRE_COPY`.
pub const PRE_COPY: u32 = 1 << 2;

/// One of the four migration flag sets the uAPI defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlagSet {
    /// `STOP_COPY` (0x1).
    StopCopy,
    /// `STOP_COPY | P2P` (0x3).
    StopCopyP2p,
    /// `STOP_COPY | PRE_COPY` (0x5).
    StopCopyPreCopy,
    /// `STOP_COPY | P2P | PRE_COPY` (0x7).
    StopCopyP2pPreCopy,
}

/// Why a set of `VFIO_MIGRATION_*` bits is not a flag set a device can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagsError {
    /// Bits outside STOP_COPY, P2P and PRE_COPY (the value is the unknown bits).
    UnknownBits(u32),
    /// STOP_COPY is missing: it is the base of every defined flag set.
    NoStopCopy,
}

impl fmt::Display for FlagsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagsError::UnknownBits(b) => write!(
                f,
                "unknown migration flag bits {b:#x} (defined: STOP_COPY 0x1, P2P 0x2, PRE_COPY 0x4)"
            ),
            FlagsError::NoStopCopy => f.write_str(
                "STOP_COPY (0x1) is missing; the uAPI defines only 0x1, 0x3, 0x5 and 0x7",
            ),
        }
    }
}

impl FlagSet {
    /// The four flag sets, in increasing bit order.
    pub const ALL: [FlagSet; 4] = [
        FlagSet::StopCopy,
        FlagSet::StopCopyP2p,
        FlagSet::StopCopyPreCopy,
        FlagSet::StopCopyP2pPreCopy,
    ];

    /// The flag set with these bits, or why there is none.
    pub const fn from_bits(bits: u32) -> Result<FlagSet, FlagsError> {
        let unknown = bits & !(STOP_COPY | P2P | PRE_COPY);
        if unknown != 0 {
            return Err(FlagsError::UnknownBits(unknown));
        }
        match bits {
            0x1 => Ok(FlagSet::StopCopy),
            0x3 => Ok(FlagSet::StopCopyP2p),
            0x5 => Ok(FlagSet::StopCopyPreCopy),
            0x7 => Ok(FlagSet::StopCopyP2pPreCopy),
            _ => Err(FlagsError::NoStopCopy),
        }
    }

    /// The `VFIO_MIGRATION_*` bits, as `VFIO_DEVICE_FEATURE_MIGRATION` reports them.
    pub const fn bits(self) -> u32 {
        match self {
            FlagSet::StopCopy => STOP_COPY,
            FlagSet::StopCopyP2p => STOP_COPY | P2P,
            FlagSet::StopCopyPreCopy => STOP_COPY | PRE_COPY,
            FlagSet::StopCopyP2pPreCopy => STOP_COPY | P2P | PRE_COPY,
        }
    }

    /// Whether a device with this flag set supports `state` (never ERROR).
    pub const fn supports(self, state: State) -> bool {
        let need = state.required_bits();
        need & self.bits() == need
    }

    /// The single arcs a device with this flag set must implement: exactly
    /// the arcs [`next_step`] can ask for (6, 8, 9 or 15 of them).
    pub const fn arcs(self) -> &'static [StateArc] {
        match self {
            FlagSet::StopCopy => StopCopyArc::STATE_ARCS,
            FlagSet::StopCopyP2p => StopCopyP2pArc::STATE_ARCS,
            FlagSet::StopCopyPreCopy => StopCopyPreCopyArc::STATE_ARCS,
            FlagSet::StopCopyP2pPreCopy => StopCopyP2pPreCopyArc::STATE_ARCS,
        }
    }
}

impl fmt::Display for FlagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlagSet::StopCopy => "STOP_COPY",
            FlagSet::StopCopyP2p => "STOP_COPY|P2P",
            FlagSet::StopCopyPreCopy => "STOP_COPY|PRE_COPY",
            FlagSet::StopCopyP2pPreCopy => "STOP_COPY|P2P|PRE_COPY",
        })
    }
}

/// Why [`next_step`] has no next state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStepError {
    /// The target is ERROR, not supported by the flag set, or not reachable
    /// (STOP_COPY to PRE_COPY*): the kernel returns `-EINVAL`.
    Invalid,
    /// The current state is ERROR or not supported by the flag set: the
    /// kernel fires a `WARN_ON` and returns `-EINVAL`. A correct framework
    /// never gets here (it refuses to step in ERROR), so this is a bug report.
    CurrentUnsupported,
}

impl NextStepError {
    /// How the FSM oracle (`core/logic/tests/data/fsm-oracle.txt`) writes
    /// this outcome: `EINVAL`, or `WARN+EINVAL` where the kernel also warns.
    pub const fn oracle_word(self) -> &'static str {
        match self {
            NextStepError::Invalid => "EINVAL",
            NextStepError::CurrentUnsupported => "WARN+EINVAL",
        }
    }
}

use State::{
    Error as ERR, PreCopy as PC, PreCopyP2p as PCP, Resuming as RES, Running as RUN,
    RunningP2p as RP2P, Stop as STOP, StopCopy as SC,
};

/// `vfio_from_fsm_table` of Linux 6.12: row = current, column = target, cell
/// = next step before unsupported states are skipped. Shortest paths; saving
/// states are never interior steps; RESUMING and STOP_COPY always leave via
/// STOP; STOP_COPY to PRE_COPY* is blocked (ERROR).
const FROM_FSM_TABLE: [[State; NR_STATES]; NR_STATES] = [
    //  ERROR STOP  RUNNING STOP_COPY RESUMING RUNNING_P2P PRE_COPY PRE_COPY_P2P
    [ERR, ERR, ERR, ERR, ERR, ERR, ERR, ERR],       // ERROR
    [ERR, STOP, RP2P, SC, RES, RP2P, RP2P, RP2P],   // STOP
    [ERR, RP2P, RUN, RP2P, RP2P, RP2P, PC, RP2P],   // RUNNING
    [ERR, STOP, STOP, SC, STOP, STOP, ERR, ERR],    // STOP_COPY
    [ERR, STOP, STOP, STOP, RES, STOP, STOP, STOP], // RESUMING
    [ERR, STOP, RUN, STOP, STOP, RP2P, RUN, PCP],   // RUNNING_P2P
    [ERR, RUN, RUN, PCP, RUN, RUN, PC, PCP],        // PRE_COPY
    [ERR, RP2P, RP2P, SC, RP2P, RP2P, PC, PCP],     // PRE_COPY_P2P
];

/// The next single state on the way from `cur` to `target` for a device with
/// `flags`: the behaviour of Linux 6.12's `vfio_mig_get_next_state()`.
///
/// For `cur == target` (which callers never ask, as the kernel's do not) the
/// answer is `cur`.
#[inline]
pub fn next_step(flags: FlagSet, cur: State, target: State) -> Result<State, NextStepError> {
    if !flags.supports(cur) {
        return Err(NextStepError::CurrentUnsupported);
    }
    if !flags.supports(target) {
        return Err(NextStepError::Invalid);
    }
    let mut next = FROM_FSM_TABLE[cur as usize][target as usize];
    // Skip states the flag set lacks. Every row leads towards `target`, and
    // `target` is supported, so this ends within NR_STATES rounds; the bound
    // only makes that obvious.
    let mut rounds = 0;
    while next != State::Error && !flags.supports(next) && rounds < NR_STATES {
        next = FROM_FSM_TABLE[next as usize][target as usize];
        rounds += 1;
    }
    if next == State::Error || !flags.supports(next) {
        Err(NextStepError::Invalid)
    } else {
        Ok(next)
    }
}

/// What an arc does to the data session. The framework applies it around the
/// vendor's step, so no vendor can get it wrong (uAPI, "Arcs that end a
/// session" and "Which SETs return a new FD").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEffect {
    /// Nothing: no session starts or ends.
    None,
    /// A save session starts; its read-only data file is returned to the user.
    OpenSave,
    /// A resume session starts; its write-only data file is returned to the user.
    OpenResume,
    /// The existing save session continues with the final (stop-copy) data.
    ContinueSave,
    /// The save session ends: its file reports `-ENODEV` from now on.
    EndSave,
    /// The resume session ends after the vendor loaded and validated the data.
    EndResume,
}

macro_rules! state_arcs {
    ($($(#[$doc:meta])* $name:ident = $from:ident => $to:ident, $effect:ident;)*) => {
        /// A single arc of the state machine: every arc any flag set uses.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum StateArc {
            $($(#[$doc])* $name,)*
        }

        impl StateArc {
            /// All arcs.
            pub const ALL: &'static [StateArc] = &[$(StateArc::$name,)*];

            // Each SET asks these of every arc it takes: array lookups,
            // inline (a `match` here compiles to a chain of compares in a
            // function of its own).

            /// The state the arc leaves.
            #[inline]
            pub const fn from(self) -> State {
                const FROM: &[State] = &[$(State::$from,)*];
                FROM[self as usize]
            }

            /// The state the arc reaches.
            #[inline]
            pub const fn to(self) -> State {
                const TO: &[State] = &[$(State::$to,)*];
                TO[self as usize]
            }

            /// What the arc does to the data session.
            #[inline]
            pub const fn session(self) -> SessionEffect {
                const SESSION: &[SessionEffect] = &[$(SessionEffect::$effect,)*];
                SESSION[self as usize]
            }

            /// The arc from `from` to `to`, if any flag set has one (a
            /// table lookup: every SET asks for each arc of its path).
            #[inline]
            pub const fn between(from: State, to: State) -> Option<StateArc> {
                ARC_BY_ENDS[from as usize][to as usize]
            }
        }

        /// [`StateArc::between`]'s table, built from the arcs' own ends.
        const ARC_BY_ENDS: [[Option<StateArc>; NR_STATES]; NR_STATES] = {
            let mut table = [[None; NR_STATES]; NR_STATES];
            let mut i = 0;
            while i < StateArc::ALL.len() {
                let arc = StateArc::ALL[i];
                table[arc.from() as usize][arc.to() as usize] = Some(arc);
                i += 1;
            }
            table
        };
    };
}

state_arcs! {
    /// RUNNING to STOP (no P2P).
    RunningToStop = Running => Stop, None;
    /// STOP to RUNNING (no P2P).
    StopToRunning = Stop => Running, None;
    /// STOP to STOP_COPY: starts a save session with the final state.
    StopToStopCopy = Stop => StopCopy, OpenSave;
    /// STOP_COPY to STOP: ends the save session.
    StopCopyToStop = StopCopy => Stop, EndSave;
    /// STOP to RESUMING: starts a resume session.
    StopToResuming = Stop => Resuming, OpenResume;
    /// RESUMING to STOP: loads and validates the written state, ends the session.
    ResumingToStop = Resuming => Stop, EndResume;
    /// RUNNING to RUNNING_P2P: stop initiating P2P DMA.
    RunningToRunningP2p = Running => RunningP2p, None;
    /// RUNNING_P2P to RUNNING.
    RunningP2pToRunning = RunningP2p => Running, None;
    /// RUNNING_P2P to STOP.
    RunningP2pToStop = RunningP2p => Stop, None;
    /// STOP to RUNNING_P2P.
    StopToRunningP2p = Stop => RunningP2p, None;
    /// RUNNING to PRE_COPY: starts a save session with pre-copy data.
    RunningToPreCopy = Running => PreCopy, OpenSave;
    /// PRE_COPY to RUNNING: ends the save session.
    PreCopyToRunning = PreCopy => Running, EndSave;
    /// PRE_COPY to STOP_COPY (no P2P): stops the device, the session goes on.
    PreCopyToStopCopy = PreCopy => StopCopy, ContinueSave;
    /// PRE_COPY to PRE_COPY_P2P: the session is unaffected.
    PreCopyToPreCopyP2p = PreCopy => PreCopyP2p, None;
    /// PRE_COPY_P2P to PRE_COPY: the session is unaffected.
    PreCopyP2pToPreCopy = PreCopyP2p => PreCopy, None;
    /// PRE_COPY_P2P to RUNNING_P2P: ends the save session.
    PreCopyP2pToRunningP2p = PreCopyP2p => RunningP2p, EndSave;
    /// PRE_COPY_P2P to STOP_COPY: stops the device, the session goes on.
    PreCopyP2pToStopCopy = PreCopyP2p => StopCopy, ContinueSave;
    /// RUNNING_P2P to PRE_COPY_P2P: starts a save session with pre-copy data.
    RunningP2pToPreCopyP2p = RunningP2p => PreCopyP2p, OpenSave;
}

impl fmt::Display for StateArc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.from(), self.to())
    }
}

/// The arcs a vendor's step function handles: one of the four typed sets
/// (each exactly the arcs of one flag set) or [`StateArc`] itself (every arc,
/// for a device whose flag set is chosen at run time).
pub trait ArcSet: Copy + Into<StateArc> {
    /// Whether the set has every arc a device with `flags` needs.
    fn covers(flags: FlagSet) -> bool;
    /// The typed arc for `arc`, if the set has it.
    fn from_state_arc(arc: StateArc) -> Option<Self>;
}

impl ArcSet for StateArc {
    fn covers(_flags: FlagSet) -> bool {
        true
    }
    fn from_state_arc(arc: StateArc) -> Option<Self> {
        Some(arc)
    }
}

/// The arc set of a device that does not migrate: it has no arcs, so its
/// step function is `match arc {}` and no flag set can be registered with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoArcs {}

impl From<NoArcs> for StateArc {
    fn from(a: NoArcs) -> StateArc {
        match a {}
    }
}

impl ArcSet for NoArcs {
    fn covers(_flags: FlagSet) -> bool {
        false
    }
    fn from_state_arc(_arc: StateArc) -> Option<Self> {
        None
    }
}

macro_rules! typed_arc_set {
    ($(#[$doc:meta])* $name:ident for $flags:ident: $($arc:ident),* $(,)?) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                #[doc = concat!("See [`StateArc::", stringify!($arc), "`].")]
                $arc,
            )*
        }

        impl $name {
            /// The same arcs as [`StateArc`]s.
            pub const STATE_ARCS: &'static [StateArc] = &[$(StateArc::$arc,)*];
        }

        impl From<$name> for StateArc {
            fn from(a: $name) -> StateArc {
                match a { $($name::$arc => StateArc::$arc,)* }
            }
        }

        impl ArcSet for $name {
            fn covers(flags: FlagSet) -> bool {
                flags == FlagSet::$flags
            }
            fn from_state_arc(arc: StateArc) -> Option<Self> {
                match arc {
                    $(StateArc::$arc => Some($name::$arc),)*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}

typed_arc_set! {
    /// The 6 arcs of a `STOP_COPY` device.
    StopCopyArc for StopCopy:
    RunningToStop, StopToRunning, StopToStopCopy, StopCopyToStop, StopToResuming, ResumingToStop,
}

typed_arc_set! {
    /// The 8 arcs of a `STOP_COPY | P2P` device.
    StopCopyP2pArc for StopCopyP2p:
    RunningToRunningP2p, RunningP2pToRunning, RunningP2pToStop, StopToRunningP2p,
    StopToStopCopy, StopCopyToStop, StopToResuming, ResumingToStop,
}

typed_arc_set! {
    /// The 9 arcs of a `STOP_COPY | PRE_COPY` device.
    StopCopyPreCopyArc for StopCopyPreCopy:
    RunningToStop, StopToRunning, StopToStopCopy, StopCopyToStop, StopToResuming, ResumingToStop,
    RunningToPreCopy, PreCopyToRunning, PreCopyToStopCopy,
}

typed_arc_set! {
    /// The 15 arcs of a `STOP_COPY | P2P | PRE_COPY` device.
    StopCopyP2pPreCopyArc for StopCopyP2pPreCopy:
    RunningToRunningP2p, RunningP2pToRunning, RunningP2pToStop, StopToRunningP2p,
    StopToStopCopy, StopCopyToStop, StopToResuming, ResumingToStop,
    RunningToPreCopy, PreCopyToRunning, PreCopyToPreCopyP2p, PreCopyP2pToPreCopy,
    PreCopyP2pToRunningP2p, PreCopyP2pToStopCopy, RunningP2pToPreCopyP2p,
}

/// Checks, when a device is registered, that its arc set `A` handles every
/// arc of `flags`.
pub fn check_arcs<A: ArcSet>(flags: FlagSet) -> Result<(), RegisterError> {
    if !A::covers(flags) {
        return Err(RegisterError::ArcsNotHandled(flags));
    }
    // `covers` is the whole guarantee; this also catches a wrong `covers`.
    for &arc in flags.arcs() {
        if A::from_state_arc(arc).is_none() {
            return Err(RegisterError::ArcsNotHandled(flags));
        }
    }
    Ok(())
}

/// Why a device cannot be registered with a flag set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The vendor's arc set lacks arcs this flag set needs.
    ArcsNotHandled(FlagSet),
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::ArcsNotHandled(fl) => write!(
                f,
                "the device's step function does not handle every arc of {fl} ({:#x})",
                fl.bits()
            ),
        }
    }
}

/// A failed vendor step.
#[derive(Debug, PartialEq, Eq)]
pub struct StepFailure<E> {
    /// The vendor's error (in the kernel: the errno returned to the user).
    pub error: E,
    /// The device could neither complete the arc nor stay in the state it
    /// left: it goes to ERROR, which only a reset leaves.
    pub device_lost: bool,
}

impl<E> StepFailure<E> {
    /// The arc failed and the device is still in the state it was in.
    pub fn recoverable(error: E) -> Self {
        Self {
            error,
            device_lost: false,
        }
    }

    /// The arc failed and the device state is lost (it goes to ERROR).
    pub fn lost(error: E) -> Self {
        Self {
            error,
            device_lost: true,
        }
    }
}

/// Performs single arcs; [`transition`] calls it once per arc.
pub trait Stepper {
    /// The arcs the stepper handles.
    type Arcs: ArcSet;
    /// The error of a failed step.
    type Error;
    /// Performs `arc`. On success the device is in `arc.to()`.
    fn step(&mut self, arc: Self::Arcs) -> Result<(), StepFailure<Self::Error>>;
}

/// Why [`transition`] stopped short of the target.
#[derive(Debug, PartialEq, Eq)]
pub enum TransitionError<E> {
    /// The device is in ERROR: nothing steps until a reset.
    InError,
    /// The target is ERROR, unsupported by the flag set or unreachable from
    /// the current state (`-EINVAL`); no arc was taken.
    Invalid,
    /// The stepper's arc set does not handle the arc the path needs (a
    /// registration check failure that got through; no arc was taken).
    ArcNotHandled(StateArc),
    /// A step failed; the state is the last one reached, or ERROR.
    Step {
        /// The arc that failed.
        arc: StateArc,
        /// The stepper's error.
        error: E,
    },
}

/// The most arcs any transition takes (PRE_COPY to RESUMING with P2P).
pub const MAX_PATH_ARCS: usize = 4;

/// Walks `*state` to `target` by single arcs for a device with `flags`.
///
/// On success `*state == target` and the result is the session effect of the
/// last arc taken (only a last arc ever opens a session), or
/// [`SessionEffect::None`] when no arc was needed. On failure `*state` is
/// the last state reached, or ERROR when a step reported the device lost.
pub fn transition<S: Stepper>(
    flags: FlagSet,
    state: &mut State,
    target: State,
    stepper: &mut S,
) -> Result<SessionEffect, TransitionError<S::Error>> {
    if *state == State::Error {
        return Err(TransitionError::InError);
    }
    if !flags.supports(target) {
        return Err(TransitionError::Invalid);
    }
    // Plan the whole path first, so an unreachable target takes no arc;
    // then walk the plan.
    let mut path: [Option<S::Arcs>; MAX_PATH_ARCS] = [None; MAX_PATH_ARCS];
    let mut cur = *state;
    let mut arcs = 0;
    while cur != target {
        let next = match next_step(flags, cur, target) {
            Ok(n) => n,
            Err(NextStepError::Invalid) => return Err(TransitionError::Invalid),
            Err(NextStepError::CurrentUnsupported) => return Err(TransitionError::InError),
        };
        let arc = StateArc::between(cur, next).ok_or(TransitionError::Invalid)?;
        let typed = S::Arcs::from_state_arc(arc).ok_or(TransitionError::ArcNotHandled(arc))?;
        *path.get_mut(arcs).ok_or(TransitionError::Invalid)? = Some(typed);
        cur = next;
        arcs += 1;
    }
    let mut effect = SessionEffect::None;
    for typed in path.into_iter().flatten() {
        let arc: StateArc = typed.into();
        if let Err(f) = stepper.step(typed) {
            if f.device_lost {
                *state = State::Error;
            }
            return Err(TransitionError::Step {
                arc,
                error: f.error,
            });
        }
        *state = arc.to();
        effect = arc.session();
    }
    Ok(effect)
}
