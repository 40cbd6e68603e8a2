//! Bandwidth limits (`--bwlimit`): a token bucket as a value, and the thin pacing layer that
//! makes a transport half wait for it.
//!
//! This module owns how fast a session's frames may enter (or leave) a transport; it never
//! touches the transport's internals. [`TokenBucket`] is sans-IO (`now` is passed in);
//! [`Pacer`] shares one bucket between threads and sessions and reads the clock;
//! [`PacedSender`] and [`PacedReceiver`] wrap any backend's halves, so every transport (in-process,
//! TCP with buffers or `sendfile`, RDMA) is paced the same way, before the frame is handed over.
//!
//! Back of the envelope: at 200 MB/s a 4 MiB chunk is 21 ms of budget; the bucket holds at most
//! [`BURST_SECS_DIVISOR`]⁻¹ s of the rate (50 ms: 10 MB at 200 MB/s), so an idle sender that
//! resumes gets ahead by at most 0.5 % of a 10 s window. A frame larger than the burst is not
//! refused: its bytes are reserved (the bucket goes into debt) and the sender waits until the
//! debt is paid, so the long-run rate is exact whatever the frame size. A waiting thread holds
//! only its own frame; the wait ends early on cancel (never a poll). Since a frame moves in one
//! piece once its wait is over, a rate low enough that one frame takes longer than
//! [`FRAME_SECS_MAX`] would leave the link silent for that long between frames, near the
//! stall and idle timeouts: [`check_rate`] refuses it and names the chunk size that would fit.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::BufferPool;
use crate::cancel::Cancel;
use crate::frame::FRAME_HEADER_BYTES;
use crate::transport::{
    Frame, FrameReceiver, FrameSender, PayloadPref, TransportError, TransportStats,
};

/// The bucket holds at most 1/20 s of the rate (50 ms).
pub const BURST_SECS_DIVISOR: u64 = 20;
/// A session's largest frame (its chunk size) must take at most this long at its limit.
pub const FRAME_SECS_MAX: u64 = 5;
/// Token units per byte: tokens are counted in nanobytes so that a refill of `elapsed_ns × rate`
/// is exact in integers.
const NANO: i128 = 1_000_000_000;

/// A rate too low for the session's chunk size (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("a bandwidth limit of 0 bytes/s would never move a byte")]
    Zero,
    #[error(
        "a bandwidth limit of {rate_bytes_per_s} bytes/s sends one {chunk_bytes}-byte chunk in more than {FRAME_SECS_MAX} s (the link would sit silent between chunks); use a chunk size of at most {fits_bytes} bytes or a higher limit"
    )]
    TooLowForChunk { rate_bytes_per_s: u64, chunk_bytes: u32, fits_bytes: u64 },
}

/// Checks that one chunk of `chunk_bytes` takes at most [`FRAME_SECS_MAX`] at `rate_bytes_per_s`.
pub fn check_rate(rate_bytes_per_s: u64, chunk_bytes: u32) -> Result<(), RateError> {
    if rate_bytes_per_s == 0 {
        return Err(RateError::Zero);
    }
    let fits_bytes = rate_bytes_per_s.saturating_mul(FRAME_SECS_MAX);
    if u64::from(chunk_bytes) > fits_bytes {
        // The largest page multiple that fits (chunk sizes are multiples of 4096).
        let fits_bytes = fits_bytes / 4096 * 4096;
        return Err(RateError::TooLowForChunk { rate_bytes_per_s, chunk_bytes, fits_bytes });
    }
    Ok(())
}

