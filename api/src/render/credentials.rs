//! Where a target's credentials are read from: each Secret key as a file
//! `<secrets_dir>/<secret>/<key>`, never its value. One place knows which keys an
//! `AuthSpec` names, so that what is mounted, checked and rendered agrees.

use std::path::Path;

use fanout_config::route::{
    BasicCredentials, ClientCertificateFiles, Credentials, HeaderCredential, OAuth2Credentials,
    TlsFiles,
};

use crate::policy::{AuthSpec, CaBundle, SecretKeyRef};

pub(super) fn credentials(auth: Option<&AuthSpec>, secrets_dir: &Path) -> Credentials {
    let Some(auth) = auth else {
        return Credentials::default();
    };
    let file = |(secret, key): (String, String)| secrets_dir.join(secret).join(key);
    let keys = AuthKeys::of(auth);
    Credentials {
        bearer_token_file: keys.bearer.map(file),
        basic: keys.basic.map(|(user, password)| BasicCredentials {
            username_file: file(user),
            password_file: file(password),
        }),
        oauth2: auth
            .oauth2
            .as_ref()
            .zip(keys.oauth2)
            .map(|(o, (id, secret))| OAuth2Credentials {
                token_url: o.token_url.clone(),
                client_id_file: file(id),
                client_secret_file: file(secret),
                scopes: o.scopes.clone(),
                audience: o.audience.clone(),
                client_authentication: o.client_authentication.unwrap_or_default(),
                ca_bundle_file: keys.oauth2_ca.map(file),
            }),
        header: auth
            .header
            .as_ref()
            .zip(keys.header)
            .map(|(h, value)| HeaderCredential {
                name: h.name.clone(),
                value_file: file(value),
            }),
        tls: auth.tls.as_ref().map(|_| TlsFiles {
            client_certificate: keys.client_certificate.map(|(certificate, key)| {
                ClientCertificateFiles {
                    certificate_file: file(certificate),
                    private_key_file: file(key),
                }
            }),
            ca_bundle_file: keys.ca_bundle.map(file),
        }),
        signing_secret_file: keys.signing.map(file),
    }
}

/// A Secret's name and one of its keys.
type Key = (String, String);

/// Every Secret key an `AuthSpec` refers to, the documented default key names
/// applied: one place, so that what is mounted, checked and rendered agrees.
#[derive(Default)]
struct AuthKeys {
    bearer: Option<Key>,
    /// Username, password.
    basic: Option<(Key, Key)>,
    /// Client id, client secret.
    oauth2: Option<(Key, Key)>,
    oauth2_ca: Option<Key>,
    header: Option<Key>,
    /// Certificate, private key.
    client_certificate: Option<(Key, Key)>,
    ca_bundle: Option<Key>,
    signing: Option<Key>,
}

impl AuthKeys {
    fn of(auth: &AuthSpec) -> AuthKeys {
        let key = |secret: &str, key: Option<&String>, default: &str| {
            (
                secret.to_string(),
                key.map_or_else(|| default.to_string(), String::clone),
            )
        };
        let given = |r: &SecretKeyRef| (r.name.clone(), r.key.clone());
        let ca = |b: &CaBundle| key(&b.secret_ref.name, b.key.as_ref(), "ca.crt");
        let tls = auth.tls.as_ref();
        AuthKeys {
            bearer: auth.bearer.as_ref().map(|b| given(&b.secret_ref)),
            basic: auth.basic.as_ref().map(|b| {
                let name = &b.secret_ref.name;
                (
                    key(name, b.username_key.as_ref(), "username"),
                    key(name, b.password_key.as_ref(), "password"),
                )
            }),
            oauth2: auth.oauth2.as_ref().map(|o| {
                let name = &o.secret_ref.name;
                (
                    key(name, o.client_id_key.as_ref(), "client-id"),
                    key(name, o.client_secret_key.as_ref(), "client-secret"),
                )
            }),
            oauth2_ca: auth
                .oauth2
                .as_ref()
                .and_then(|o| o.ca_bundle.as_ref())
                .map(ca),
            header: auth.header.as_ref().map(|h| given(&h.secret_ref)),
            client_certificate: tls.and_then(|t| t.client_certificate.as_ref()).map(|c| {
                let name = &c.secret_ref.name;
                (
                    key(name, c.certificate_key.as_ref(), "tls.crt"),
                    key(name, c.private_key_key.as_ref(), "tls.key"),
                )
            }),
            ca_bundle: tls.and_then(|t| t.ca_bundle.as_ref()).map(ca),
            signing: auth.signing.as_ref().map(|s| given(&s.secret_ref)),
        }
    }

    fn all(self) -> Vec<Key> {
        let pair = |p: Option<(Key, Key)>| p.into_iter().flat_map(|(a, b)| [a, b]);
        let mut keys = Vec::new();
        keys.extend(self.bearer);
        keys.extend(pair(self.basic));
        keys.extend(pair(self.oauth2));
        keys.extend(self.oauth2_ca);
        keys.extend(self.header);
        keys.extend(pair(self.client_certificate));
        keys.extend(self.ca_bundle);
        keys.extend(self.signing);
        keys
    }
}

/// The Secrets (name, key) an ApiTarget needs, for mounting and for readiness checks.
pub fn secret_keys(auth: Option<&AuthSpec>) -> Vec<(String, String)> {
    auth.map(|a| AuthKeys::of(a).all()).unwrap_or_default()
}
