// SPDX-License-Identifier: GPL-2.0

//! The FSM against Linux 6.12: the oracle table, the flag sets, the arc sets,
//! the session rules and the transition driver.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rmdev_logic::fsm::*;
use std::collections::BTreeSet;

const ORACLE: &str = include_str!("data/fsm-oracle.txt");

fn valid_pairs(flags: FlagSet) -> impl Iterator<Item = (State, State)> {
    State::ALL.into_iter().flat_map(move |c| {
        State::ALL
            .into_iter()
            .filter(move |&t| flags.supports(c) && flags.supports(t))
            .map(move |t| (c, t))
    })
}

/// The path next_step gives from `cur` to `target`, or None when refused.
fn path(flags: FlagSet, cur: State, target: State) -> Option<Vec<State>> {
    let mut p = vec![cur];
    let mut s = cur;
    while s != target {
        s = next_step(flags, s, target).ok()?;
        p.push(s);
        assert!(
            p.len() <= 16,
            "no progress from {cur} to {target} with {flags}"
        );
    }
    Some(p)
}

#[test]
fn next_step_matches_every_oracle_row() {
    let mut rows = 0;
    for line in ORACLE.lines().filter(|l| l.starts_with("0x")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{line}");
        let bits = u32::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap();
        let flags = FlagSet::from_bits(bits).unwrap();
        let cur = State::from_name(f[1]).unwrap();
        let target = State::from_name(f[2]).unwrap();
        let got = next_step(flags, cur, target).map_or_else(|e| e.oracle_word(), State::name);
        assert_eq!(got, f[3], "{line}");
        rows += 1;
    }
    assert_eq!(rows, 256);
}

#[test]
fn only_the_four_defined_flag_sets_are_usable() {
    for bits in 0..64u32 {
        let r = FlagSet::from_bits(bits);
        match bits {
            1 | 3 | 5 | 7 => assert_eq!(r.unwrap().bits(), bits),
            0 | 2 | 4 | 6 => assert_eq!(r, Err(FlagsError::NoStopCopy)),
            _ => assert_eq!(r, Err(FlagsError::UnknownBits(bits & !7))),
        }
    }
    assert_eq!(
        FlagSet::from_bits(1 << 31),
        Err(FlagsError::UnknownBits(1 << 31))
    );
    let msg = FlagSet::from_bits(2).unwrap_err().to_string();
    assert!(msg.contains("STOP_COPY"), "{msg}");
}

#[test]
fn states_round_trip_through_raw_and_name() {
    for s in State::ALL {
        assert_eq!(State::from_raw(s.raw()), Some(s));
        assert_eq!(State::from_name(s.name()), Some(s));
    }
    assert_eq!(State::from_raw(8), None);
    assert_eq!(State::from_raw(u32::MAX), None);
}

#[test]
fn error_is_never_a_target_nor_a_source() {
    for flags in FlagSet::ALL {
        assert!(!flags.supports(State::Error));
        for s in State::ALL {
            assert_eq!(
                next_step(flags, State::Error, s),
                Err(NextStepError::CurrentUnsupported)
            );
            if flags.supports(s) {
                assert_eq!(
                    next_step(flags, s, State::Error),
                    Err(NextStepError::Invalid)
                );
            }
        }
    }
}

#[test]
fn arc_sets_are_exactly_the_arcs_next_step_uses() {
    for flags in FlagSet::ALL {
        let mut used = BTreeSet::new();
        for (c, t) in valid_pairs(flags) {
            if let Some(p) = path(flags, c, t) {
                for w in p.windows(2) {
                    let arc = StateArc::between(w[0], w[1])
                        .unwrap_or_else(|| panic!("{flags}: no StateArc {}->{}", w[0], w[1]));
                    used.insert(format!("{arc}"));
                }
            }
        }
        let declared: BTreeSet<String> = flags.arcs().iter().map(|a| format!("{a}")).collect();
        assert_eq!(used, declared, "{flags}");
        let want = match flags {
            FlagSet::StopCopy => 6,
            FlagSet::StopCopyP2p => 8,
            FlagSet::StopCopyPreCopy => 9,
            FlagSet::StopCopyP2pPreCopy => 15,
        };
        assert_eq!(declared.len(), want, "{flags}");
        assert_eq!(flags.arcs().len(), want, "{flags}: duplicate arcs");
    }
    // Every StateArc is used by some flag set.
    for arc in StateArc::ALL {
        assert!(
            FlagSet::ALL.iter().any(|f| f.arcs().contains(arc)),
            "{arc} unused"
        );
    }
}