/// A token bucket that reserves: [`TokenBucket::reserve`] always takes the bytes and returns how
/// long the caller must wait before sending them. Tokens refill at the rate up to the burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    /// Nanobytes; negative while reservations wait.
    tokens: i128,
    capacity: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (one burst may leave at once). `rate_bytes_per_s` must be above 0.
    pub fn new(rate_bytes_per_s: u64, now: Instant) -> Self {
        let rate_bytes_per_s = rate_bytes_per_s.max(1);
        let burst_bytes = (rate_bytes_per_s / BURST_SECS_DIVISOR).max(1);
        let capacity = i128::from(burst_bytes) * NANO;
        TokenBucket { rate_bytes_per_s, tokens: capacity, capacity, last: now }
    }

    pub fn rate_bytes_per_s(&self) -> u64 {
        self.rate_bytes_per_s
    }

    /// Bytes that could leave now without waiting (0 while in debt).
    pub fn available_bytes(&self) -> u64 {
        u64::try_from(self.tokens.max(0) / NANO).unwrap_or(u64::MAX)
    }

    fn refill(&mut self, now: Instant) {
        // A clock read before `last` (another thread's) refills nothing and keeps `last`.
        let elapsed_ns = now.saturating_duration_since(self.last).as_nanos();
        if now > self.last {
            self.last = now;
        }
        let added = elapsed_ns.saturating_mul(u128::from(self.rate_bytes_per_s));
        let added = i128::try_from(added).unwrap_or(i128::MAX);
        self.tokens = self.tokens.saturating_add(added).min(self.capacity);
    }

    /// Takes `bytes` and returns how long to wait before they may leave (zero when the bucket
    /// held them). Reservations queue: each waits until the debt before it and its own are
    /// paid, so concurrent callers together keep the rate.
    pub fn reserve(&mut self, bytes: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens = self.tokens.saturating_sub(i128::from(bytes) * NANO);
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        let deficit = self.tokens.unsigned_abs();
        let wait_ns = deficit.div_ceil(u128::from(self.rate_bytes_per_s));
        let secs = u64::try_from(wait_ns / 1_000_000_000).unwrap_or(u64::MAX);
        // The remainder is below 10^9: it fits.
        Duration::new(secs, (wait_ns % 1_000_000_000) as u32)
    }
}

/// One token bucket shared by every thread that clones it: a session's readers, or every
/// session of a daemon.
#[derive(Clone)]
pub struct Pacer {
    bucket: Arc<Mutex<TokenBucket>>,
    rate_bytes_per_s: u64,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").field("rate_bytes_per_s", &self.rate_bytes_per_s).finish()
    }
}

impl Pacer {
    pub fn new(rate_bytes_per_s: u64) -> Self {
        let bucket = TokenBucket::new(rate_bytes_per_s, Instant::now());
        let rate_bytes_per_s = bucket.rate_bytes_per_s();
        Pacer { bucket: Arc::new(Mutex::new(bucket)), rate_bytes_per_s }
    }

    pub fn rate_bytes_per_s(&self) -> u64 {
        self.rate_bytes_per_s
    }

    /// Reserves `bytes` now; the wait before they may leave.
    fn reserve(&self, bytes: u64) -> Duration {
        // A reservation is an arithmetic update: poisoning cannot leave the bucket torn.
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        b.reserve(bytes, Instant::now())
    }
}

/// Reserves `bytes` in every pacer and waits for the longest of their waits, or until one of
/// `cancels` fires (then `Cancelled`).
pub fn pace(pacers: &[Pacer], bytes: u64, cancels: [&Cancel; 2]) -> Result<(), TransportError> {
    let wait = pacers.iter().map(|p| p.reserve(bytes)).max().unwrap_or(Duration::ZERO);
    if cancels.iter().any(|c| c.is_fired()) {
        return Err(TransportError::Cancelled);
    }
    if wait.is_zero() {
        return Ok(());
    }
    crossbeam_channel::select! {
        recv(cancels[0].wake()) -> _ => Err(TransportError::Cancelled),
        recv(cancels[1].wake()) -> _ => Err(TransportError::Cancelled),
        default(wait) => Ok(()),
    }
}

/// Bytes a frame occupies on the wire (header and payload): what a limit counts.
fn frame_wire_bytes(frame: &Frame) -> u64 {
    FRAME_HEADER_BYTES as u64 + frame.payload.len_bytes()
}

