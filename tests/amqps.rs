//! `amqps://` with certificate verification on (issue: security). The broker here has
//! no TLS listener (configuring one would change it for everyone), so the test puts a
//! local TLS-terminating proxy in front of it, with a certificate from a CA made for the
//! test, and runs the binary as operators do: it must work when the CA is trusted
//! (`SSL_CERT_FILE`, honoured by the system trust store), and refuse to start when the
//! certificate is not trusted or names another host.

mod common;

use common::*;
use futures_util::StreamExt;
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::{OktaSim, SimConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A CA (its PEM in a file, for `SSL_CERT_FILE`) and a server certificate it signed for
/// `localhost` only.
struct TestPki {
    ca_file: PathBuf,
    acceptor: TlsAcceptor,
}

impl TestPki {
    fn new() -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "iam-provisioner test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("server params")
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let ca_file = std::env::temp_dir().join(format!("iam-test-ca-{:x}.pem", fastrand::u64(..)));
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("TLS server config");
        TestPki {
            ca_file,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// Terminates TLS and forwards to the broker; counts completed handshakes.
async fn tls_proxy(acceptor: TlsAcceptor) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let Ok(mut broker) = TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    (address, handshakes)
}

fn service(names: &TopologyNames, sim: &OktaSim, amqp_url: &str) -> Command {
    let mut command = common::process::run_command(names, amqp_url);
    command
        .env("OKTA_ORG_URL", sim.base_url())
        .env("OKTA_API_TOKEN", sim.api_token())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[tokio::test]
async fn amqps_works_with_a_trusted_certificate_for_the_host() {
    let names = TopologyNames::prefixed(&unique_prefix("amqps-ok"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let pki = TestPki::new();
    let (proxy, handshakes) = tls_proxy(pki.acceptor.clone()).await;
    let sim = OktaSim::start(SimConfig::default()).await.expect("sim");
    let (_conn, channel, mut outcomes) = observe(&names).await;
    let url = format!("amqps://guest:guest@localhost:{}/%2f", proxy.port());
    let mut child = service(&names, &sim, &url)
        .env("SSL_CERT_FILE", &pki.ca_file)
        .spawn()
        .expect("service starts");

    let id = event_id("amqps");
    let body = hire(&id, "E-TLS1", "tls1@example.com", &[]).to_string();
    publish_to(
        &channel,
        &names.input_exchange,
        "employee.added",
        body.as_bytes(),
        lapin::BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
        .await
        .expect("the service, connected over TLS, processed the event")
        .expect("stream")
        .expect("delivery");
    let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
    assert_eq!(outcome["source_event_id"], id.as_str());
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert!(
        handshakes.load(Ordering::SeqCst) >= 1,
        "it went through TLS"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the service against the proxy and returns its error line; it must not start.
async fn refused_start(url: String, ca_file: Option<&PathBuf>) -> String {
    let names = TopologyNames::prefixed(&unique_prefix("amqps-no"));
    let sim = OktaSim::start(SimConfig::default()).await.expect("sim");
    let mut command = service(&names, &sim, &url);
    if let Some(ca_file) = ca_file {
        command.env("SSL_CERT_FILE", ca_file);
    }
    let mut child = command.spawn().expect("service starts");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service started against an untrusted broker certificate");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "{stderr}");
    stderr
}

#[tokio::test]
async fn amqps_refuses_a_certificate_from_an_unknown_ca() {
    let pki = TestPki::new();
    let (proxy, handshakes) = tls_proxy(pki.acceptor.clone()).await;
    let stderr = refused_start(
        format!("amqps://guest:guest@localhost:{}/%2f", proxy.port()),
        None,
    )
    .await;
    assert!(stderr.contains("cannot connect to the broker"), "{stderr}");
    assert!(
        stderr.to_ascii_lowercase().contains("certificate"),
        "the reason names the certificate: {stderr}"
    );
    assert!(
        !stderr.contains("guest:guest"),
        "the password is redacted: {stderr}"
    );
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn amqps_refuses_a_certificate_for_another_host() {
    let pki = TestPki::new();
    let (proxy, handshakes) = tls_proxy(pki.acceptor.clone()).await;
    // Trusted CA, but the certificate names `localhost`, not 127.0.0.1.
    let stderr = refused_start(
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", proxy.port()),
        Some(&pki.ca_file),
    )
    .await;
    assert!(stderr.contains("cannot connect to the broker"), "{stderr}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
}

/// Terminates TLS and forwards to `upstream`; counts completed handshakes.
async fn tls_proxy_to(
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    (address, handshakes)
}

/// `AMQP_CA_FILE` (issue 17): the private CA is trusted for the broker, and only for it.
/// The fake Okta, behind TLS with a certificate of the same CA, stays untrusted, which
/// `SSL_CERT_FILE` (the test above) would have changed for both.
#[tokio::test]
async fn amqp_ca_file_trusts_the_broker_ca_for_the_broker_only() {
    let names = TopologyNames::prefixed(&unique_prefix("amqps-ca"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let pki = TestPki::new();
    let (broker_proxy, broker_handshakes) = tls_proxy(pki.acceptor.clone()).await;
    let sim = OktaSim::start(SimConfig::default()).await.expect("sim");
    let sim_address: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the fake's address");
    let (okta_proxy, okta_handshakes) = tls_proxy_to(pki.acceptor.clone(), sim_address).await;
    let (_conn, channel, mut outcomes) = observe(&names).await;
    let url = format!("amqps://guest:guest@localhost:{}/%2f", broker_proxy.port());
    let mut child = common::process::run_command(&names, &url)
        .env(
            "OKTA_ORG_URL",
            format!("https://localhost:{}", okta_proxy.port()),
        )
        .env("OKTA_API_TOKEN", sim.api_token())
        .env("AMQP_CA_FILE", &pki.ca_file)
        .env("MAX_ATTEMPTS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("service starts");

    let id = event_id("amqps-ca");
    let body = hire(&id, "E-TLS2", "tls2@example.com", &[]).to_string();
    publish_to(
        &channel,
        &names.input_exchange,
        "employee.added",
        body.as_bytes(),
        lapin::BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
        .await
        .expect("the service, connected over TLS with AMQP_CA_FILE, reported the event")
        .expect("stream")
        .expect("delivery");
    let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(outcome["source_event_id"], id.as_str());
    assert!(
        broker_handshakes.load(Ordering::SeqCst) >= 1,
        "the broker was reached over TLS"
    );
    assert_eq!(
        outcome["status"], "failed",
        "Okta's certificate is not trusted: {outcome}"
    );
    assert_eq!(outcome["error"]["kind"], "transient", "{outcome}");
    assert_eq!(
        okta_handshakes.load(Ordering::SeqCst),
        0,
        "no TLS session with the Okta host signed by the broker's CA"
    );
    assert!(sim.user("tls2@example.com").is_none());
}
