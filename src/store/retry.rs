//! The one retry policy and the one status→error map of every store request: S3 calls,
//! GCS JSON calls, GCS XML calls and credential requests made through `object_store`
//! (given the same numbers as its `RetryConfig`), and STS and token exchanges. A request
//! is tried again only when the answer says trying again may help (a transport error, a
//! timeout, 408, 429, 5xx, S3's SlowDown and its kin), with exponential backoff and jitter,
//! at most `--max-retries` times and never after [`RetryPolicy::total`].

use std::time::{Duration, Instant};

use object_store::{BackoffConfig, RetryConfig};

use super::{StoreErrorKind, StoreOptions};

/// When and how often a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// No retry starts after this much time since the first attempt.
    pub total: Duration,
    /// First backoff.
    pub initial: Duration,
    /// Largest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 10,
            total: Duration::from_secs(120),
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The policy `opts` asks for (`--max-retries`).
    pub fn of(opts: &StoreOptions) -> RetryPolicy {
        RetryPolicy {
            max_retries: opts.max_retries(),
            ..Default::default()
        }
    }

    /// The wait before retry number `n` (1-based): exponential, capped, with jitter in
    /// [cap/2, cap].
    pub fn backoff(&self, n: usize) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << (n.clamp(1, 16) as u32 - 1).min(15));
        let cap = exp.min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0) as u64;
        let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
        cap.mul_f64(frac)
    }

    /// After `retries` retries of a request first sent at `started`: the wait before the
    /// next one, or `None` when the policy is spent.
    pub fn next_wait(&self, retries: usize, started: Instant) -> Option<Duration> {
        if retries >= self.max_retries || started.elapsed() >= self.total {
            return None;
        }
        Some(self.backoff(retries + 1))
    }

    /// The same policy for `object_store`'s clients.
    pub fn object_store(&self) -> RetryConfig {
        RetryConfig {
            max_retries: self.max_retries,
            retry_timeout: self.total,
            backoff: BackoffConfig {
                init_backoff: self.initial,
                max_backoff: self.max,
                base: 2.0,
            },
        }
    }

    /// Wait before the next retry of a request first sent at `started` (counted in the
    /// mount's metrics); `false` when the policy is spent.
    pub async fn wait(&self, retries: &mut usize, started: Instant, error: &str) -> bool {
        let Some(wait) = self.next_wait(*retries, started) else {
            return false;
        };
        *retries += 1;
        crate::telemetry::add(crate::telemetry::Counter::Retries, 1);
        tracing::debug!(error, retries = *retries, ?wait, "retrying");
        tokio::time::sleep(wait).await;
        true
    }
}

/// The kind of a failed answer (its status and, for S3, its error code), and whether
/// trying again may help. Every backend maps its answers here.
pub fn classify(status: u16, code: Option<&str>) -> (StoreErrorKind, bool) {
    match (status, code) {
        (_, Some("SlowDown" | "InternalError" | "RequestTimeout" | "ServiceUnavailable")) => {
            (StoreErrorKind::Unavailable, true)
        }
        (404, _) => (StoreErrorKind::NotFound, false),
        (401 | 403, _) => (StoreErrorKind::PermissionDenied, false),
        (412, _) => (StoreErrorKind::Precondition, false),
        (409, Some("BucketAlreadyExists" | "BucketAlreadyOwnedByYou")) => {
            (StoreErrorKind::AlreadyExists, false)
        }
        // A concurrent conditional write: trying again gives the real answer.
        (409, Some("ConditionalRequestConflict" | "OperationAborted")) => {
            (StoreErrorKind::Unavailable, true)
        }
        (301 | 307 | 308, _) => (StoreErrorKind::Config, false),
        (408 | 429, _) => (StoreErrorKind::Unavailable, true),
        (s, _) if s >= 500 => (StoreErrorKind::Unavailable, true),
        _ => (StoreErrorKind::Other, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.backoff(1) <= Duration::from_millis(100));
        assert!(p.backoff(1) >= Duration::from_millis(50));
        assert!(p.backoff(4) >= Duration::from_millis(400));
        assert!(p.backoff(30) <= Duration::from_secs(15));
    }

    #[test]
    fn the_policy_is_spent_by_count_or_by_time() {
        let p = RetryPolicy {
            max_retries: 2,
            ..Default::default()
        };
        let now = Instant::now();
        assert!(p.next_wait(0, now).is_some());
        assert!(p.next_wait(1, now).is_some());
        assert!(p.next_wait(2, now).is_none());
        let p = RetryPolicy {
            total: Duration::ZERO,
            ..Default::default()
        };
        assert!(p.next_wait(0, now).is_none());
    }

    #[test]
    fn object_store_gets_the_same_numbers() {
        let p = RetryPolicy {
            max_retries: 3,
            ..Default::default()
        };
        let c = p.object_store();
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.retry_timeout, p.total);
        assert_eq!(c.backoff.init_backoff, p.initial);
        assert_eq!(c.backoff.max_backoff, p.max);
    }

    #[test]
    fn statuses_map_to_kinds_and_only_transient_ones_are_retried() {
        use StoreErrorKind::*;
        let cases: &[(u16, Option<&str>, StoreErrorKind, bool)] = &[
            (404, None, NotFound, false),
            (403, Some("AccessDenied"), PermissionDenied, false),
            (401, None, PermissionDenied, false),
            (412, None, Precondition, false),
            (409, Some("BucketAlreadyOwnedByYou"), AlreadyExists, false),
            (409, Some("OperationAborted"), Unavailable, true),
            (409, None, Other, false),
            (400, None, Other, false),
            (301, None, Config, false),
            (408, None, Unavailable, true),
            (429, None, Unavailable, true),
            (500, None, Unavailable, true),
            (503, Some("SlowDown"), Unavailable, true),
            (200, Some("InternalError"), Unavailable, true),
        ];
        for &(status, code, kind, retry) in cases {
            assert_eq!(classify(status, code), (kind, retry), "{status} {code:?}");
        }
    }
}
