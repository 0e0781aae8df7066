//! A server that is not what it claims to be asks pgjit's admin login for its password in clear
//! text or as an MD5 hash: over plaintext (`prefer`, `disable`) or over TLS with a self-signed
//! certificate for another name (`require`). The login proves a password with SCRAM only, so it
//! ends the connection and sends nothing; an RDS IAM token goes only over `verify-full`.

use std::time::Duration;

use pgjit::engine::postgres::{ConnectError, Connector, Credentials, Endpoint, SslMode};
use pgjit_tests::env;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
const CLEARTEXT: u32 = 3;
const MD5: u32 = 5;

/// A TLS acceptor with a self-signed certificate for `evil.example`, made with openssl.
fn evil_tls() -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let dir = std::env::temp_dir().join(format!("pgjit-evil-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=evil.example", "-addext", "subjectAltName=DNS:evil.example"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let certs = vec![rustls_pki_types::CertificateDer::from_pem_file(&cert).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_no_client_auth().with_single_cert(certs, key).unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// Serves one connection: answers the SSLRequest (TLS when it has an acceptor), reads the
/// startup message, asks for the password the way `request` says, and returns every byte the
/// client sent after that (none, if it sent nothing).
async fn fake_server(request: u32, tls: Option<tokio_rustls::TlsAcceptor>) -> (u16, tokio::task::JoinHandle<Option<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let accepted = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
        let Ok(Ok((mut socket, _))) = accepted else { return None };
        let mut first = [0u8; 8];
        socket.read_exact(&mut first).await.ok()?;
        if first != SSL_REQUEST {
            return Some(ask(socket, request, Some(first)).await);
        }
        match tls {
            Some(acceptor) => {
                socket.write_all(b"S").await.ok()?;
                let stream = acceptor.accept(socket).await.ok()?;
                Some(ask(stream, request, None).await)
            }
            None => {
                socket.write_all(b"N").await.ok()?;
                Some(ask(socket, request, None).await)
            }
        }
    });
    (port, task)
}

async fn ask<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: u32, started: Option<[u8; 8]>) -> Vec<u8> {
    let mut length = [0u8; 4];
    let rest = match started {
        Some(first) => {
            length.copy_from_slice(&first[..4]);
            u32::from_be_bytes(length) as usize - 8
        }
        None => {
            stream.read_exact(&mut length).await.unwrap();
            u32::from_be_bytes(length) as usize - 4
        }
    };
    let mut startup = vec![0u8; rest];
    stream.read_exact(&mut startup).await.unwrap();
    let mut message = vec![b'R'];
    let body: Vec<u8> = if request == MD5 { [MD5.to_be_bytes(), *b"salt"].concat() } else { request.to_be_bytes().to_vec() };
    message.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
    message.extend_from_slice(&body);
    stream.write_all(&message).await.unwrap();
    stream.flush().await.unwrap();
    let mut sent = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut sent)).await;
    sent
}

fn endpoint(port: u16, ssl_mode: SslMode) -> Endpoint {
    let mut endpoint = Endpoint::new("localhost", port, ssl_mode);
    endpoint.timeouts.connect = Duration::from_secs(5);
    endpoint
}

#[tokio::test]
async fn a_server_asking_for_a_clear_text_or_md5_password_gets_nothing() {
    let login = env().admin_login();
    let cases = [
        ("prefer, plaintext, clear text", SslMode::Prefer, CLEARTEXT, false),
        ("prefer, plaintext, MD5", SslMode::Prefer, MD5, false),
        ("disable, clear text", SslMode::Disable, CLEARTEXT, false),
        ("require, TLS for another name, clear text", SslMode::Require, CLEARTEXT, true),
        ("require, TLS for another name, MD5", SslMode::Require, MD5, true),
    ];
    for (case, mode, request, tls) in cases {
        let (port, server) = fake_server(request, tls.then(evil_tls)).await;
        let connector = Connector::new(endpoint(port, mode), Credentials::Password(login.clone()));
        let err = connector.connect("postgres").await.expect_err(case);
        let chain = pgjit::engine::postgres::error_chain(&err);
        assert!(chain.contains("proves a password with SCRAM-SHA-256 only and sent nothing"), "{case}: {chain}");
        let sent = server.await.unwrap().expect("the fake server was reached");
        assert!(!sent.contains(&b'p'), "{case}: no password message: {sent:?}");
        let password = login.password.expose().as_bytes();
        assert!(!sent.windows(password.len()).any(|w| w == password), "{case}: the password was sent");
    }
}

#[tokio::test]
async fn an_rds_iam_token_goes_only_over_verify_full() {
    let sdk = pgjit_tests::moto_sdk_config().await;
    let tokens = std::sync::Arc::new(pgjit::aws::admin::RdsIamTokens::new("pgjit_admin", sdk));
    for mode in [SslMode::Disable, SslMode::Allow, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
        let (port, server) = fake_server(CLEARTEXT, Some(evil_tls())).await;
        let connector = Connector::new(endpoint(port, mode), Credentials::RdsIam(tokens.clone()));
        let err = connector.connect("postgres").await.expect_err(mode.as_str());
        assert!(matches!(err, ConnectError::IamTokenNeedsVerifyFull { .. }), "{mode:?}: {err}");
        assert!(server.await.unwrap().is_none(), "{mode:?}: not even a connection");
    }
    // Under verify-full the fake server's certificate (another name, an unknown CA) fails first.
    let (port, server) = fake_server(CLEARTEXT, Some(evil_tls())).await;
    let mut verified = endpoint(port, SslMode::VerifyFull);
    verified.ca_bundle = Some(pgjit::engine::postgres::SYSTEM_ROOTS.into());
    let err = Connector::new(verified, Credentials::RdsIam(tokens)).connect("postgres").await.expect_err("an unknown certificate");
    let chain = pgjit::engine::postgres::error_chain(&err);
    assert!(chain.contains("invalid peer certificate"), "{chain}");
    assert!(server.await.unwrap().is_none_or(|sent| !sent.contains(&b'p')), "no token sent");
}
