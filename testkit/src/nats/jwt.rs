//! NATS decentralized authentication ("operator mode"), minted at test time as `nsc`
//! would: an operator, a system account, an account with JetStream and a user of it.
//! The server trusts the operator and is handed both accounts' JWTs; clients present
//! the user's JWT and sign the server's nonce with the user's seed (a `.creds` file).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What the server and a client need: all but the user's creds go into the server's
/// configuration.
pub(crate) struct Trust {
    /// Names the system account, which the server must be able to resolve too:
    /// in operator mode JetStream does not start without one ("system account not
    /// setup").
    pub operator_jwt: String,
    /// `(public key, JWT)` of each account, for `resolver_preload`.
    pub accounts: Vec<(String, String)>,
    /// A user of the JetStream account, in the `.creds` format clients read.
    pub user_creds: String,
}

impl Trust {
    pub(crate) fn mint() -> anyhow::Result<Trust> {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();

        // Self-signed: the root of trust the server is configured with.
        let operator_jwt = sign(
            &operator,
            &operator.public_key(),
            "fanout-test-operator",
            json!({ "type": "operator", "version": 2, "system_account": system.public_key() }),
        )?;
        let system_jwt = sign(
            &operator,
            &system.public_key(),
            "SYS",
            account_claims(false),
        )?;
        let account_jwt = sign(
            &operator,
            &account.public_key(),
            "fanout-test",
            account_claims(true),
        )?;
        // A claim left out decodes as 0, which for these limits means "none allowed".
        let user_jwt = sign(
            &account,
            &user.public_key(),
            "fanout-test-user",
            json!({
                "type": "user", "version": 2,
                "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1,
            }),
        )?;
        let seed = user.seed().context("encoding the user's nkey seed")?;
        Ok(Trust {
            operator_jwt,
            accounts: vec![
                (system.public_key(), system_jwt),
                (account.public_key(), account_jwt),
            ],
            user_creds: format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        })
    }
}

/// An account's `nats` claims: no limits on connections or subscriptions (a claim
/// left out decodes as 0, i.e. none allowed), and with `jetstream` unlimited
/// JetStream (without JetStream limits the account has no JetStream at all).
fn account_claims(jetstream: bool) -> Value {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1,
        "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1,
    });
    if jetstream {
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[key] = json!(-1);
        }
    }
    json!({
        "type": "account", "version": 2,
        "limits": limits,
        "default_permissions": { "pub": {}, "sub": {} },
    })
}

/// A JWT for `subject`, signed by `issuer`, as nats-server verifies it: the header,
/// the claims and the ed25519 signature of the first two parts, each base64url
/// without padding, joined by dots.
fn sign(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> anyhow::Result<String> {
    let iat = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({
        "iat": iat,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    // A unique id: like nsc's, a hash of the other claims.
    claims["jti"] = json!(URL_SAFE_NO_PAD.encode(Sha256::digest(claims.to_string())));
    let header = json!({ "typ": "JWT", "alg": "ed25519-nkey" });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer
        .sign(signed.as_bytes())
        .with_context(|| format!("signing the JWT of {name}"))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_carries_its_claims_and_the_issuers_signature() {
        let issuer = KeyPair::new_account();
        let jwt = sign(&issuer, "UABC", "u", json!({ "type": "user" })).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).unwrap();
        let header: Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        assert_eq!(header, json!({ "typ": "JWT", "alg": "ed25519-nkey" }));
        let claims: Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(claims["iss"], json!(issuer.public_key()));
        assert_eq!(claims["sub"], json!("UABC"));
        assert_eq!(claims["nats"]["type"], json!("user"));
        let signed = format!("{}.{}", parts[0], parts[1]);
        KeyPair::from_public_key(&issuer.public_key())
            .unwrap()
            .verify(signed.as_bytes(), &decode(parts[2]))
            .unwrap();
    }
}
