// SPDX-License-Identifier: GPL-2.0

//! The VF's hardware, which the vendor owns for both shadowed queues
//! ([`tx`](super::tx), [`rx`](super::rx)): the function reset and the
//! handshake with the PF, the VF's other queues kept disabled, the routing
//! of the vendor's vector and bus mastering. The VF is brought up when the
//! first of the two queues starts, and down when neither runs, so bus
//! mastering is off whenever no queue of the vendor's runs.
//!
//! [`Queues`] holds the two queues and the VF under one lock: a queue
//! stopping, a user's `VF_RESET`, a PF reset seen under a queue, a device
//! reset each touch both.

use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::time::Ktime;

use super::mailbox::Mailbox;
use super::rmdev::device::GuestMemory;
use super::rmdev::pci::{sleep_ms, Bar, DmaFunction, Event};
use super::rx::RxQueue;
use super::tx::{Kick, TxQueue};

/// The VF's interrupt registers the vendor programs for its own vector 0
/// (82576 datasheet: EIMS, EIMC, EIAC, IVAR0 bytes 0 and 1 = receive and
/// transmit queue 0's vector with bit 7 valid).
const EIMS: usize = 0x1524;
const EIMC: usize = 0x1528;
const EIAC: usize = 0x152c;
const IVAR0: usize = 0x1700;
const IVAR0_QUEUES0_VECTOR0: u32 = 0x8080;
/// The vendor's vector (bit 0 of EIMS and EIAC).
const VECTOR0: u32 = 1;
/// The queue control registers (RXDCTL0, RXDCTL1, TXDCTL0, TXDCTL1) and
/// their enable bit: all off when the VF comes up (queue 0's reset value
/// is enabled), each shadowed queue enabling its own.
const QUEUE_CONTROLS: [usize; 4] = [0x2828, 0x2928, 0x3828, 0x3928];
/// Those only the user programs (through the allow-list, their enable
/// denied): checked off before bus mastering goes on.
const USER_QUEUE_CONTROLS: [usize; 2] = [0x2928, 0x3928];
pub(crate) const QUEUE_ENABLE: u32 = 1 << 25;
/// The shortest time between two handshakes with the PF a user's
/// `VF_RESET` makes, in ms.
const RESET_INTERVAL_MS: i64 = 1000;
/// How long the VF may take to stop a queue, in ms.
const QUEUE_STOP_MS: u32 = 200;

/// What the queues work with.
pub(crate) struct Ctx<'a> {
    pub(crate) bar: &'a Bar,
    pub(crate) func: &'a Arc<DmaFunction>,
    /// Signalled by the VF's vector 0.
    pub(crate) done: &'a Event,
    pub(crate) guest: &'a GuestMemory,
}

/// The VF's state as the vendor set it up.
#[derive(Default)]
pub(crate) struct VfHw {
    mailbox: Mailbox,
    /// Whether the VF is up: handshake made, vector routed, bus mastering
    /// on.
    up: bool,
    /// The PF's answer (the MAC address, if any) to the handshake made
    /// since the VF was last reset; `None`: the next bring-up resets the
    /// VF and makes one.
    handshake: Option<Option<[u8; 6]>>,
    /// The user's last `VF_RESET` that reached the hardware: when (ms) and
    /// what the PF answered.
    last_user_reset: Option<(i64, Option<[u8; 6]>)>,
    /// The device is stopped (a migration state that does not run): no
    /// doorbell is served, nothing is delivered.
    pub(crate) stopped: bool,
    /// Whether the vendor unmasked its vector ([`VfHw::set_vector`]).
    unmasked: bool,
}

impl VfHw {
    /// Brings the VF up, if it is not: function reset and handshake with
    /// the PF unless one was made since the device's last reset
    /// (`ETIMEDOUT`: the PF did not answer, its interface is down), every
    /// queue disabled, the vendor's vector routed (and masked until a
    /// queue wants it, [`VfHw::set_vector`]), bus mastering on. A queue
    /// enabled and disabled again by its user does not make a handshake
    /// each time.
    pub(crate) fn up(&mut self, cx: &Ctx<'_>) -> Result {
        if self.up {
            return Ok(());
        }
        if self.handshake.is_none() {
            self.handshake = Some(self.mailbox.reset(cx.bar)?);
        }
        let bar = cx.bar;
        for q in QUEUE_CONTROLS {
            let v = bar.read32(q)?;
            bar.write32(q, v & !QUEUE_ENABLE)?;
        }
        for q in USER_QUEUE_CONTROLS {
            if bar.read32(q)? & QUEUE_ENABLE != 0 {
                return Err(EIO);
            }
        }
        // Write-backs of the vendor's rings signal vector 0, auto-cleared
        // (QEMU's igb raises a vector only for a cause newly set), masked
        // until a queue wants it. Written at every bring-up, after the
        // VF's reset, whatever the reset kept.
        bar.write32(IVAR0, IVAR0_QUEUES0_VECTOR0)?;
        bar.write32(EIAC, VECTOR0)?;
        bar.write32(EIMC, VECTOR0)?;
        self.unmasked = false;
        cx.func.set_bus_master(true)?;
        self.up = true;
        Ok(())
    }

