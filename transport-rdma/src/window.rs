//! The sender's window: which receiver slots it may write (credits), how many
//! work requests each QP has outstanding, and which of them are signalled.
//!
//! Pure state machine (no verbs, no clock, no locks): the sender shell asks
//! it for a [`Grant`] before posting, feeds it completions and credits, and
//! blocks when it answers [`Blocked`]. Unit-tested without hardware,
//! including a randomized run against a model receiver.
//!
//! Invariants it keeps:
//! - a slot is written only after the receiver credited it, and at most once
//!   per credit (credits for a slot that is already free are a protocol
//!   error: the peer is confused or hostile);
//! - per QP, at most `sq_cap` work requests are outstanding (posted, not yet
//!   known complete), so the send queue never overflows, and the header ring
//!   entry `seq % sq_cap` is free when `seq` is posted;
//! - a WR is signalled every `signal_interval` WRs, when the send queue
//!   becomes full, and when the caller forces it. The caller forces it when
//!   its buffer pool is empty: leases of unsignalled WRs are released only
//!   by a later signalled completion, so without that rule a pool held
//!   entirely by an unsignalled tail would never come back.

use std::collections::VecDeque;

/// Where a receiver slot is, as far as the sender knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// The receiver holds it (before its first credit).
    Peer,
    /// Credited: the sender may write it once.
    Free,
    /// Written; the receiver owns it until it credits it again.
    Written,
}

#[derive(Debug, Clone, Default)]
struct Lane {
    posted: u64,
    completed: u64,
    unsignaled_run: u32,
    ended: bool,
}

impl Lane {
    fn outstanding(&self) -> u64 {
        self.posted - self.completed
    }
}

/// Permission to post one WRITE_WITH_IMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The QP to post on (index into the session's QPs).
    pub qp: usize,
    /// The remote slot to write (`None` for a data-less notice).
    pub slot: Option<u32>,
    /// The WR's sequence number on that QP (0, 1, 2, ...).
    pub seq: u64,
    /// Post it signalled.
    pub signaled: bool,
}

/// Why no grant can be given now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// No credited slot: wait for a credit.
    NoCredit,
    /// Every usable QP has `sq_cap` WRs outstanding: wait for a completion.
    SendQueueFull,
    /// The QP (or every QP) has sent its End frame.
    Ended,
}

/// Inputs that break the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A credit for a slot number outside the ring.
    #[error("credit for slot {slot}, but the ring has {slots} slots")]
    UnknownSlot {
        /// The slot credited.
        slot: u32,
        /// Ring size.
        slots: u32,
    },
    /// A credit for a slot that was already credited and not written since.
    #[error("slot {slot} credited twice without being written in between")]
    DuplicateCredit {
        /// The slot credited.
        slot: u32,
    },
    /// A completion for a WR that was not outstanding on that QP.
    #[error("completion for WR {seq} on QP {qp}, but WRs {completed}..{posted} are outstanding")]
    Completion {
        /// The QP index.
        qp: usize,
        /// The WR's sequence number.
        seq: u64,
        /// First outstanding.
        completed: u64,
        /// One past the last posted.
        posted: u64,
    },
}

/// The sender's credit and send-queue accounting for one session.
#[derive(Debug, Clone)]
pub struct SenderWindow {
    slots: Vec<SlotState>,
    free: VecDeque<u32>,
    lanes: Vec<Lane>,
    next_lane: usize,
    sq_cap: u64,
    signal_interval: u32,
}

impl SenderWindow {
    /// A window over `slots` receiver slots (none credited yet) and `qps`
    /// QPs with `sq_cap` outstanding WRs each. `signal_interval` ≥ 1.
    pub fn new(qps: usize, slots: u32, sq_cap: u32, signal_interval: u32) -> Self {
        SenderWindow {
            slots: vec![SlotState::Peer; slots as usize],
            free: VecDeque::with_capacity(slots as usize),
            lanes: vec![Lane::default(); qps.max(1)],
            next_lane: 0,
            sq_cap: u64::from(sq_cap.max(1)),
            signal_interval: signal_interval.max(1),
        }
    }

    /// The receiver returned `slot`.
    pub fn on_credit(&mut self, slot: u32) -> Result<(), WindowError> {
        let slots = self.slots.len() as u32;
        let state =
            self.slots.get_mut(slot as usize).ok_or(WindowError::UnknownSlot { slot, slots })?;
        if *state == SlotState::Free {
            return Err(WindowError::DuplicateCredit { slot });
        }
        *state = SlotState::Free;
        self.free.push_back(slot);
        Ok(())
    }