/// A sender whose frames wait for every pacer before they enter the transport. One per session,
/// shared by all its reader threads (so all its streams or queue pairs share the limit).
pub struct PacedSender<'a> {
    inner: &'a dyn FrameSender,
    pacers: Vec<Pacer>,
    /// The session's cancel (SIGINT, the peer's end) and this wrapper's own (`abort`).
    session: Cancel,
    aborted: Cancel,
}

impl<'a> PacedSender<'a> {
    pub fn new(inner: &'a dyn FrameSender, pacers: Vec<Pacer>, session: Cancel) -> Self {
        PacedSender { inner, pacers, session, aborted: Cancel::new() }
    }
}

impl FrameSender for PacedSender<'_> {
    fn payload_pref(&self) -> PayloadPref {
        self.inner.payload_pref()
    }
    fn pool(&self) -> &BufferPool {
        self.inner.pool()
    }
    fn frame_bytes_max(&self) -> u32 {
        self.inner.frame_bytes_max()
    }
    fn needs_checksums(&self) -> bool {
        self.inner.needs_checksums()
    }
    fn send(&self, frame: Frame) -> Result<(), TransportError> {
        if !self.pacers.is_empty() {
            pace(&self.pacers, frame_wire_bytes(&frame), [&self.session, &self.aborted])?;
        }
        self.inner.send(frame)
    }
    fn finish(&self) -> Result<(), TransportError> {
        self.inner.finish()
    }
    fn abort(&self) {
        self.aborted.fire();
        self.inner.abort();
    }
    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}

/// A receiver that hands each frame over only once every pacer allows its bytes: the frames
/// behind it wait in the transport, whose window then closes (TCP stops reading the socket,
/// RDMA returns no credits), so the peer's sender slows to the limit. A daemon uses it to keep
/// its total rate under its cap on the sessions it receives.
pub struct PacedReceiver<'a> {
    inner: &'a dyn FrameReceiver,
    pacers: Vec<Pacer>,
    session: Cancel,
    aborted: Cancel,
}

impl<'a> PacedReceiver<'a> {
    pub fn new(inner: &'a dyn FrameReceiver, pacers: Vec<Pacer>, session: Cancel) -> Self {
        PacedReceiver { inner, pacers, session, aborted: Cancel::new() }
    }
}

