//! Per-route bearer tokens, compared in constant time.

use axum::http::HeaderValue;
use subtle::ConstantTimeEq;

use crate::problem::{Problem, ProblemKind};

/// Why a request is not allowed on a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this route requires an Authorization header with a bearer token")]
    Missing,
    #[error("the Authorization header is malformed: expected `Bearer <token>`")]
    Malformed,
    #[error("the bearer token is not accepted for this route")]
    WrongToken,
    #[error(
        "this route accepts no requests: it has no token files and does not allow unauthenticated requests"
    )]
    NoTokensConfigured,
    #[error(
        "the bearer token is not one this gateway has loaded for the route, and some of the route's tokens are not loaded yet (their Secret is missing or still being copied; the route's status names it): retry later"
    )]
    TokensPending,
}

/// Seconds a producer is asked to wait while a route's tokens are on their way: the
/// operator looks for a missing Secret again within a second or two, and the
/// kubelet's refresh of the mounted copy can take up to its sync period.
const RETRY_AFTER_TOKENS_PENDING: u32 = 5;

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Malformed => {
                Problem::new(ProblemKind::Unauthorized, e.to_string())
            }
            AuthError::WrongToken | AuthError::NoTokensConfigured => {
                Problem::new(ProblemKind::Forbidden, e.to_string())
            }
            AuthError::TokensPending => Problem::new(ProblemKind::RouteNotReady, e.to_string())
                .retry_after(RETRY_AFTER_TOKENS_PENDING),
        }
    }
}

/// The tokens a route accepts. `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens(Vec<Vec<u8>>);

impl Tokens {
    pub fn new(tokens: Vec<Vec<u8>>) -> Self {
        Tokens(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `candidate` is one of the tokens. Every token is compared, each in
    /// constant time, so the answer's timing does not reveal which one matched or
    /// how many leading bytes were right.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut matched = subtle::Choice::from(0);
        for token in &self.0 {
            matched |= token.as_slice().ct_eq(candidate);
        }
        matched.into()
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} redacted)", self.0.len())
    }
}

/// Decides whether a request with this `Authorization` header may use a route.
/// `tokens_pending`: some of the route's tokens are not loaded yet, so a token that
/// none of `tokens` accepts may be one of those; the producer is told to retry
/// (503) rather than that its credential is refused (403), which it could not tell
/// from a wrong token.
pub fn authorize(
    tokens: &Tokens,
    allow_unauthenticated: bool,
    tokens_pending: bool,
    authorization: Option<&HeaderValue>,
) -> Result<(), AuthError> {
    if allow_unauthenticated {
        return Ok(());
    }
    if tokens.is_empty() && !tokens_pending {
        return Err(AuthError::NoTokensConfigured);
    }
    let header = authorization.ok_or(AuthError::Missing)?;
    let token = bearer_token(header.as_bytes()).ok_or(AuthError::Malformed)?;
    if tokens.accepts(token) {
        Ok(())
    } else if tokens_pending {
        Err(AuthError::TokensPending)
    } else {
        Err(AuthError::WrongToken)
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750 token68 syntax).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if header.len() <= SCHEME.len() || !header[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = header[SCHEME.len()..].trim_ascii();
    let is_token68 = !token.is_empty()
        && token.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        });
    is_token68.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(vec![b"alpha".to_vec(), b"beta-2".to_vec()])
    }

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn any_configured_token_is_accepted() {
        assert_eq!(
            authorize(&tokens(), false, false, Some(&header("Bearer alpha"))),
            Ok(())
        );
        assert_eq!(
            authorize(&tokens(), false, false, Some(&header("bearer beta-2"))),
            Ok(())
        );
    }

    #[test]
    fn a_missing_or_malformed_header_is_unauthorized() {
        assert_eq!(
            authorize(&tokens(), false, false, None),
            Err(AuthError::Missing)
        );
        for bad in ["alpha", "Basic YWxwaGE=", "Bearer", "Bearer ", "Bearer a b"] {
            assert_eq!(
                authorize(&tokens(), false, false, Some(&header(bad))),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_wrong_token_is_forbidden() {
        for wrong in ["Bearer alph", "Bearer alphaa", "Bearer ALPHA"] {
            let err = authorize(&tokens(), false, false, Some(&header(wrong))).unwrap_err();
            assert_eq!(err, AuthError::WrongToken);
            assert_eq!(Problem::from(err).kind, ProblemKind::Forbidden);
        }
    }

    #[test]
    fn a_route_without_tokens_refuses_everyone_unless_it_allows_anonymous() {
        let none = Tokens::default();
        assert_eq!(
            authorize(&none, false, false, Some(&header("Bearer alpha"))),
            Err(AuthError::NoTokensConfigured)
        );
        assert_eq!(authorize(&none, true, false, None), Ok(()));
    }

    #[test]
    fn a_token_not_loaded_may_be_a_pending_one_so_retry_later_not_forbidden() {
        let pending = |tokens: &Tokens, h: Option<&str>| {
            authorize(tokens, false, true, h.map(header).as_ref())
        };
        // None of the route's tokens loaded yet, or only some of them.
        for tokens in [Tokens::default(), tokens()] {
            let err = pending(&tokens, Some("Bearer gamma")).unwrap_err();
            assert_eq!(err, AuthError::TokensPending);
            let problem = Problem::from(err);
            assert_eq!(problem.kind, ProblemKind::RouteNotReady);
            assert_eq!(problem.kind.status(), 503);
            assert_eq!(problem.retry_after, Some(RETRY_AFTER_TOKENS_PENDING));
            // Without a credential there is nothing to wait for.
            assert_eq!(pending(&tokens, None), Err(AuthError::Missing));
            assert_eq!(pending(&tokens, Some("alpha")), Err(AuthError::Malformed));
        }
        assert_eq!(pending(&tokens(), Some("Bearer alpha")), Ok(()));
    }

    #[test]
    fn debug_output_hides_the_tokens() {
        let shown = format!("{:?}", tokens());
        assert!(!shown.contains("alpha"), "{shown}");
    }
}
