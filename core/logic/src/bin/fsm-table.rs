// SPDX-License-Identifier: GPL-2.0

//! Prints rmdev's next-step table in the line format of
//! `core/logic/tests/data/fsm-oracle.txt` (Linux 6.12's
//! `vfio_mig_get_next_state()`), so the two can be diffed:
//! `make fsm-table | diff - <(grep '^0x' core/logic/tests/data/fsm-oracle.txt)`.

use rmdev_logic::fsm::{next_step, FlagSet, State};
use std::io::Write;

fn main() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for flags in FlagSet::ALL {
        for cur in State::ALL {
            for target in State::ALL {
                let result =
                    next_step(flags, cur, target).map_or_else(|e| e.oracle_word(), State::name);
                writeln!(out, "{:#x} {} {} {}", flags.bits(), cur, target, result)?;
            }
        }
    }
    Ok(())
}
