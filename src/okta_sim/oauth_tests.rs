//! The fake's token endpoint and scope checks, over real HTTP: each way a client
//! assertion or an access token can be wrong is refused as Okta refuses it.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Client, Response};
use serde_json::{json, Value};

use super::*;

const CLIENT: &str = "0oaSIMCLIENT";
const ALL: [&str; 4] = [
    "okta.users.read",
    "okta.users.manage",
    "okta.groups.read",
    "okta.groups.manage",
];

struct Harness {
    sim: OktaSim,
    keys: TestKeyPair,
    http: Client,
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Harness {
    async fn start(kind: KeyKind, granted: &[&str]) -> Harness {
        let keys = test_key_pair(kind).expect("key pair");
        let sim = OktaSim::start(SimConfig {
            oauth_clients: vec![SimOAuthClient {
                client_id: CLIENT.into(),
                public_key_pem: keys.public_pem.clone(),
                scopes: granted.iter().map(|s| s.to_string()).collect(),
            }],
            // These tests are about the assertion and scopes, posted by hand without
            // DPoP: an app created through the API. DPoP has its own tests (`dpop_tests`).
            oauth_dpop_required: false,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        Harness {
            sim,
            keys,
            http: Client::new(),
        }
    }

    fn token_url(&self) -> String {
        format!("{}/oauth2/v1/token", self.sim.base_url())
    }

    fn claims(&self) -> Value {
        json!({
            "iss": CLIENT, "sub": CLIENT, "aud": self.token_url(),
            "iat": now(), "exp": now() + 300, "jti": format!("jti-{:x}", fastrand::u64(..)),
        })
    }

    fn sign_with(&self, private_pem: &str, algorithm: Algorithm, claims: &Value) -> String {
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        }
        .expect("key");
        jsonwebtoken::encode(&Header::new(algorithm), claims, &key).expect("signed")
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(&self.keys.private_pem, Algorithm::RS256, claims)
    }

    async fn request(&self, assertion: &str, scope: &str) -> Response {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", scope)
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", assertion)
            .finish();
        self.http
            .post(self.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .expect("token endpoint answers")
    }

    async fn access_token(&self, scope: &str) -> String {
        let response = self.request(&self.sign(&self.claims()), scope).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("cache-control").expect("no-store"),
            "no-store"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["scope"], scope);
        body["access_token"].as_str().expect("token").to_owned()
    }

    async fn api(&self, method: reqwest::Method, path: &str, token: &str) -> Response {
        self.http
            .request(method, format!("{}{path}", self.sim.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .expect("api answers")
    }
}

async fn oauth_error(response: Response, status: u16, error: &str) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], error, "{body}");
    body["error_description"]
        .as_str()
        .expect("description")
        .to_owned()
}

#[tokio::test]
async fn a_valid_assertion_gets_a_token_that_opens_the_api() {
    let h = Harness::start(KeyKind::Rsa, &ALL).await;
    let token = h.access_token(&ALL.join(" ")).await;
    let response = h.api(reqwest::Method::GET, "/api/v1/users", &token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.sim.issued_access_tokens(), vec![token]);
    assert_eq!(h.sim.token_requests()[0].client_id.as_deref(), Some(CLIENT));
}

#[tokio::test]
async fn an_es256_client_is_verified_with_its_ec_key() {
    let h = Harness::start(KeyKind::P256, &ALL).await;
    let assertion = h.sign_with(&h.keys.private_pem, Algorithm::ES256, &h.claims());
    assert_eq!(h.request(&assertion, "okta.users.read").await.status(), 200);
    // The same client's key, but the algorithm it does not use.
    let other = test_key_pair(KeyKind::Rsa).expect("key");
    let assertion = h.sign_with(&other.private_pem, Algorithm::RS256, &h.claims());
    let description = oauth_error(
        h.request(&assertion, "okta.users.read").await,
        401,
        "invalid_client",
    )
    .await;
    assert!(
        description.contains("signature is invalid"),
        "{description}"
    );
}

#[tokio::test]
async fn an_assertion_signed_with_another_key_is_refused() {
    let h = Harness::start(KeyKind::Rsa, &ALL).await;
    let intruder = test_key_pair(KeyKind::Rsa).expect("key");
    let assertion = h.sign_with(&intruder.private_pem, Algorithm::RS256, &h.claims());
    let description = oauth_error(
        h.request(&assertion, "okta.users.read").await,
        401,
        "invalid_client",
    )
    .await;
    assert_eq!(description, "The client_assertion signature is invalid.");
    assert!(h.sim.issued_access_tokens().is_empty());
}

#[tokio::test]
async fn a_replayed_assertion_is_refused() {
    let h = Harness::start(KeyKind::Rsa, &ALL).await;
    let assertion = h.sign(&h.claims());
    assert_eq!(h.request(&assertion, "okta.users.read").await.status(), 200);
    let description = oauth_error(
        h.request(&assertion, "okta.users.read").await,
        401,
        "invalid_client",
    )
    .await;
    assert!(description.contains("already been used"), "{description}");
}

#[tokio::test]
async fn each_bad_claim_is_refused_with_its_reason() {
    let h = Harness::start(KeyKind::Rsa, &ALL).await;
    let with = |key: &str, value: Value| {
        let mut claims = h.claims();
        match value {
            Value::Null => {
                claims.as_object_mut().expect("object").remove(key);
            }
            value => claims[key] = value,
        }
        claims
    };
    let cases = [
        (
            with("aud", json!("https://elsewhere.okta.com/oauth2/v1/token")),
            "audience",
        ),
        (with("sub", json!("0oaOTHER")), "'iss' and 'sub'"),
        (with("exp", json!(now() - 600)), "expired"),
        (with("exp", json!(now() + 7200)), "too far in the future"),
        (with("jti", Value::Null), "'jti'"),
        (with("exp", Value::Null), "'exp'"),
        (with("iss", json!("0oaUNKNOWN")), "client_id"),
    ];
    for (claims, reason) in cases {
        let description = oauth_error(
            h.request(&h.sign(&claims), "okta.users.read").await,
            401,
            "invalid_client",
        )
        .await;
        assert!(description.contains(reason), "{claims}: {description}");
    }
    let description = oauth_error(
        h.request("not.a.jwt", "okta.users.read").await,
        401,
        "invalid_client",
    )
    .await;
    assert!(description.contains("malformed"), "{description}");
    assert!(h.sim.issued_access_tokens().is_empty());
}

#[tokio::test]
async fn scopes_not_granted_to_the_app_are_refused_at_the_token_endpoint() {
    let h = Harness::start(KeyKind::Rsa, &["okta.users.read"]).await;
    let description = oauth_error(
        h.request(&h.sign(&h.claims()), "okta.users.read okta.groups.manage")
            .await,
        400,
        "invalid_scope",
    )
    .await;
    assert!(description.contains("okta.groups.manage"), "{description}");
    assert!(!description.contains("okta.users.read"), "{description}");
}

#[tokio::test]
async fn each_operation_needs_its_scope_and_manage_includes_read() {
    let h = Harness::start(KeyKind::Rsa, &ALL).await;
    let read_only = h.access_token("okta.users.read okta.groups.read").await;
    let response = h
        .api(reqwest::Method::POST, "/api/v1/users", &read_only)
        .await;
    assert_eq!(response.status(), 403);
    let challenge = response
        .headers()
        .get("www-authenticate")
        .expect("challenge")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        challenge.contains("scope=\"okta.users.manage\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errorCode"], "E0000006");

