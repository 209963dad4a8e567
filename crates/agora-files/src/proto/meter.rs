//! How fast one provider delivers, and how much a download may ask it for at once.
//!
//! A provider's connection is one TCP stream: on a lossy or distant path it carries a few
//! hundred KB/s whatever the uplink behind it, and every request sent to it shares that rate.
//! Asking such a provider for as much as a fast one holds pieces hostage for tens of seconds
//! (a swarm on shaped links spent most of its last third waiting on them). So a download
//! measures each provider's rate while it has requests outstanding and keeps about
//! [`HORIZON`] of transfer in flight there, at least one piece: a fast provider gets big
//! requests back to back, a slow one a single piece at a time.
//!
//! The rate is bytes delivered per second *busy* (with at least one request outstanding), so
//! idle time between requests does not lower it; older measurements fade (halved once
//! [`WINDOW`] of busy time has gathered), so a provider whose link gets busier is seen as
//! slower within seconds. Pure: the caller passes `now`.

use std::time::{Duration, Instant};

/// Transfer time kept in flight per provider.
pub const HORIZON: Duration = Duration::from_secs(2);
/// Busy time over which measurements are kept whole before they fade.
pub const WINDOW: Duration = Duration::from_secs(4);
/// Shortest busy time a rate is computed over (a first request on loopback takes a
/// millisecond or two; that is a rate, just a coarse one).
const MIN_BUSY: f64 = 0.01;

/// The delivery rate of one provider and the bytes asked of it that have not arrived yet.
#[derive(Debug, Default)]
pub struct Meter {
    /// Bytes delivered within the measured busy time.
    bytes: f64,
    /// Busy seconds measured so far (faded with the bytes).
    busy: f64,
    /// Start of the busy span not yet added to `busy`, while requests are outstanding.
    since: Option<Instant>,
    /// Requests outstanding.
    active: usize,
    /// Bytes asked for and not yet delivered.
    pub in_flight: u64,
}

impl Meter {
    /// Adds the busy time up to `now` and fades old measurements.
    fn fold(&mut self, now: Instant) {
        if let Some(since) = self.since {
            self.busy += now.saturating_duration_since(since).as_secs_f64();
            self.since = Some(now);
        }
        let window = WINDOW.as_secs_f64();
        if self.busy > window {
            let keep = window / 2.0 / self.busy;
            self.busy *= keep;
            self.bytes *= keep;
        }
    }

    /// A request of `bytes` is sent.
    pub fn start(&mut self, bytes: u64, now: Instant) {
        self.fold(now);
        self.active += 1;
        self.since.get_or_insert(now);
        self.in_flight += bytes;
    }

    /// `bytes` of an outstanding request arrived.
    pub fn delivered(&mut self, bytes: u64, now: Instant) {
        self.fold(now);
        self.bytes += bytes as f64;
        self.in_flight = self.in_flight.saturating_sub(bytes);
    }

    /// A request ended; `undelivered` of its bytes never came (it failed or was cancelled).
    pub fn end(&mut self, undelivered: u64, now: Instant) {
        self.fold(now);
        self.active = self.active.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(undelivered);
        if self.active == 0 {
            self.since = None;
            self.in_flight = 0;
        }
    }

    /// Bytes per second while busy; `None` before anything arrived.
    pub fn rate(&self, now: Instant) -> Option<f64> {
        let span = self
            .since
            .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        (self.bytes > 0.0).then(|| self.bytes / (self.busy + span).max(MIN_BUSY))
    }

    /// Bytes a new request to this provider may ask for now: what keeps about [`HORIZON`] of
    /// transfer in flight, at least `piece` when nothing is outstanding (so every provider
    /// can always be asked for one piece), and 0 when the provider already has enough.
    /// Before any rate is known, `first` bytes may be outstanding.
    pub fn room(&self, piece: u64, first: u64, now: Instant) -> u64 {
        let budget = match self.rate(now) {
            Some(rate) => ((rate * HORIZON.as_secs_f64()) as u64).max(piece),
            None => first.max(piece),
        };
        if self.in_flight == 0 {
            return budget;
        }
        budget.saturating_sub(self.in_flight)
    }

    /// How long a piece of `piece` bytes would take here, after what is in flight.
    pub fn eta(&self, piece: u64, now: Instant) -> Option<Duration> {
        let rate = self.rate(now)?;
        Some(Duration::from_secs_f64(
            ((self.in_flight + piece) as f64 / rate).min(3600.0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    #[test]
    fn a_slow_provider_gets_one_piece_and_a_fast_one_many() {
        let t = Instant::now();
        let mut slow = Meter::default();
        assert_eq!(
            slow.room(256 * KIB, 1024 * KIB, t),
            1024 * KIB,
            "unknown rate: the first allowance"
        );
        slow.start(256 * KIB, t);
        // 100 KB/s.
        slow.delivered(100_000, t + Duration::from_secs(1));
        assert!(
            slow.room(256 * KIB, 1024 * KIB, t + Duration::from_secs(1)) < 256 * KIB,
            "with 162 KB outstanding at 100 KB/s, not another piece"
        );
        slow.end(0, t + Duration::from_secs(2));
        assert_eq!(slow.in_flight, 0);
        assert_eq!(slow.room(256 * KIB, 1024 * KIB, t), 256 * KIB, "one piece");

        let mut fast = Meter::default();
        fast.start(4096 * KIB, t);
        fast.delivered(4096 * KIB, t + Duration::from_millis(10));
        fast.end(0, t + Duration::from_millis(10));
        let room = fast.room(256 * KIB, 1024 * KIB, t + Duration::from_millis(10));
        assert!(room > 100 * 1024 * KIB, "{room}");
    }

    #[test]
    fn idle_time_does_not_lower_the_rate_and_old_rates_fade() {
        let t = Instant::now();
        let mut m = Meter::default();
        m.start(1000, t);
        m.delivered(1000, t + Duration::from_secs(1));
        m.end(0, t + Duration::from_secs(1));
        let idle_later = t + Duration::from_secs(60);
        assert_eq!(m.rate(idle_later), Some(1000.0));
        // Now it delivers 10× slower for a long while: the estimate follows.
        let mut at = idle_later;
        m.start(1_000_000, at);
        for _ in 0..20 {
            at += Duration::from_secs(1);
            m.delivered(100, at);
        }
        let rate = m.rate(at).unwrap();
        assert!(rate < 150.0, "{rate}");
    }

    #[test]
    fn a_failed_request_gives_back_what_it_did_not_deliver() {
        let t = Instant::now();
        let mut m = Meter::default();
        m.start(500, t);
        m.start(300, t);
        m.delivered(100, t + Duration::from_millis(100));
        m.end(400, t + Duration::from_millis(200));
        assert_eq!(m.in_flight, 300);
        assert!(m.eta(100, t + Duration::from_millis(200)).is_some());
        m.end(300, t + Duration::from_millis(300));
        assert_eq!(m.in_flight, 0);
    }
}
