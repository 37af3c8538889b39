//! The one rate limiter: a token bucket holding at most a minute's worth of
//! tokens, refilled continuously. Job admission keeps its buckets in
//! memory (`server::queue`); scoring keeps its in the store, so a restart
//! does not refill them (`scoring`). Both do the same arithmetic here.

/// One bucket: its tokens at `at_ms` (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at_ms: i64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Bucket {
    /// A bucket seen for the first time: full.
    pub fn full(per_minute: u32, now_ms: i64) -> Bucket {
        Bucket {
            tokens: f64::from(per_minute),
            at_ms: now_ms,
        }
    }

    /// The bucket at `now_ms`: refilled at `per_minute` tokens a minute,
    /// never past a minute's worth. A clock that went back refills nothing.
    pub fn at(self, per_minute: u32, now_ms: i64) -> Bucket {
        let capacity = f64::from(per_minute);
        let minutes = (now_ms - self.at_ms).max(0) as f64 / 60_000.0;
        Bucket {
            tokens: (self.tokens + minutes * capacity).min(capacity),
            at_ms: now_ms.max(self.at_ms),
        }
    }

    /// Take up to `wanted` whole tokens; returns how many were taken.
    pub fn take(&mut self, wanted: u64) -> u64 {
        let granted = (self.tokens.floor().max(0.0) as u64).min(wanted);
        self.tokens -= granted as f64;
        granted
    }

    /// Whole seconds until the next token, at `per_minute`.
    pub fn seconds_to_next(&self, per_minute: u32) -> u64 {
        let per_second = f64::from(per_minute.max(1)) / 60.0;
        ((1.0 - self.tokens).max(0.0) / per_second).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_of_burst_then_the_rate() {
        let mut bucket = Bucket::full(6, 0);
        assert_eq!(bucket.take(10), 6);
        assert_eq!(bucket.take(1), 0);
        assert_eq!(bucket.seconds_to_next(6), 10);
        // Ten seconds give one token back at six a minute.
        let mut later = bucket.at(6, 10_000);
        assert_eq!(later.take(2), 1);
        // Never more than a minute's worth, however long the wait.
        assert_eq!(later.at(6, 10_000_000).tokens, 6.0);
        // A clock that went back refills nothing and keeps the later time.
        let back = later.at(6, 5_000);
        assert_eq!((back.tokens, back.at_ms), (later.tokens, 10_000));
    }
}