    let manage_only = h.access_token("okta.groups.manage").await;
    assert_eq!(
        h.api(reqwest::Method::GET, "/api/v1/groups", &manage_only)
            .await
            .status(),
        200
    );
    let response = h
        .api(reqwest::Method::GET, "/api/v1/users", &manage_only)
        .await;
    assert_eq!(response.status(), 403);
    assert!(response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("scope=\"okta.users.read\"")));
}

#[tokio::test]
async fn unknown_and_expired_access_tokens_get_401() {
    let h = Harness::start(KeyKind::Rsa, &ALL).await;
    let response = h
        .api(reqwest::Method::GET, "/api/v1/users", "oatmadeup")
        .await;
    assert_eq!(response.status(), 401);
    let token = h.access_token("okta.users.read").await;
    assert_eq!(
        h.api(reqwest::Method::GET, "/api/v1/users", &token)
            .await
            .status(),
        200
    );
    h.sim.expire_access_tokens();
    let response = h.api(reqwest::Method::GET, "/api/v1/users", &token).await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errorCode"], "E0000011");

    h.sim.set_access_token_lifetime(Duration::ZERO);
    let short = h.access_token_lived("okta.users.read", 0).await;
    assert_eq!(
        h.api(reqwest::Method::GET, "/api/v1/users", &short)
            .await
            .status(),
        401
    );
    // The API token keeps working beside OAuth.
    let response = h
        .http
        .get(format!("{}/api/v1/users", h.sim.base_url()))
        .header("Authorization", format!("SSWS {}", h.sim.api_token()))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
}

impl Harness {
    async fn access_token_lived(&self, scope: &str, lifetime: u64) -> String {
        let response = self.request(&self.sign(&self.claims()), scope).await;
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["expires_in"], lifetime);
        body["access_token"].as_str().expect("token").to_owned()
    }
}

#[tokio::test]
async fn a_bad_public_key_stops_the_fake_from_starting() {
    let error = OktaSim::start(SimConfig {
        oauth_clients: vec![SimOAuthClient {
            client_id: CLIENT.into(),
            public_key_pem: "not a key".into(),
            scopes: vec![],
        }],
        ..SimConfig::default()
    })
    .await
    .expect_err("refused");
    assert!(error.to_string().contains(CLIENT), "{error}");
}
