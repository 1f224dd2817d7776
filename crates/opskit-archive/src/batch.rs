//! The purge's batch size, adapted to the server like pt-online-schema-change's
//! `--chunk-time`: each delete batch aims at `archive.purge.target_batch_ms`.
//!
//! - a batch faster than half the target doubles the next one (up to `max_batch_size`);
//! - a batch slower than the target halves the next one, or goes straight to what the
//!   measured rate allows for the target when that is smaller (down to `min_batch_size`);
//! - in between the size stays;
//! - a batch that timed out is retried smaller (deleting by id is idempotent): the server did
//!   fewer than `n / limit` documents per second, so the next size is at most what that rate
//!   allows for the target, and at most half. A batch of `min_batch_size` that times out has
//!   nowhere to go: the run fails (resumable).
//!
//! A short batch (the month's last one) never grows the next one — it is fast because it is
//! small — but a short batch that is slow still shrinks it.

use std::time::Duration;

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSizer {
    size: usize,
    min: usize,
    max: usize,
    target: Duration,
}

/// What the controller did after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The size stays.
    Kept,
    /// The size grew to the value.
    Grew(usize),
    /// The size shrank to the value.
    Shrank(usize),
}

impl BatchSizer {
    /// Starts at `start` (clamped to `min..=max`; `min` is at least 1), aiming at `target`.
    pub fn new(start: usize, min: usize, max: usize, target: Duration) -> BatchSizer {
        let min = min.max(1);
        let max = max.max(min);
        BatchSizer {
            size: start.clamp(min, max),
            min,
            max,
            target,
        }
    }

    /// The `[archive.purge]` settings: `batch_size`, `min_batch_size`, `max_batch_size`,
    /// `target_batch_ms`.
    pub fn from_config(c: &opskit_core::config::archive::PurgeConfig) -> BatchSizer {
        BatchSizer::new(
            c.batch_size.get() as usize,
            c.min_batch_size.get() as usize,
            c.max_batch_size.get() as usize,
            Duration::from_millis(c.target_batch_ms.get()),
        )
    }

    /// The size of the next batch.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The smallest size.
    pub fn min(&self) -> usize {
        self.min
    }

    /// The target duration of a batch.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// A batch of `n` documents was deleted in `took`; adapts the next size.
    pub fn finished(&mut self, n: usize, took: Duration) -> Change {
        if n == 0 {
            return Change::Kept;
        }
        let secs = took.as_secs_f64();
        let target = self.target.as_secs_f64();
        let short = n < self.size;
        if secs < target / 2.0 && !short {
            self.set((self.size.saturating_mul(2)).min(self.max))
        } else if secs > target {
            let rate_fit = (n as f64 * target / secs).floor() as usize;
            self.set((self.size / 2).min(rate_fit).max(self.min))
        } else {
            Change::Kept
        }
    }

    /// A batch of `n` documents got no answer within `limit`: the size to retry it with, or
    /// `None` when `n` was already the minimum (the run must fail).
    pub fn timed_out(&mut self, n: usize, limit: Duration) -> Option<usize> {
        if n <= self.min {
            return None;
        }
        let rate_fit =
            (n as f64 * self.target.as_secs_f64() / limit.as_secs_f64().max(1e-3)).floor() as usize;
        self.size = (n / 2).min(rate_fit).max(self.min);
        Some(self.size)
    }

    fn set(&mut self, size: usize) -> Change {
        let old = self.size;
        self.size = size;
        match size.cmp(&old) {
            std::cmp::Ordering::Greater => Change::Grew(size),
            std::cmp::Ordering::Less => Change::Shrank(size),
            std::cmp::Ordering::Equal => Change::Kept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fast_batches_double_up_to_the_maximum() {
        let mut s = BatchSizer::new(250, 10, 1000, ms(500));
        assert_eq!(s.finished(250, ms(100)), Change::Grew(500));
        assert_eq!(s.finished(500, ms(200)), Change::Grew(1000));
        assert_eq!(s.finished(1000, ms(10)), Change::Kept, "at the maximum");
        assert_eq!(s.size(), 1000);
    }

    #[test]
    fn batches_near_the_target_keep_their_size() {
        let mut s = BatchSizer::new(800, 10, 100_000, ms(500));
        assert_eq!(s.finished(800, ms(250)), Change::Kept);
        assert_eq!(s.finished(800, ms(500)), Change::Kept);
        assert_eq!(s.size(), 800);
    }

    #[test]
    fn a_slow_batch_halves_or_drops_to_what_the_rate_allows() {
        let mut s = BatchSizer::new(1000, 10, 100_000, ms(500));
        // 1.5× too slow: halved (the rate would allow 666).
        assert_eq!(s.finished(1000, ms(750)), Change::Shrank(500));
        // 20× too slow: 500 docs in 10 s is 50/s, 25 for half a second.
        assert_eq!(s.finished(500, ms(10_000)), Change::Shrank(25));
        // Never below the minimum.
        assert_eq!(s.finished(25, ms(60_000)), Change::Shrank(10));
        assert_eq!(s.finished(10, ms(60_000)), Change::Kept);
    }

    #[test]
    fn a_short_batch_never_grows_the_next_but_a_slow_one_shrinks_it() {
        let mut s = BatchSizer::new(1000, 10, 100_000, ms(500));
        assert_eq!(s.finished(3, ms(1)), Change::Kept);
        assert_eq!(s.size(), 1000);
        // 400 documents in 4 s: 100/s, 50 for the target.
        assert_eq!(s.finished(400, ms(4000)), Change::Shrank(50));
    }

    #[test]
    fn a_timed_out_batch_is_retried_smaller_until_the_minimum_fails() {
        // SecantusDB: 5,000 ids did not answer within 125 s.
        let mut s = BatchSizer::new(5000, 10, 100_000, ms(500));
        assert_eq!(s.timed_out(5000, Duration::from_secs(125)), Some(20));
        assert_eq!(s.size(), 20);
        // With a long target the retry is half the batch.
        let mut s = BatchSizer::new(5000, 100, 100_000, Duration::from_secs(600));
        assert_eq!(s.timed_out(5000, Duration::from_secs(60)), Some(2500));
        assert_eq!(s.timed_out(2500, Duration::from_secs(60)), Some(1250));
        // Never below the minimum, and the minimum itself cannot be retried.
        assert_eq!(s.timed_out(150, Duration::from_secs(60)), Some(100));
        assert_eq!(s.timed_out(100, Duration::from_secs(60)), None);
        assert_eq!(s.size(), 100);
    }

    #[test]
    fn the_start_is_clamped_into_the_bounds() {
        assert_eq!(BatchSizer::new(5, 10, 100, ms(500)).size(), 10);
        assert_eq!(BatchSizer::new(500, 10, 100, ms(500)).size(), 100);
        assert_eq!(BatchSizer::new(0, 0, 0, ms(500)).size(), 1);
    }

    #[test]
    fn it_converges_on_a_server_of_constant_speed() {
        // 200 documents per second, plus 20 ms per batch: the target of 500 ms fits ~96.
        let speed = |n: usize| ms(20 + (n as u64 * 1000) / 200);
        let mut s = BatchSizer::new(5000, 10, 100_000, ms(500));
        let mut sizes = Vec::new();
        for _ in 0..12 {
            let n = s.size();
            sizes.push(n);
            s.finished(n, speed(n));
        }
        let last = *sizes.last().unwrap();
        assert!(
            (48..=100).contains(&last),
            "settles where a batch takes 250-500 ms: {sizes:?}"
        );
        assert!(sizes[8..].iter().all(|&n| n == last), "stable: {sizes:?}");
    }
}
