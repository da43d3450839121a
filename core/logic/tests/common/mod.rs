// SPDX-License-Identifier: GPL-2.0

//! Helpers shared by the host tests: a seeded random generator (so a failure
//! can be replayed with `RMDEV_SEED`) and a time budget for the fuzz loops.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

/// xorshift64*: small, fast, and good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `RMDEV_SEED` or the clock; prints the seed.
    pub fn from_env(what: &str) -> Self {
        let seed = std::env::var("RMDEV_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{what}: RMDEV_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The fuzz time budget: `RMDEV_FUZZ_SECONDS` (default 3 s per target).
pub fn budget() -> Duration {
    let secs = std::env::var("RMDEV_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

/// Runs `f` until the budget is spent; returns the number of rounds.
pub fn for_budget(mut f: impl FnMut()) -> u64 {
    let end = Instant::now() + budget();
    let mut rounds = 0;
    while Instant::now() < end {
        for _ in 0..64 {
            f();
            rounds += 1;
        }
    }
    rounds
}
