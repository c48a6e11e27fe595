//! The test kit's nats-server secured with TLS, JWT authentication (operator mode) or
//! both: a client configured as the server requires uses JetStream; others are refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::Duration;

use async_nats::jetstream::{self, stream::StorageType};
use async_nats::{ConnectErrorKind, ConnectOptions};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fanout_testkit::nats::NatsServer;
use fanout_testkit::pki::TestCa;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Bounds each client step: a hung connect or request fails the test.
const STEP: Duration = Duration::from_secs(20);

/// Creates stream `name` (file storage, so it outlives a restart), publishes to it and
/// checks the acknowledgement and the stream's count.
async fn publish_through_jetstream(client: async_nats::Client, name: &str) {
    let js = jetstream::new(client);
    let mut stream = tokio::time::timeout(
        STEP,
        js.create_stream(jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec![format!("{name}.>")],
            storage: StorageType::File,
            ..Default::default()
        }),
    )
    .await
    .expect("creating the stream timed out")
    .expect("creating the stream");
    let ack = tokio::time::timeout(STEP, async {
        js.publish(format!("{name}.one"), "hello".into())
            .await?
            .await
    })
    .await
    .expect("publishing timed out")
    .expect("publishing");
    assert_eq!((ack.stream.as_str(), ack.sequence), (name, 1));
    let info = tokio::time::timeout(STEP, stream.info())
        .await
        .expect("stream info timed out")
        .expect("stream info");
    assert_eq!(info.state.messages, 1);
}

async fn connect(
    options: ConnectOptions,
    server: &NatsServer,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    tokio::time::timeout(STEP, options.connect(server.url()))
        .await
        .expect("connecting timed out")
}

/// The error connecting with `options` fails with.
async fn refused(options: ConnectOptions, server: &NatsServer) -> async_nats::ConnectError {
    match connect(options, server).await {
        Ok(_) => panic!("connected to {} without what it requires", server.url()),
        Err(e) => e,
    }
}

/// Whether the client refused the server's certificate as issued by a CA it does not
/// trust (async-nats reports that as an I/O error of the handshake).
fn untrusted_certificate(error: &async_nats::ConnectError) -> bool {
    error.to_string().contains("UnknownIssuer")
}

#[tokio::test]
async fn with_tls_clients_that_trust_the_ca_use_jetstream_and_plain_clients_are_refused() {
    let ca = TestCa::new("nats test ca").unwrap();
    let server = NatsServer::start_secured(LOCALHOST, Some(&ca), false).unwrap();
    assert_eq!(server.creds_file(), None);
    let ca_file = server.ca_file().expect("a CA file with TLS");

    let client = connect(
        ConnectOptions::new()
            .add_root_certificates(ca_file)
            .require_tls(true),
        &server,
    )
    .await
    .unwrap();
    publish_through_jetstream(client, "tls").await;

    // The server demands TLS, so the client upgrades anyway, and without the CA it
    // does not trust the certificate.
    let error = refused(ConnectOptions::new().require_tls(false), &server).await;
    assert!(untrusted_certificate(&error), "{error}");
    // Nor does the server answer a client that goes on in plain text after INFO.
    let mut plain = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    plain.set_read_timeout(Some(STEP)).unwrap();
    let mut reader = BufReader::new(plain.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.contains(r#""tls_required":true"#), "{info}");
    plain.write_all(b"CONNECT {}\r\nPING\r\n").unwrap();
    let mut rest = Vec::new();
    // The server closes the connection (a read error, e.g. a reset, says the same).
    let _ = reader.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("PONG"), "{rest}");
}

#[tokio::test]
async fn with_jwt_users_with_creds_use_jetstream_and_others_are_refused() {
    let mut server = NatsServer::start_secured(LOCALHOST, None, true).unwrap();
    assert_eq!(server.ca_file(), None);
    let creds = server.creds_file().expect("a creds file with JWT");

    let client = connect(
        ConnectOptions::with_credentials_file(&creds).await.unwrap(),
        &server,
    )
    .await
    .unwrap();
    publish_through_jetstream(client, "jwt").await;

    let error = refused(ConnectOptions::new(), &server).await;
    assert_eq!(
        error.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{error}"
    );

    // The server checks the account's signature: a JWT with a claim changed after
    // signing is refused.
    let text = std::fs::read_to_string(&creds).unwrap();
    let jwt = text.lines().nth(1).unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["name"] = "someone else".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let forged_creds = ConnectOptions::with_credentials(&text.replace(jwt, &forged)).unwrap();
    let error = refused(forged_creds, &server).await;
    assert_eq!(
        error.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{error}"
    );

    // Restarted, the server trusts the same operator and has the stream still.
    server.restart().unwrap();
    let client = connect(
        ConnectOptions::with_credentials_file(&creds).await.unwrap(),
        &server,
    )
    .await
    .unwrap();
    let mut stream = jetstream::new(client).get_stream("jwt").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn with_tls_and_jwt_a_client_needs_both_the_ca_and_creds() {
    let ca = TestCa::new("nats test ca").unwrap();
    let server = NatsServer::start_secured(LOCALHOST, Some(&ca), true).unwrap();
    let ca_file = server.ca_file().expect("a CA file with TLS");
    let creds = server.creds_file().expect("a creds file with JWT");

    let client = connect(
        ConnectOptions::with_credentials_file(&creds)
            .await
            .unwrap()
            .add_root_certificates(ca_file.clone())
            .require_tls(true),
        &server,
    )
    .await
    .unwrap();
    publish_through_jetstream(client, "both").await;

    let without_ca = ConnectOptions::with_credentials_file(&creds).await.unwrap();
    let error = refused(without_ca, &server).await;
    assert!(untrusted_certificate(&error), "{error}");
    let without_creds = ConnectOptions::new()
        .add_root_certificates(ca_file)
        .require_tls(true);
    let error = refused(without_creds, &server).await;
    assert_eq!(
        error.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{error}"
    );
}

#[tokio::test]
async fn unsecured_and_token_servers_still_take_their_clients() {
    let server = NatsServer::start_secured(LOCALHOST, None, false).unwrap();
    assert_eq!((server.ca_file(), server.creds_file()), (None, None));
    let client = connect(ConnectOptions::new(), &server).await.unwrap();
    publish_through_jetstream(client, "plain").await;

    let server = NatsServer::start_with_token(LOCALHOST, "s3cret").unwrap();
    let error = refused(ConnectOptions::new(), &server).await;
    assert_eq!(
        error.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{error}"
    );
    let client = connect(ConnectOptions::with_token("s3cret".into()), &server)
        .await
        .unwrap();
    publish_through_jetstream(client, "token").await;
}