    /// A slot and a QP for one data frame. `force_signal`: the caller's
    /// buffer pool is empty (see the module notes).
    pub fn reserve_frame(&mut self, force_signal: bool) -> Result<Grant, Blocked> {
        if self.free.is_empty() {
            return Err(if self.lanes.iter().all(|l| l.ended) {
                Blocked::Ended
            } else {
                Blocked::NoCredit
            });
        }
        let n = self.lanes.len();
        let mut any_open = false;
        let mut chosen = None;
        for k in 0..n {
            let qp = (self.next_lane + k) % n;
            let lane = &self.lanes[qp];
            if lane.ended {
                continue;
            }
            any_open = true;
            if lane.outstanding() < self.sq_cap {
                chosen = Some(qp);
                break;
            }
        }
        let Some(qp) = chosen else {
            return Err(if any_open { Blocked::SendQueueFull } else { Blocked::Ended });
        };
        self.next_lane = (qp + 1) % n;
        let slot = self.take_slot();
        Ok(self.grant(qp, Some(slot), force_signal))
    }

    /// A slot for the End frame of `qp` (always signalled; the lane takes
    /// no frame after it).
    pub fn reserve_end(&mut self, qp: usize) -> Result<Grant, Blocked> {
        let lane = self.lanes.get(qp).ok_or(Blocked::Ended)?;
        if lane.ended {
            return Err(Blocked::Ended);
        }
        if lane.outstanding() >= self.sq_cap {
            return Err(Blocked::SendQueueFull);
        }
        if self.free.is_empty() {
            return Err(Blocked::NoCredit);
        }
        let slot = self.take_slot();
        let grant = self.grant(qp, Some(slot), true);
        self.lanes[qp].ended = true;
        Ok(grant)
    }

    /// A send-queue entry for a data-less notice on `qp` (abort), signalled.
    /// Needs no credit: the receiver keeps a spare RECV for it.
    pub fn reserve_notice(&mut self, qp: usize) -> Result<Grant, Blocked> {
        let lane = self.lanes.get(qp).ok_or(Blocked::Ended)?;
        if lane.outstanding() >= self.sq_cap {
            return Err(Blocked::SendQueueFull);
        }
        Ok(self.grant(qp, None, true))
    }

    fn take_slot(&mut self) -> u32 {
        // callers checked `free` is not empty
        let slot = self.free.pop_front().unwrap_or_default();
        self.slots[slot as usize] = SlotState::Written;
        slot
    }

    fn grant(&mut self, qp: usize, slot: Option<u32>, force_signal: bool) -> Grant {
        let interval = self.signal_interval;
        let sq_cap = self.sq_cap;
        let lane = &mut self.lanes[qp];
        let seq = lane.posted;
        lane.posted += 1;
        let signaled =
            force_signal || lane.unsignaled_run + 1 >= interval || lane.outstanding() >= sq_cap;
        lane.unsignaled_run = if signaled { 0 } else { lane.unsignaled_run + 1 };
        Grant { qp, slot, seq, signaled }
    }

    /// A signalled WR `seq` on `qp` completed: it and every earlier WR of the
    /// QP are done (RC completes a send queue in order). Returns how many WRs
    /// that retires (the caller releases that many buffers, oldest first).
    pub fn on_completion(&mut self, qp: usize, seq: u64) -> Result<u64, WindowError> {
        let Some(lane) = self.lanes.get_mut(qp) else {
            return Err(WindowError::Completion { qp, seq, completed: 0, posted: 0 });
        };
        if seq < lane.completed || seq >= lane.posted {
            return Err(WindowError::Completion {
                qp,
                seq,
                completed: lane.completed,
                posted: lane.posted,
            });
        }
        let retired = seq + 1 - lane.completed;
        lane.completed = seq + 1;
        Ok(retired)
    }

    /// WRs posted and not yet known complete, over all QPs.
    pub fn outstanding(&self) -> u64 {
        self.lanes.iter().map(Lane::outstanding).sum()
    }

    /// WRs outstanding on one QP.
    pub fn outstanding_on(&self, qp: usize) -> u64 {
        self.lanes.get(qp).map_or(0, Lane::outstanding)
    }

    /// WRs numbered (granted) on `qp` so far; the next grant gets this `seq`.
    pub fn granted_on(&self, qp: usize) -> u64 {
        self.lanes.get(qp).map_or(0, |l| l.posted)
    }

    /// Credited slots not yet written.
    pub fn credits(&self) -> usize {
        self.free.len()
    }

    /// True once every QP has sent its End frame.
    pub fn all_ended(&self) -> bool {
        self.lanes.iter().all(|l| l.ended)
    }

    /// Number of QPs.
    pub fn qps(&self) -> usize {
        self.lanes.len()
    }