impl FrameReceiver for PacedReceiver<'_> {
    fn recv(&self) -> Result<Option<Frame>, TransportError> {
        let frame = self.inner.recv()?;
        if let Some(f) = &frame
            && !self.pacers.is_empty()
        {
            pace(&self.pacers, frame_wire_bytes(f), [&self.session, &self.aborted])?;
        }
        Ok(frame)
    }
    fn abort(&self) {
        self.aborted.fire();
        self.inner.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_full_bucket_lets_one_burst_go_then_paces() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, t0); // 1 MB/s, burst 50 kB
        assert_eq!(b.available_bytes(), 50_000);
        assert_eq!(b.reserve(50_000, t0), Duration::ZERO);
        // 10 kB more: 10 ms of the rate.
        assert_eq!(b.reserve(10_000, t0), 10 * MS);
        // Reservations queue behind each other.
        assert_eq!(b.reserve(10_000, t0), 20 * MS);
        // 20 ms later the debt is paid.
        assert_eq!(b.reserve(0, t0 + 20 * MS), Duration::ZERO);
        assert_eq!(b.available_bytes(), 0);
    }

    #[test]
    fn the_burst_is_bounded_after_a_long_idle() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(200_000_000, t0);
        b.reserve(10_000_000, t0);
        assert_eq!(b.available_bytes(), 0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.reserve(0, later), Duration::ZERO);
        assert_eq!(b.available_bytes(), 200_000_000 / BURST_SECS_DIVISOR);
    }

    /// Sending as fast as the bucket allows for 10 s of virtual time moves the rate × 10 s plus
    /// at most one burst.
    #[test]
    fn ten_seconds_at_the_limit_move_the_rate_within_a_burst() {
        let t0 = Instant::now();
        let rate = 200_000_000u64;
        let chunk = 4u64 << 20;
        let mut b = TokenBucket::new(rate, t0);
        let mut now = t0;
        let mut sent = 0u64;
        let end = t0 + Duration::from_secs(10);
        loop {
            let wait = b.reserve(chunk, now);
            now += wait;
            if now > end {
                break;
            }
            sent += chunk;
        }
        let ideal = rate * 10;
        assert!(sent <= ideal + rate / BURST_SECS_DIVISOR + chunk, "{sent}");
        assert!(sent >= ideal - chunk, "{sent}");
        // Within 5 % with a wide margin: the bound is a burst and a frame.
        assert!((sent as f64 - ideal as f64).abs() / (ideal as f64) < 0.01);
    }

    #[test]
    fn frames_larger_than_the_burst_are_paced_not_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, t0);
        // 4 MB at 1 MB/s with a 50 kB burst: the first waits 3.95 s.
        assert_eq!(b.reserve(4_000_000, t0), Duration::from_millis(3950));
        assert_eq!(b.reserve(4_000_000, t0), Duration::from_millis(7950));
    }

    #[test]
    fn a_clock_read_out_of_order_refills_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, t0 + Duration::from_secs(1));
        let w = b.reserve(100, t0);
        assert_eq!(w, Duration::from_millis(50));
    }

    #[test]
    fn extreme_rates_never_overflow() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(u64::MAX, t0);
        assert_eq!(b.reserve(u64::from(u32::MAX), t0), Duration::ZERO);
        assert_eq!(b.reserve(0, t0 + Duration::from_secs(10 * 365 * 86_400)), Duration::ZERO);
        let mut slow = TokenBucket::new(1, t0);
        assert_eq!(slow.reserve(u64::MAX, t0), Duration::from_secs(u64::MAX - 1));
        // Rate 0 is refused by `check_rate`; the bucket itself treats it as 1 byte/s.
        assert_eq!(TokenBucket::new(0, t0).rate_bytes_per_s(), 1);
    }

    #[test]
    fn rates_too_low_for_the_chunk_size_are_refused() {
        assert_eq!(check_rate(0, 4096), Err(RateError::Zero));
        assert!(check_rate(1_000_000, 4 << 20).is_ok()); // 4.2 s per chunk
        assert_eq!(
            check_rate(500_000, 4 << 20),
            Err(RateError::TooLowForChunk {
                rate_bytes_per_s: 500_000,
                chunk_bytes: 4 << 20,
                fits_bytes: 2_498_560
            })
        );
        assert!(check_rate(500_000, 2_498_560).is_ok());
        assert!(check_rate(u64::MAX, 64 << 20).is_ok());
        assert!(check_rate(820, 4096).is_ok());
        assert!(check_rate(819, 4096).is_err());
    }

    #[test]
    fn a_cancel_ends_a_wait_at_once() {
        let p = Pacer::new(1_000);
        let (session, own) = (Cancel::new(), Cancel::new());
        // Burst of 50 bytes: 1 MB would wait ~1000 s.
        let waiter = {
            let (p, s, o) = (p.clone(), session.clone(), own.clone());
            std::thread::spawn(move || pace(&[p], 1_000_000, [&s, &o]))
        };
        session.fire();
        assert!(matches!(waiter.join().expect("no panic"), Err(TransportError::Cancelled)));
        // A later call fails at once too.
        assert!(matches!(pace(&[p], 1, [&session, &own]), Err(TransportError::Cancelled)));
    }

    #[test]
    fn one_pacer_is_shared_by_its_clones() {
        let p = Pacer::new(1_000_000);
        let q = p.clone();
        assert_eq!(p.reserve(50_000), Duration::ZERO);
        assert!(q.reserve(50_000) > Duration::from_millis(40));
    }
}