    /// Unmasks (`on`, EIMS) or masks (EIMC) the vendor's vector on the VF
    /// that is up (`EIO` for an unmask on a VF that is not: nothing would
    /// signal it). It is unmasked while receive runs (what the VF receives
    /// is delivered from the interrupt) and while a transmit round waits
    /// for the VF; masked otherwise, so that rounds the hardware completes
    /// inside their doorbell (QEMU's igb) raise no interrupt: one a round
    /// cost the rest of the system more than the round's own work.
    pub(crate) fn set_vector(&mut self, cx: &Ctx<'_>, on: bool) -> Result {
        if !self.up {
            return if on { Err(EIO) } else { Ok(()) };
        }
        if self.unmasked == on {
            return Ok(());
        }
        cx.bar.write32(if on { EIMS } else { EIMC }, VECTOR0)?;
        self.unmasked = on;
        Ok(())
    }

    /// Whether the vendor's vector is unmasked.
    pub(crate) fn vector_on(&self) -> bool {
        self.unmasked
    }

    /// Brings the VF down: bus mastering off, the vendor's vector masked
    /// and unrouted (QEMU's igb keeps the PF's side of the routing: IVAR
    /// writes only OR into it). The queues are stopped already.
    fn down(&mut self, cx: &Ctx<'_>) {
        let _ = cx.func.set_bus_master(false);
        let _ = cx.bar.write32(EIMC, VECTOR0);
        let _ = cx.bar.write32(IVAR0, 0);
        self.unmasked = false;
        self.up = false;
    }

    /// Disables the queue whose control register is `ctl` and waits until
    /// the VF says it stopped. If it does not, the VF goes down (bus
    /// mastering off): either way the hardware reaches none of the queue's
    /// memory once this returns, and the caller may free it.
    pub(crate) fn disable_queue(&mut self, cx: &Ctx<'_>, ctl: usize) {
        let _ = cx.bar.write32(ctl, 0);
        for _ in 0..QUEUE_STOP_MS {
            match cx.bar.read32(ctl) {
                Ok(v) if v & QUEUE_ENABLE != 0 => sleep_ms(1),
                Ok(_) => return,
                // The BAR is gone (the VF is being removed; its bus
                // mastering goes off with it, but not before the queue's
                // memory would go).
                Err(_) => break,
            }
        }
        self.down(cx);
    }
}

/// Both shadowed queues and the VF they run on.
pub(crate) struct Queues {
    pub(crate) tx: TxQueue,
    pub(crate) rx: RxQueue,
    pub(crate) vf: VfHw,
}

impl Queues {
    pub(crate) fn new() -> Self {
        Queues {
            tx: TxQueue::new(),
            rx: RxQueue::new(),
            vf: VfHw::default(),
        }
    }

    /// Whether doorbells are served and frames delivered.
    pub(crate) fn running(&self) -> bool {
        !self.vf.stopped
    }

    /// Brings the VF down if neither queue runs on it, and stops a queue
    /// left on a VF that went down (one queue that would not stop takes
    /// the VF down, and the other with it).
    pub(crate) fn settle(&mut self, cx: &Ctx<'_>) {
        if !self.vf.up {
            if self.tx.has_hw() {
                self.tx.stop_hw(cx, &mut self.vf);
            }
            if self.rx.has_hw() {
                self.rx.stop_hw(cx, &mut self.vf);
            }
        } else if !self.tx.has_hw() && !self.rx.has_hw() {
            self.vf.down(cx);
        }
    }

    /// Stops both queues' hardware, whether or not the vendor ran them
    /// (queue 0's reset value is enabled: a queue the vendor does not run
    /// stays disabled), and brings the VF down.
    fn stop_hw(&mut self, cx: &Ctx<'_>) {
        self.tx.stop_hw(cx, &mut self.vf);
        self.rx.stop_hw(cx, &mut self.vf);
        if self.vf.up {
            self.vf.down(cx);
        }
    }

    /// Sets both queues up again if the VF lost a queue's set-up (a PF
    /// reset clears the VF's registers behind the vendor's back, and the
    /// VF needs a new handshake).
    pub(crate) fn check_hw(&mut self, cx: &Ctx<'_>) {
        if self.tx.lost_hw(cx) || self.rx.lost_hw(cx) {
            self.set_up_again(cx);
        }
    }

