//! Secrets from files (issue 17): `OKTA_API_TOKEN_FILE` and `AMQP_PASSWORD_FILE` work, as
//! operators mount them, and neither secret shows in anything the service writes or
//! publishes. Also: start-up refuses a broker URL that does not parse or that sends
//! plaintext beyond loopback without printing its password, and the Okta client follows
//! no redirect.
//!
//! Own test binary: it adds a broker user (with a password only this test knows) and
//! deletes it when done.

mod common;

use common::process::{run_command, ServiceProcess};
use common::*;
use futures_util::StreamExt;
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::config::secret::Secret;
use iam_provisioner::okta::{OktaClient, OktaClientSettings};
use iam_provisioner::okta_sim::{OktaSim, SimConfig};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A broker user made for this test, deleted on drop.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    fn create(password: &str) -> BrokerUser {
        let name = format!("iam-test-{:016x}", fastrand::u64(..));
        let run = |args: &[&str]| {
            let status = Command::new("rabbitmqctl")
                .args(args)
                .output()
                .expect("rabbitmqctl runs");
            assert!(status.status.success(), "rabbitmqctl {:?}", args.first());
        };
        run(&["add_user", &name, password]);
        let user = BrokerUser { name };
        run(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// A file holding `content` (with the trailing newline editors add), removed on drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(content: &str) -> SecretFile {
        let path = std::env::temp_dir().join(format!("iam-secret-{:016x}", fastrand::u64(..)));
        std::fs::write(&path, format!("{content}\n")).expect("write secret file");
        SecretFile(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn token_and_password_files_work_and_neither_secret_shows_anywhere() {
    let names = TopologyNames::prefixed(&unique_prefix("secret-files"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let sim = OktaSim::start(SimConfig {
        groups: vec!["Sales-App-Access".into()],
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    // Characters a URL cannot carry as they are: the file form must encode them.
    let password = format!("Pw/{:016x}+x@y==", fastrand::u64(..));
    let user = BrokerUser::create(&password);
    let password_file = SecretFile::new(&password);
    let token_file = SecretFile::new(&sim.api_token());
    let (_conn, channel, mut outcomes) = observe(&names).await;

    let url = format!("amqp://{}:placeholder@127.0.0.1:5672/%2f", user.name);
    let mut service = ServiceProcess::spawn_without_okta(
        &names,
        &[
            ("RUST_LOG", "trace"),
            ("AMQP_URL", &url),
            ("AMQP_PASSWORD_FILE", &password_file.path()),
            ("OKTA_ORG_URL", &sim.base_url()),
            ("OKTA_API_TOKEN_FILE", &token_file.path()),
        ],
    );
    service.wait_for_log("consuming").await;

    let mut published = Vec::new();
    let hire_id = event_id("secret-files");
    for (key, body) in [
        (
            "employee.added",
            hire(&hire_id, "E-SF1", "sf1@example.com", &["Sales"]).to_string(),
        ),
        (
            "employee.added",
            format!(
                r#"{{"event_id": "{}", "employee": {{}}}}"#,
                event_id("sf-bad")
            ),
        ),
    ] {
        publish_to(
            &channel,
            &names.input_exchange,
            key,
            body.as_bytes(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    }
    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("an outcome in time")
            .expect("stream open")
            .expect("delivery");
        let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON");
        published.push(String::from_utf8_lossy(&delivery.data).into_owned());
        if outcome["status"] != "retrying" {
            statuses.push(outcome["status"].as_str().unwrap_or_default().to_owned());
        }
    }
    statuses.sort();
    assert_eq!(statuses, ["failed", "succeeded"], "{published:?}");
    assert!(
        sim.user("sf1@example.com").is_some(),
        "the token file was used"
    );
    for message in drain_queue(&channel, &names.dead_letter_queue).await {
        published.push(format!(
            "{:?} {}",
            message.delivery.properties,
            String::from_utf8_lossy(&message.delivery.data)
        ));
    }

    service.terminate();
    assert_eq!(service.wait_exit().await.code(), Some(0));
    let log = service.log_text();
    assert!(log.contains("TRACE"), "trace level was on");
    let encoded: String = url::form_urlencoded::byte_serialize(password.as_bytes()).collect();
    let token = sim.api_token();
    for (what, secret) in [
        ("the broker password", password.as_str()),
        ("the encoded broker password", encoded.as_str()),
        ("the password's random part", &password[3..19]),
        ("the API token", token.as_str()),
        ("part of the API token", &token[2..22]),
    ] {
        assert!(!log.contains(secret), "{what} leaked into the log");
        for text in &published {
            assert!(
                !text.contains(secret),
                "{what} leaked into a message: {text}"
            );
        }
    }
}

/// `run` with `AMQP_URL`, expecting a start-up refusal; returns standard error.
async fn refused_start(amqp_url: &str) -> String {
    let names = TopologyNames::prefixed(&unique_prefix("secret-refused"));
    let mut command = run_command(&names, amqp_url);
    command
        .env("OKTA_ORG_URL", "https://acme.okta.com")
        .env("OKTA_API_TOKEN", "00token");
    let output = tokio::task::spawn_blocking(move || command.output().expect("runs"))
        .await
        .expect("task");
    assert_eq!(output.status.code(), Some(1));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_broker_url_that_does_not_parse_is_refused_without_its_password() {
    let err = refused_start("amqps://svc:s3cr/et+base64==@broker.example:5671/%2f").await;
    assert!(err.starts_with("error: AMQP_URL:"), "{err}");
    assert!(err.contains("AMQP_PASSWORD_FILE"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in ["s3cr", "et+base64"] {
        assert!(!err.contains(part), "{err}");
    }
}

#[tokio::test]
async fn plaintext_amqp_to_a_remote_host_needs_an_opt_in() {
    let err = refused_start("amqp://svc:hunter2@rabbitmq.example.com:5672/%2f").await;
    assert!(err.starts_with("error: AMQP_URL: plaintext"), "{err}");
    assert!(err.contains("AMQP_ALLOW_PLAINTEXT"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A one-shot HTTP server answering every request with `response`; counts connections.
fn raw_http_server(response: String) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (address, hits)
}

#[tokio::test]
async fn the_okta_client_follows_no_redirect() {
    // Where a redirect would lead: it must never be asked anything.
    let (elsewhere, elsewhere_hits) = raw_http_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]"
            .to_owned(),
    );
    let (okta, okta_hits) = raw_http_server(format!(
        "HTTP/1.1 302 Found\r\nlocation: http://{elsewhere}/api/v1/users\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    ));
    let client = OktaClient::new(
        reqwest::Url::parse(&format!("http://{okta}/")).expect("url"),
        &Secret::new("00redirect-token"),
        OktaClientSettings::default(),
    )
    .expect("client");
    let result = client.get_user("ada@example.com").await;
    assert!(result.is_err(), "a redirect is not an answer: {result:?}");
    assert!(okta_hits.load(Ordering::SeqCst) >= 1, "Okta was asked");
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed, with the token"
    );
}

#[tokio::test]
async fn the_okta_client_sends_nothing_over_plain_http_beyond_loopback() {
    // `::ffff:127.0.0.1` is not a loopback address by its name (only `::1` is), yet it
    // reaches this machine's 127.0.0.1: a plain-http "Okta" the client must not talk to.
    let (server, hits) = raw_http_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]"
            .to_owned(),
    );
    let client = OktaClient::new(
        reqwest::Url::parse(&format!("http://[::ffff:127.0.0.1]:{}/", server.port())).expect("url"),
        &Secret::new("00plaintext-token"),
        OktaClientSettings::default(),
    )
    .expect("client");
    let result = client.get_user("ada@example.com").await;
    assert!(result.is_err(), "plain http beyond loopback: {result:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the token went out in clear"
    );
}