    /// True when the last WR posted on `qp` was unsignalled: the WRs since
    /// the last signalled one retire only when a later signalled WR
    /// completes, so an idle sender must post one (a zero-byte probe).
    pub fn has_unsignaled_tail(&self, qp: usize) -> bool {
        self.lanes.get(qp).is_some_and(|l| l.unsignaled_run > 0 && l.outstanding() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credited(qps: usize, slots: u32, sq_cap: u32, interval: u32) -> SenderWindow {
        let mut w = SenderWindow::new(qps, slots, sq_cap, interval);
        for s in 0..slots {
            w.on_credit(s).unwrap();
        }
        w
    }

    #[test]
    fn no_credit_no_grant() {
        let mut w = SenderWindow::new(1, 4, 8, 1);
        assert_eq!(w.reserve_frame(false), Err(Blocked::NoCredit));
        w.on_credit(2).unwrap();
        let g = w.reserve_frame(false).unwrap();
        assert_eq!(g, Grant { qp: 0, slot: Some(2), seq: 0, signaled: true });
        assert_eq!(w.reserve_frame(false), Err(Blocked::NoCredit));
    }

    #[test]
    fn credits_are_validated() {
        let mut w = SenderWindow::new(1, 4, 8, 1);
        assert_eq!(w.on_credit(4), Err(WindowError::UnknownSlot { slot: 4, slots: 4 }));
        w.on_credit(1).unwrap();
        assert_eq!(w.on_credit(1), Err(WindowError::DuplicateCredit { slot: 1 }));
        let g = w.reserve_frame(false).unwrap();
        assert_eq!(g.slot, Some(1));
        w.on_credit(1).unwrap(); // written, so it may come back
    }

    #[test]
    fn frames_are_striped_over_qps() {
        let mut w = credited(3, 16, 8, 1);
        let qps: Vec<usize> = (0..6).map(|_| w.reserve_frame(false).unwrap().qp).collect();
        assert_eq!(qps, [0, 1, 2, 0, 1, 2]);
        let seqs: Vec<u64> = (0..3).map(|_| w.reserve_frame(false).unwrap().seq).collect();
        assert_eq!(seqs, [2, 2, 2]);
    }

    #[test]
    fn signals_every_interval_and_when_forced() {
        let mut w = credited(1, 32, 64, 4);
        let sig: Vec<bool> = (0..8).map(|_| w.reserve_frame(false).unwrap().signaled).collect();
        assert_eq!(sig, [false, false, false, true, false, false, false, true]);
        assert!(w.reserve_frame(true).unwrap().signaled);
        // forcing restarts the run
        let sig: Vec<bool> = (0..4).map(|_| w.reserve_frame(false).unwrap().signaled).collect();
        assert_eq!(sig, [false, false, false, true]);
    }

    #[test]
    fn send_queue_cap_blocks_and_the_last_wr_before_it_is_signalled() {
        let mut w = credited(1, 16, 3, 100);
        let g: Vec<Grant> = (0..3).map(|_| w.reserve_frame(false).unwrap()).collect();
        assert_eq!(g.iter().map(|g| g.signaled).collect::<Vec<_>>(), [false, false, true]);
        assert_eq!(w.reserve_frame(false), Err(Blocked::SendQueueFull));
        assert_eq!(w.on_completion(0, 2), Ok(3));
        assert_eq!(w.outstanding(), 0);
        assert_eq!(w.reserve_frame(false).unwrap().seq, 3);
    }

    #[test]
    fn a_full_lane_is_skipped() {
        let mut w = credited(2, 16, 1, 1);
        assert_eq!(w.reserve_frame(false).unwrap().qp, 0);
        assert_eq!(w.reserve_frame(false).unwrap().qp, 1);
        assert_eq!(w.reserve_frame(false), Err(Blocked::SendQueueFull));
        w.on_completion(1, 0).unwrap();
        assert_eq!(w.reserve_frame(false).unwrap().qp, 1);
    }

    #[test]
    fn completions_retire_in_order_and_are_checked() {
        let mut w = credited(1, 8, 8, 8);
        for _ in 0..5 {
            w.reserve_frame(false).unwrap();
        }
        assert_eq!(w.on_completion(0, 1), Ok(2));
        assert_eq!(w.on_completion(0, 4), Ok(3));
        assert!(matches!(w.on_completion(0, 4), Err(WindowError::Completion { .. })));
        assert!(matches!(w.on_completion(0, 9), Err(WindowError::Completion { .. })));
        assert!(matches!(w.on_completion(3, 0), Err(WindowError::Completion { .. })));
    }

    #[test]
    fn end_frames_close_lanes() {
        let mut w = credited(2, 4, 8, 8);
        let e = w.reserve_end(1).unwrap();
        assert!(e.signaled);
        assert_eq!(w.reserve_end(1), Err(Blocked::Ended));
        assert_eq!(w.reserve_frame(false).unwrap().qp, 0);
        assert_eq!(w.reserve_frame(false).unwrap().qp, 0);
        w.reserve_end(0).unwrap();
        assert!(w.all_ended());
        assert_eq!(w.reserve_frame(false), Err(Blocked::Ended));
        assert_eq!(w.reserve_end(0), Err(Blocked::Ended));
        let mut w = SenderWindow::new(1, 4, 8, 8);
        assert_eq!(w.reserve_end(0), Err(Blocked::NoCredit));
    }

    #[test]
    fn an_unsignalled_tail_is_visible_until_a_signalled_wr_follows() {
        let mut w = credited(2, 8, 8, 4);
        assert!(!w.has_unsignaled_tail(0));
        let g = w.reserve_frame(false).unwrap();
        assert!(!g.signaled);
        assert!(w.has_unsignaled_tail(0));
        assert!(!w.has_unsignaled_tail(1));
        let probe = w.reserve_notice(0).unwrap();
        assert!(probe.signaled);
        assert!(!w.has_unsignaled_tail(0));
        assert_eq!(w.on_completion(0, probe.seq), Ok(2));
        assert!(!w.has_unsignaled_tail(5));
    }

    #[test]
    fn notices_need_no_credit_but_respect_the_send_queue() {
        let mut w = SenderWindow::new(1, 4, 1, 8);
        let n = w.reserve_notice(0).unwrap();
        assert_eq!((n.slot, n.signaled), (None, true));
        assert_eq!(w.reserve_notice(0), Err(Blocked::SendQueueFull));
    }

    /// Random interleavings against a model receiver and a model pool: every
    /// write goes to a slot the receiver credited and still owns nothing
    /// else, queues never overflow, and with the pool rule the sender never
    /// deadlocks.
    #[test]
    fn randomized_run_keeps_invariants_and_never_deadlocks() {
        for seed in 1..=50u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let (qps, slots) = (1 + next(3) as usize, 2 + next(10) as u32);
            let sq_cap = 1 + next(6) as u32;
            let interval = 1 + next(5) as u32;
            let pool_slots = 1 + next(6);
            let mut w = SenderWindow::new(qps, slots, sq_cap, interval);
            // receiver model: slots it holds uncredited (starts with all)
            let mut receiver_held: Vec<u32> = (0..slots).collect();
            let mut receiver_owns = vec![true; slots as usize];
            // per QP: (seq, signaled, slot) of outstanding WRs
            let mut wire: Vec<VecDeque<(u64, bool)>> = vec![VecDeque::new(); qps];
            let mut pool_free = pool_slots;
            let mut frames = 0u64;
            let mut idle_steps = 0;
            while frames < 300 {
                let progressed = match next(3) {
                    0 => {
                        // a reader posts a frame if it has a buffer
                        if pool_free == 0 {
                            false
                        } else {
                            pool_free -= 1;
                            match w.reserve_frame(pool_free == 0) {
                                Ok(g) => {
                                    let slot = g.slot.unwrap();
                                    assert!(!receiver_owns[slot as usize], "slot written twice");
                                    receiver_owns[slot as usize] = true;
                                    receiver_held.push(slot);
                                    wire[g.qp].push_back((g.seq, g.signaled));
                                    assert!(wire[g.qp].len() as u32 <= sq_cap);
                                    frames += 1;
                                    true
                                }
                                Err(_) => {
                                    pool_free += 1;
                                    false
                                }
                            }
                        }
                    }
                    1 => {
                        // the receiver returns a slot
                        if receiver_held.is_empty() {
                            false
                        } else {
                            let i = next(receiver_held.len() as u64) as usize;
                            let slot = receiver_held.swap_remove(i);
                            receiver_owns[slot as usize] = false;
                            w.on_credit(slot).unwrap();
                            true
                        }
                    }
                    _ => {
                        // the NIC completes the oldest signalled WR of a QP
                        let qp = next(qps as u64) as usize;
                        match wire[qp].iter().position(|&(_, s)| s) {
                            Some(pos) => {
                                let seq = wire[qp][pos].0;
                                let retired = w.on_completion(qp, seq).unwrap();
                                assert_eq!(retired, pos as u64 + 1);
                                wire[qp].drain(..=pos);
                                pool_free += retired;
                                true
                            }
                            None => false,
                        }
                    }
                };
                idle_steps = if progressed { 0 } else { idle_steps + 1 };
                assert!(idle_steps < 1000, "seed {seed}: no progress possible (deadlock)");
                assert_eq!(w.outstanding(), wire.iter().map(|q| q.len() as u64).sum::<u64>());
                assert!(pool_free <= pool_slots);
            }
        }
    }
}