#[test]
fn every_valid_pair_is_reached_in_at_most_four_arcs_of_the_set() {
    for flags in FlagSet::ALL {
        for (c, t) in valid_pairs(flags) {
            let blocked = c == State::StopCopy && matches!(t, State::PreCopy | State::PreCopyP2p);
            match path(flags, c, t) {
                None => assert!(blocked, "{flags}: {c}->{t} refused"),
                Some(p) => {
                    assert!(!blocked, "{flags}: {c}->{t} should be refused");
                    assert!(p.len() - 1 <= MAX_PATH_ARCS, "{flags}: {p:?}");
                    for w in p.windows(2) {
                        let arc = StateArc::between(w[0], w[1]).unwrap();
                        assert!(flags.arcs().contains(&arc), "{flags}: {arc} not in set");
                        assert!(flags.supports(w[1]));
                    }
                    // Saving-group states are never interior steps: a path
                    // enters the saving group only at its last step (a path
                    // that starts inside it may stay inside, keeping the session).
                    for (i, w) in p.windows(2).enumerate() {
                        let enters = !w[0].is_saving() && w[1].is_saving();
                        assert!(
                            !enters || i + 2 == p.len(),
                            "{flags}: {p:?} passes through {}",
                            w[1]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn stop_copy_never_moves_to_pre_copy() {
    for flags in FlagSet::ALL {
        for t in [State::PreCopy, State::PreCopyP2p] {
            if flags.supports(t) {
                assert_eq!(
                    next_step(flags, State::StopCopy, t),
                    Err(NextStepError::Invalid)
                );
            }
        }
    }
    for arc in StateArc::ALL {
        assert!(
            !(arc.from() == State::StopCopy
                && matches!(arc.to(), State::PreCopy | State::PreCopyP2p))
        );
    }
}

/// The uAPI rule: a SET returns a new data FD exactly when the target is
/// RESUMING from elsewhere (write side) or in the saving group from outside
/// it (read side); only the last arc can open a session.
#[test]
fn sessions_open_exactly_where_the_uapi_says() {
    for flags in FlagSet::ALL {
        for (c, t) in valid_pairs(flags) {
            let Some(p) = path(flags, c, t) else { continue };
            let effects: Vec<SessionEffect> = p
                .windows(2)
                .map(|w| StateArc::between(w[0], w[1]).unwrap().session())
                .collect();
            let opens = |e: &SessionEffect| {
                matches!(e, SessionEffect::OpenSave | SessionEffect::OpenResume)
            };
            for e in effects.iter().rev().skip(1) {
                assert!(
                    !opens(e),
                    "{flags}: {p:?} opens a session before its last arc"
                );
            }
            let last = effects.last().copied().unwrap_or(SessionEffect::None);
            let want = if c == t {
                SessionEffect::None
            } else if t == State::Resuming {
                SessionEffect::OpenResume
            } else if t.is_saving() && !c.is_saving() {
                SessionEffect::OpenSave
            } else {
                // Not a session-opening SET.
                assert!(!opens(&last), "{flags}: {p:?}");
                continue;
            };
            assert_eq!(last, want, "{flags}: {p:?}");
        }
    }
}

#[test]
fn sessions_end_on_the_arcs_that_leave_them() {
    for arc in StateArc::ALL {
        let (f, t) = (arc.from(), arc.to());
        let e = arc.session();
        let leaves_saving = f.is_saving() && !t.is_saving();
        let leaves_resuming = f == State::Resuming;
        assert_eq!(e == SessionEffect::EndSave, leaves_saving, "{arc}");
        assert_eq!(e == SessionEffect::EndResume, leaves_resuming, "{arc}");
        assert_eq!(
            e == SessionEffect::ContinueSave,
            f.is_saving() && t == State::StopCopy,
            "{arc}"
        );
    }
}

/// A stepper that records arcs and fails on request.
struct Recorder {
    arcs: Vec<StateArc>,
    fail_at: Option<(usize, bool)>,
}

impl Stepper for Recorder {
    type Arcs = StateArc;
    type Error = i32;
    fn step(&mut self, arc: StateArc) -> Result<(), StepFailure<i32>> {
        if let Some((n, lost)) = self.fail_at {
            if self.arcs.len() == n {
                return Err(StepFailure {
                    error: -5,
                    device_lost: lost,
                });
            }
        }
        self.arcs.push(arc);
        Ok(())
    }
}

#[test]
fn transition_walks_the_oracle_path() {
    for flags in FlagSet::ALL {
        for (c, t) in valid_pairs(flags) {
            let mut r = Recorder {
                arcs: vec![],
                fail_at: None,
            };
            let mut s = c;
            let res = transition(flags, &mut s, t, &mut r);
            match path(flags, c, t) {
                None => {
                    assert_eq!(res, Err(TransitionError::Invalid));
                    assert_eq!(s, c);
                    assert!(r.arcs.is_empty());
                }
                Some(p) => {
                    let eff = res.unwrap();
                    assert_eq!(s, t);
                    let walked: Vec<State> = std::iter::once(c)
                        .chain(r.arcs.iter().map(|a| a.to()))
                        .collect();
                    assert_eq!(walked, p);
                    assert_eq!(
                        eff,
                        r.arcs.last().map_or(SessionEffect::None, |a| a.session())
                    );
                }
            }
        }
    }
}

#[test]
fn transition_stops_at_the_last_state_reached_or_error() {
    for flags in FlagSet::ALL {
        for (c, t) in valid_pairs(flags) {
            let Some(p) = path(flags, c, t) else { continue };
            for k in 0..p.len() - 1 {
                for lost in [false, true] {
                    let mut r = Recorder {
                        arcs: vec![],
                        fail_at: Some((k, lost)),
                    };
                    let mut s = c;
                    let res = transition(flags, &mut s, t, &mut r);
                    let arc = StateArc::between(p[k], p[k + 1]).unwrap();
                    assert_eq!(res, Err(TransitionError::Step { arc, error: -5 }));
                    assert_eq!(s, if lost { State::Error } else { p[k] });
                    // In ERROR nothing steps, whatever the target.
                    if lost {
                        for t2 in State::ALL {
                            let mut r2 = Recorder {
                                arcs: vec![],
                                fail_at: None,
                            };
                            assert_eq!(
                                transition(flags, &mut s, t2, &mut r2),
                                Err(TransitionError::InError)
                            );
                            assert!(r2.arcs.is_empty());
                            assert_eq!(s, State::Error);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn transition_refuses_error_and_unsupported_targets_without_stepping() {
    for flags in FlagSet::ALL {
        for t in State::ALL.into_iter().filter(|&t| !flags.supports(t)) {
            let mut r = Recorder {
                arcs: vec![],
                fail_at: None,
            };
            let mut s = State::Running;
            assert_eq!(
                transition(flags, &mut s, t, &mut r),
                Err(TransitionError::Invalid)
            );
            assert_eq!(s, State::Running);
            assert!(r.arcs.is_empty());
        }
    }
}

/// A vendor with the typed 0x1 set: the match is exhaustive, so the compiler
/// proves every arc is handled.
struct ScOnly(Vec<StopCopyArc>);

impl Stepper for ScOnly {
    type Arcs = StopCopyArc;
    type Error = ();
    fn step(&mut self, arc: StopCopyArc) -> Result<(), StepFailure<()>> {
        match arc {
            StopCopyArc::RunningToStop
            | StopCopyArc::StopToRunning
            | StopCopyArc::StopToStopCopy
            | StopCopyArc::StopCopyToStop
            | StopCopyArc::StopToResuming
            | StopCopyArc::ResumingToStop => self.0.push(arc),
        }
        Ok(())
    }
}

#[test]
fn typed_arc_sets_cover_exactly_their_flag_set() {
    fn check<A: ArcSet>(own: FlagSet, arcs: &[StateArc]) {
        assert_eq!(arcs, own.arcs());
        for flags in FlagSet::ALL {
            assert_eq!(
                check_arcs::<A>(flags).is_ok(),
                flags == own,
                "{own} vs {flags}"
            );
        }
        for &a in StateArc::ALL {
            assert_eq!(
                A::from_state_arc(a).map(Into::into),
                arcs.contains(&a).then_some(a)
            );
        }
    }
    check::<StopCopyArc>(FlagSet::StopCopy, StopCopyArc::STATE_ARCS);
    check::<StopCopyP2pArc>(FlagSet::StopCopyP2p, StopCopyP2pArc::STATE_ARCS);
    check::<StopCopyPreCopyArc>(FlagSet::StopCopyPreCopy, StopCopyPreCopyArc::STATE_ARCS);
    check::<StopCopyP2pPreCopyArc>(
        FlagSet::StopCopyP2pPreCopy,
        StopCopyP2pPreCopyArc::STATE_ARCS,
    );
    for flags in FlagSet::ALL {
        assert!(check_arcs::<StateArc>(flags).is_ok());
    }
    for flags in FlagSet::ALL {
        // A device that does not migrate cannot register any flag set.
        assert_eq!(
            check_arcs::<NoArcs>(flags),
            Err(RegisterError::ArcsNotHandled(flags))
        );
    }
    for &a in StateArc::ALL {
        assert_eq!(NoArcs::from_state_arc(a), None);
    }
    let e = check_arcs::<StopCopyArc>(FlagSet::StopCopyP2p).unwrap_err();
    assert!(e.to_string().contains("STOP_COPY|P2P"), "{e}");

    let mut v = ScOnly(vec![]);
    let mut s = State::Running;
    transition(FlagSet::StopCopy, &mut s, State::Resuming, &mut v).unwrap();
    assert_eq!(
        v.0,
        [StopCopyArc::RunningToStop, StopCopyArc::StopToResuming]
    );
    // A stepper used with a flag set its arcs do not cover is refused before any arc.
    let mut s = State::Running;
    let r = transition(FlagSet::StopCopyP2p, &mut s, State::Stop, &mut v);
    assert_eq!(
        r,
        Err(TransitionError::ArcNotHandled(
            StateArc::RunningToRunningP2p
        ))
    );
    assert_eq!(s, State::Running);
}

#[test]
fn between_finds_exactly_the_arc_with_those_ends() {
    for from in State::ALL {
        for to in State::ALL {
            let want = StateArc::ALL
                .iter()
                .copied()
                .find(|a| a.from() == from && a.to() == to);
            assert_eq!(StateArc::between(from, to), want, "{from:?} -> {to:?}");
        }
    }
}
