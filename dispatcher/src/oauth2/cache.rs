//! One target's access token, shared by all its requests: kept until shortly before
//! it expires, fetched by one request at a time while the others wait for that
//! fetch's outcome (a token, or its failure) instead of each asking the
//! authorization server themselves. A failure is not kept beyond that: the next
//! attempt (after its retry delay) asks again, so each failed attempt stands for one
//! real answer of the token endpoint.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

/// Longest a token is given up before its expiry.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// A token as the authorization server issued it.
#[derive(Clone, Debug)]
pub struct Token {
    /// The whole `Authorization` value.
    pub authorization: HeaderValue,
    /// `expires_in`; `None` when the server did not say: the token is then kept until
    /// a target refuses it.
    pub lifetime: Option<Duration>,
}

struct Cached {
    authorization: HeaderValue,
    /// From then on a new token is fetched; `None`: only when the target refuses it.
    refresh_at: Option<Instant>,
}

struct State<E> {
    current: Option<Cached>,
    /// Fetches finished so far: a request that waited while another fetched takes
    /// that fetch's outcome.
    fetches: u64,
    /// The last fetch's failure, if it failed.
    failure: Option<E>,
}

pub struct TokenCache<E> {
    state: Mutex<State<E>>,
    /// Held while a fetch is under way.
    fetching: tokio::sync::Mutex<()>,
}

impl<E> Default for TokenCache<E> {
    fn default() -> Self {
        TokenCache {
            state: Mutex::new(State {
                current: None,
                fetches: 0,
                failure: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }
}

impl<E: Clone> TokenCache<E> {
    /// The `Authorization` value to send: the cached token while it is fresh and is
    /// not `rejected` (the one a target just refused), else a new one from `fetch`,
    /// which runs for one caller at a time.
    pub async fn get<F, Fut>(
        &self,
        rejected: Option<&HeaderValue>,
        fetch: F,
    ) -> Result<HeaderValue, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, E>>,
    {
        let seen = {
            let state = self.lock();
            let now = Instant::now();
            if let Some(token) = state.usable(now, rejected) {
                return Ok(token);
            }
            state.fetches
        };
        let _one_at_a_time = self.fetching.lock().await;
        {
            let state = self.lock();
            if state.fetches != seen {
                if let Some(token) = state.usable(Instant::now(), rejected) {
                    return Ok(token);
                }
                if let Some(error) = &state.failure {
                    return Err(error.clone());
                }
            }
        }
        // The token's lifetime runs from when the server issued it: counted from the
        // request, so it is never overestimated.
        let requested = Instant::now();
        let outcome = fetch().await;
        let mut state = self.lock();
        state.fetches += 1;
        match outcome {
            Ok(token) => {
                state.failure = None;
                state.current = Some(Cached {
                    authorization: token.authorization.clone(),
                    refresh_at: token
                        .lifetime
                        .map(|l| requested + l.saturating_sub(margin(l))),
                });
                Ok(token.authorization)
            }
            Err(error) => {
                state.failure = Some(error.clone());
                Err(error)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<E>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<E> State<E> {
    fn usable(&self, now: Instant, rejected: Option<&HeaderValue>) -> Option<HeaderValue> {
        let current = self.current.as_ref()?;
        let fresh = current.refresh_at.is_none_or(|at| now < at);
        let refused = rejected.is_some_and(|r| *r == current.authorization);
        (fresh && !refused).then(|| current.authorization.clone())
    }
}

/// How long before its expiry a token is replaced: a tenth of its lifetime, at most
/// a minute, so that one sent just before is not refused on arrival.
fn margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MAX_MARGIN)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn token(value: &str, lifetime: Option<u64>) -> Token {
        Token {
            authorization: HeaderValue::from_str(&format!("Bearer {value}")).unwrap(),
            lifetime: lifetime.map(Duration::from_secs),
        }
    }

    /// A fetch that counts its calls and issues token-1, token-2, ... valid for
    /// `lifetime` seconds, after `delay`.
    fn issuer(
        calls: &Arc<AtomicUsize>,
        lifetime: Option<u64>,
        delay: Duration,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<Token, String>> + Send>>
    {
        let calls = calls.clone();
        move || {
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                Ok(token(&format!("token-{n}"), lifetime))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reused_until_shortly_before_it_expires() {
        let cache = TokenCache::<String>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let get = || cache.get(None, issuer(&calls, Some(3600), Duration::ZERO));
        assert_eq!(get().await.unwrap(), "Bearer token-1");
        tokio::time::advance(Duration::from_secs(3539)).await;
        assert_eq!(
            get().await.unwrap(),
            "Bearer token-1",
            "59m59s: still fresh"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            get().await.unwrap(),
            "Bearer token-2",
            "a minute before expiry it is replaced"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_lived_token_is_replaced_a_tenth_of_its_lifetime_early() {
        let cache = TokenCache::<String>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let get = || cache.get(None, issuer(&calls, Some(10), Duration::ZERO));
        get().await.unwrap();
        tokio::time::advance(Duration::from_millis(8_900)).await;
        assert_eq!(get().await.unwrap(), "Bearer token-1");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(get().await.unwrap(), "Bearer token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_without_expiry_is_kept_until_refused() {
        let cache = TokenCache::<String>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let first = cache
            .get(None, issuer(&calls, None, Duration::ZERO))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(86_400)).await;
        let get = |rejected| cache.get(rejected, issuer(&calls, None, Duration::ZERO));
        assert_eq!(get(None).await.unwrap(), first);
        assert_eq!(get(Some(&first)).await.unwrap(), "Bearer token-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_fetch() {
        let cache = TokenCache::<String>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let gets = (0..50)
            .map(|_| cache.get(None, issuer(&calls, Some(3600), Duration::from_millis(200))));
        let tokens = futures::future::join_all(gets).await;
        assert!(
            tokens
                .iter()
                .all(|t| t.as_ref().unwrap() == "Bearer token-1")
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch for 50 requests");
    }

    #[tokio::test(start_paused = true)]
    async fn many_refusals_of_one_token_cause_one_new_fetch() {
        let cache = TokenCache::<String>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let refused = cache
            .get(None, issuer(&calls, Some(3600), Duration::ZERO))
            .await
            .unwrap();
        let gets = (0..20).map(|_| {
            cache.get(
                Some(&refused),
                issuer(&calls, Some(3600), Duration::from_millis(100)),
            )
        });
        let tokens = futures::future::join_all(gets).await;
        assert!(
            tokens
                .iter()
                .all(|t| t.as_ref().unwrap() == "Bearer token-2")
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_answers_its_waiters_and_the_next_request_asks_again() {
        let cache = TokenCache::<String>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = || {
            let calls = calls.clone();
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err::<Token, _>("HTTP 503".to_string())
            }
        };
        let outcomes = futures::future::join_all((0..10).map(|_| cache.get(None, failing()))).await;
        assert!(
            outcomes
                .iter()
                .all(|o| o.as_ref().err().map(String::as_str) == Some("HTTP 503"))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the waiters shared it");
        assert!(cache.get(None, failing()).await.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a later request asks again"
        );

        let calls_ok = Arc::new(AtomicUsize::new(0));
        let token = cache
            .get(None, issuer(&calls_ok, Some(60), Duration::ZERO))
            .await;
        assert_eq!(token.unwrap(), "Bearer token-1");
    }
}
