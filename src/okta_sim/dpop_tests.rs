//! The fake's DPoP rules over real HTTP, driven by hand (proofs made by the service's
//! own [`DpopKey`]): the token endpoint's refusals and nonce, and the API's refusal of
//! every way a DPoP-bound token can be misused.

use reqwest::header::HeaderValue;
use reqwest::{Client, Method, Response, Url};
use serde_json::Value;

use super::*;
use crate::okta::auth::{ServiceApp, SigningKey};
use crate::okta::dpop::{access_token_hash, DpopKey};
use crate::secret::Secret;

const CLIENT: &str = "0oaDPOPCLIENT";

struct Harness {
    sim: OktaSim,
    app: ServiceApp,
    key: DpopKey,
    http: Client,
}

impl Harness {
    async fn start(required: bool) -> Harness {
        let keys = test_key_pair(KeyKind::P256).expect("key pair");
        let sim = OktaSim::start(SimConfig {
            oauth_clients: vec![SimOAuthClient {
                client_id: CLIENT.into(),
                public_key_pem: keys.public_pem.clone(),
                scopes: vec!["okta.users.read".into()],
            }],
            oauth_dpop_required: required,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        let app = ServiceApp {
            client_id: CLIENT.into(),
            key: SigningKey::from_pem(&Secret::new(keys.private_pem)).expect("key"),
            key_id: None,
            scopes: vec!["okta.users.read".into()],
        };
        Harness {
            sim,
            app,
            key: DpopKey::generate().expect("dpop key"),
            http: Client::new(),
        }
    }

    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("{}{path}", self.sim.base_url())).expect("url")
    }

    fn proof(
        &self,
        method: &Method,
        path: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> HeaderValue {
        self.key
            .proof(
                method,
                &self.url(path),
                ath,
                nonce,
                jsonwebtoken::get_current_timestamp(),
            )
            .expect("proof")
    }

    async fn token_request(&self, proof: Option<HeaderValue>) -> Response {
        let token_url = self.url("/oauth2/v1/token");
        let assertion = self
            .app
            .client_assertion(
                &token_url,
                jsonwebtoken::get_current_timestamp(),
                crate::okta::dpop::new_jti(),
            )
            .expect("assertion");
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", "okta.users.read")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", assertion.expose())
            .finish();
        let mut request = self
            .http
            .post(token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        if let Some(proof) = proof {
            request = request.header("DPoP", proof);
        }
        request.send().await.expect("token endpoint answers")
    }

    /// A DPoP-bound token, through the nonce dance.
    async fn bound_token(&self) -> String {
        let first = self
            .token_request(Some(self.proof(
                &Method::POST,
                "/oauth2/v1/token",
                None,
                None,
            )))
            .await;
        assert_eq!(first.status(), 400);
        let nonce = first.headers()["dpop-nonce"]
            .to_str()
            .expect("nonce")
            .to_owned();
        let body: Value = first.json().await.expect("json");
        assert_eq!(body["error"], "use_dpop_nonce");
        let second = self
            .token_request(Some(self.proof(
                &Method::POST,
                "/oauth2/v1/token",
                None,
                Some(&nonce),
            )))
            .await;
        assert_eq!(second.status(), 200);
        let body: Value = second.json().await.expect("json");
        assert_eq!(body["token_type"], "DPoP");
        body["access_token"].as_str().expect("token").to_owned()
    }

    async fn get_users(&self, authorization: &str, proof: Option<HeaderValue>) -> Response {
        let mut request = self
            .http
            .get(self.url("/api/v1/users?limit=1"))
            .header("Authorization", authorization);
        if let Some(proof) = proof {
            request = request.header("DPoP", proof);
        }
        request.send().await.expect("api answers")
    }
}

fn challenge(response: &Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_token_request_without_a_proof_is_refused_as_okta_does() {
    let h = Harness::start(true).await;
    let response = h.token_request(None).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "invalid_dpop_proof");
    assert_eq!(
        body["error_description"],
        "The DPoP proof JWT header is missing."
    );
}

#[tokio::test]
async fn a_proof_binds_the_token_to_its_key() {
    let h = Harness::start(true).await;
    let token = h.bound_token().await;
    assert_eq!(
        h.sim.access_token_binding(&token).as_deref(),
        Some(h.key.thumbprint())
    );
}

#[tokio::test]
async fn without_dpop_required_a_bare_request_gets_a_bearer_token() {
    let h = Harness::start(false).await;
    let response = h.token_request(None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().expect("token");
    assert_eq!(h.sim.access_token_binding(token), None);
    assert_eq!(
        h.get_users(&format!("Bearer {token}"), None).await.status(),
        200
    );
}

#[tokio::test]
async fn a_bound_token_needs_a_fresh_matching_proof_at_the_api() {
    let h = Harness::start(true).await;
    let token = h.bound_token().await;
    let ath = access_token_hash(&token);
    let scheme = format!("DPoP {token}");

    let bearer = h.get_users(&format!("Bearer {token}"), None).await;
    assert_eq!(bearer.status(), 401, "a bound token is no Bearer token");
    assert!(
        challenge(&bearer).contains("invalid_token"),
        "{}",
        challenge(&bearer)
    );

    let missing = h.get_users(&scheme, None).await;
    assert_eq!(missing.status(), 400);
    assert!(
        challenge(&missing).contains("header is missing"),
        "{}",
        challenge(&missing)
    );

    // The API asks for its own nonce, then accepts the proof that has it.
    let no_nonce = h
        .get_users(
            &scheme,
            Some(h.proof(&Method::GET, "/api/v1/users", Some(&ath), None)),
        )
        .await;
    assert_eq!(no_nonce.status(), 401);
    assert!(
        challenge(&no_nonce).contains("use_dpop_nonce"),
        "{}",
        challenge(&no_nonce)
    );
    let nonce = no_nonce.headers()["dpop-nonce"]
        .to_str()
        .expect("nonce")
        .to_owned();
    let good = h.proof(&Method::GET, "/api/v1/users", Some(&ath), Some(&nonce));
    assert_eq!(h.get_users(&scheme, Some(good.clone())).await.status(), 200);

    let replayed = h.get_users(&scheme, Some(good)).await;
    assert_eq!(replayed.status(), 400);
    assert!(
        challenge(&replayed).contains("'jti'"),
        "{}",
        challenge(&replayed)
    );

    let without_ath = h
        .get_users(
            &scheme,
            Some(h.proof(&Method::GET, "/api/v1/users", None, Some(&nonce))),
        )
        .await;
    assert_eq!(without_ath.status(), 400);
    assert!(
        challenge(&without_ath).contains("'ath'"),
        "{}",
        challenge(&without_ath)
    );

    let wrong_method = h
        .get_users(
            &scheme,
            Some(h.proof(&Method::POST, "/api/v1/users", Some(&ath), Some(&nonce))),
        )
        .await;
    assert_eq!(wrong_method.status(), 400);
    assert!(
        challenge(&wrong_method).contains("'htm'"),
        "{}",
        challenge(&wrong_method)
    );

    let other_key = DpopKey::generate().expect("key");
    let foreign = other_key
        .proof(
            &Method::GET,
            &h.url("/api/v1/users"),
            Some(&ath),
            Some(&nonce),
            jsonwebtoken::get_current_timestamp(),
        )
        .expect("proof");
    let stolen = h.get_users(&scheme, Some(foreign)).await;
    assert_eq!(
        stolen.status(),
        400,
        "a proof by another key does not open the token"
    );
    assert!(
        stolen.text().await.expect("body").is_empty(),
        "Okta's 400 has no body"
    );
}