    /// Both queues stopped and the VF forgotten, receive started again
    /// (with a new handshake: the PF forgot the VF).
    fn set_up_again(&mut self, cx: &Ctx<'_>) {
        self.stop_hw(cx);
        self.vf.handshake = None;
        self.rx.ensure_hw(cx, &mut self.vf);
    }

    /// Serves the transmit doorbell. The VF's set-up is checked
    /// ([`Self::check_hw`]) when the queue starts on it and after a
    /// doorbell no round of which the VF completed; otherwise a round
    /// tells when the VF lost it ([`Kick::Lost`]), which spares the
    /// register reads at every doorbell. Lost: set up again, the frames
    /// the VF had not sent go once more, and a second loss in a row stops
    /// the transmit queue (receive set up once more).
    fn kick_tx(&mut self, cx: &Ctx<'_>) {
        if !self.tx.has_hw() {
            self.check_hw(cx);
        }
        match self.tx.kick(cx, &mut self.vf) {
            Kick::Served { on_hw: true } => {}
            Kick::Served { on_hw: false } => self.check_hw(cx),
            Kick::Lost => {
                self.set_up_again(cx);
                if self.tx.kick(cx, &mut self.vf) == Kick::Lost {
                    self.tx.fail(cx, &mut self.vf, EIO);
                    self.set_up_again(cx);
                }
            }
        }
    }

    /// The user writes a transmit register; a doorbell rung is served.
    pub(crate) fn tx_write(&mut self, cx: &Ctx<'_>, offset: u64, value: u32) {
        if self.tx.write(cx, &mut self.vf, offset, value) {
            self.kick_tx(cx);
        }
        self.settle(cx);
    }

    /// The user writes a receive register; with a doorbell (the tail, the
    /// enable) the queue starts if it is enabled, and what the VF received
    /// is delivered into the descriptors given.
    pub(crate) fn rx_write(&mut self, cx: &Ctx<'_>, offset: u64, value: u32) {
        if self.rx.write(cx, &mut self.vf, offset, value) {
            self.check_hw(cx);
            self.rx.ensure_hw(cx, &mut self.vf);
            self.rx.deliver(cx, &mut self.vf);
        }
        self.settle(cx);
    }

    /// The VF signalled the vendor's vector: delivers what it received.
    pub(crate) fn rx_interrupt(&mut self, cx: &Ctx<'_>) {
        self.rx.deliver(cx, &mut self.vf);
        self.settle(cx);
    }

    /// Stops and forgets both queues and the VF's handshake (a function
    /// reset, or the device opened or closed).
    pub(crate) fn reset(&mut self, cx: &Ctx<'_>) {
        self.stop_hw(cx);
        self.tx.reset();
        self.rx.reset();
        self.vf.handshake = None;
        self.vf.last_user_reset = None;
        self.vf.stopped = false;
    }

    /// Whether the device runs; when it starts running, serves what is
    /// pending; when it stops, delivers what the VF received and stops
    /// receiving (the VF's receive queue off, nothing more written into
    /// the user's memory).
    pub(crate) fn set_running(&mut self, cx: &Ctx<'_>, running: bool) {
        if running {
            self.vf.stopped = false;
            self.check_hw(cx);
            self.kick_tx(cx);
            self.rx.ensure_hw(cx, &mut self.vf);
            self.rx.deliver(cx, &mut self.vf);
        } else {
            self.rx.deliver(cx, &mut self.vf);
            if self.rx.has_hw() {
                self.rx.stop_hw(cx, &mut self.vf);
            }
            self.vf.stopped = true;
        }
        self.settle(cx);
    }

    /// The user asked for a VF reset (its `VF_RESET` message): both queues
    /// stop, the VF is reset and the vendor makes the handshake with the
    /// PF, which tells the VF's MAC address; receive starts again at once
    /// if the user had it enabled, transmit at its next round. At most one
    /// handshake a second: one asked again sooner is answered with the
    /// last one's result, the hardware untouched (a user's storm of resets
    /// does not become one of the PF's).
    pub(crate) fn reset_vf(&mut self, cx: &Ctx<'_>) -> Result<Option<[u8; 6]>> {
        let now = Ktime::ktime_get().to_ms();
        if let Some((at, mac)) = self.vf.last_user_reset {
            if (0..RESET_INTERVAL_MS).contains(&(now - at)) {
                return Ok(mac);
            }
        }
        self.stop_hw(cx);
        self.vf.handshake = None;
        let result = self.vf.up(cx);
        let mac = self.vf.handshake.flatten();
        if result.is_ok() {
            self.vf.last_user_reset = Some((now, mac));
            self.rx.ensure_hw(cx, &mut self.vf);
        }
        self.settle(cx);
        result.map(|()| mac)
    }
}
