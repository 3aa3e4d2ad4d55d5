//! How the client proves who it is to Okta: a fixed SSWS API token, or an OAuth 2.0
//! service app (client credentials with `private_key_jwt`), which Okta recommends over
//! long-lived API tokens because its access is limited to the scopes it was granted and
//! its tokens expire within the hour.
//!
//! For a service app this module signs the client assertion (RS256 or ES256), exchanges
//! it at `/oauth2/v1/token` for an access token, caches that token until shortly before
//! it expires, and lets only one caller fetch a new one at a time. The private key, the
//! assertion and the access token live in [`Secret`]s or sensitive header values: none
//! of them can reach a log line, an error or an outcome.
//!
//! When the app requires DPoP (the Admin Console's default), Okta says so at the first
//! token request; from then on every token request carries a proof, Okta's `DPoP-Nonce`
//! is sent back when asked for, the token comes back `token_type: DPoP`, and every API
//! request gets `Authorization: DPoP …` plus a fresh proof ([`super::dpop`]). An app
//! that does not require DPoP is served exactly as before: nothing needs setting.

use super::dpop::{self, auth_param, new_jti, DpopKey};
use super::error::{OktaError, TokenError};
use super::rate_headers::rate_limit_wait;
use crate::domain::event::printable;
use crate::secret::Secret;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The scopes the service needs, and no more: read and manage users (find, create,
/// update, lifecycle, sessions) and read and manage groups (resolve names, memberships).
pub const DEFAULT_SCOPES: [&str; 4] = [
    "okta.users.read",
    "okta.users.manage",
    "okta.groups.read",
    "okta.groups.manage",
];

/// Okta's operationId for the token endpoint, used in errors and spans.
pub const TOKEN_OPERATION: &str = "token";

/// How far ahead a client assertion expires. Okta accepts at most one hour; a short
/// life limits what a captured assertion is worth (and Okta refuses a replayed `jti`).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// Renew an access token this long before Okta says it expires, at most: requests in
/// flight must not carry a token that dies on the way.
const MAX_RENEWAL_MARGIN: Duration = Duration::from_secs(60);

/// How long a refused token request (wrong key, scope not granted) is answered from
/// memory: a burst of deliveries must not become a burst of doomed token requests,
/// while an administrator's fix is still noticed within seconds.
const REFUSAL_HOLD: Duration = Duration::from_secs(10);

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the service authenticates to Okta.
#[derive(Debug, Clone)]
pub enum OktaAuth {
    /// `Authorization: SSWS <token>`: an API token, with its admin's full rights.
    ApiToken(Secret),
    /// An OAuth 2.0 service app: short-lived access tokens limited to its scopes.
    ServiceApp(ServiceApp),
}

/// An OAuth 2.0 service app's credentials (`private_key_jwt`).
#[derive(Debug, Clone)]
pub struct ServiceApp {
    /// The app's client id: `iss` and `sub` of every client assertion.
    pub client_id: String,
    /// The private key whose public half is registered with the app.
    pub key: SigningKey,
    /// The `kid` of that key in the app's key set, sent in the assertion's header.
    pub key_id: Option<String>,
    /// The scopes to request.
    pub scopes: Vec<String>,
}

/// A private key that signs client assertions, with the algorithm it signs with.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    key: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Why a private key cannot be used. The messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not a PEM-encoded private key (expected a -----BEGIN PRIVATE KEY----- block)")]
    NotPem,
    #[error("holds an encrypted private key; give the decrypted key (for example from `openssl pkcs8 -topk8 -nocrypt`)")]
    Encrypted,
    #[error("holds a PEM block of type {0:?}, not a private key")]
    NotAPrivateKey(String),
    #[error("is not an RSA key of 2048 bits or more (RS256) nor a P-256 EC key (ES256) in PKCS#8 or PKCS#1 form; convert an `EC PRIVATE KEY` with `openssl pkcs8 -topk8 -nocrypt`")]
    Unsupported,
}

impl SigningKey {
    /// Reads a PEM private key: RSA (PKCS#8 or PKCS#1) for RS256, or P-256 EC (PKCS#8)
    /// for ES256. The key is tried by signing once, so a key accepted here signs later.
    ///
    /// # Errors
    /// [`KeyError`] when the text is not a usable private key.
    pub fn from_pem(pem_text: &Secret) -> Result<Self, KeyError> {
        let parsed = pem::parse(pem_text.expose().trim()).map_err(|_| KeyError::NotPem)?;
        match parsed.tag() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {}
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
            other => return Err(KeyError::NotAPrivateKey(printable(other))),
        }
        let bytes = pem_text.expose().trim().as_bytes();
        let candidates = [
            (Algorithm::RS256, EncodingKey::from_rsa_pem(bytes)),
            (Algorithm::ES256, EncodingKey::from_ec_pem(bytes)),
        ];
        for (algorithm, key) in candidates {
            let Ok(key) = key else { continue };
            let candidate = SigningKey { algorithm, key };
            if candidate.sign(&serde_json::json!({}), None).is_ok() {
                return Ok(candidate);
            }
        }
        Err(KeyError::Unsupported)
    }

    /// `RS256` or `ES256`.
    pub fn algorithm_name(&self) -> &'static str {
        match self.algorithm {
            Algorithm::ES256 => "ES256",
            _ => "RS256",
        }
    }

    fn sign(&self, claims: &impl Serialize, key_id: Option<&str>) -> Result<Secret, String> {
        let mut header = Header::new(self.algorithm);
        header.kid = key_id.map(str::to_owned);
        // Only the error's kind is kept: it names what went wrong, never the key.
        jsonwebtoken::encode(&header, claims, &self.key)
            .map(Secret::new)
            .map_err(|e| format!("{:?}", e.kind()).chars().take(80).collect())
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

impl ServiceApp {
    /// A signed client assertion for `token_url`, issued at `now` (Unix seconds), with
    /// the unique id `jti`.
    ///
    /// # Errors
    /// [`OktaError::Assertion`] when signing fails (the key was checked at start-up, so
    /// this means the crypto library refused it after all).
    pub fn client_assertion(
        &self,
        token_url: &Url,
        now: u64,
        jti: String,
    ) -> Result<Secret, OktaError> {
        let claims = AssertionClaims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: token_url.as_str(),
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
            jti,
        };
        self.key
            .sign(&claims, self.key_id.as_deref())
            .map_err(|reason| OktaError::Assertion { reason })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Gives each request its `Authorization` header value.
pub(crate) struct Authorizer(Kind);

enum Kind {
    Fixed(HeaderValue),
    OAuth(Box<TokenSource>),
}

/// What one API request carries to prove who sends it.
pub(crate) struct Credentials {
    /// `Authorization`, marked sensitive.
    pub(crate) authorization: HeaderValue,
    /// The `DPoP` proof, when the access token is DPoP-bound.
    pub(crate) proof: Option<HeaderValue>,
}

impl Authorizer {
    /// Builds the authorizer for an org at `base`; a service app's token requests go
    /// through `http`.
    pub(crate) fn new(
        base: &Url,
        auth: &OktaAuth,
        http: reqwest::Client,
    ) -> Result<Self, OktaSetupError> {
        match auth {
            OktaAuth::ApiToken(token) => {
                let mut value = HeaderValue::from_str(&format!("SSWS {}", token.expose()))
                    .map_err(|_| OktaSetupError::BadToken)?;
                value.set_sensitive(true);
                Ok(Self(Kind::Fixed(value)))
            }
            OktaAuth::ServiceApp(app) => {
                let dpop_key = DpopKey::generate().map_err(OktaSetupError::Dpop)?;
                let mut token_url = base.clone();
                if let Ok(mut path) = token_url.path_segments_mut() {
                    path.pop_if_empty().extend(["oauth2", "v1", "token"]);
                }
                Ok(Self(Kind::OAuth(Box::new(TokenSource {
                    http,
                    token_url,
                    scope: app.scopes.join(" "),
                    app: app.clone(),
                    cached: Mutex::new(TokenState::default()),
                    dpop_key,
                    dpop: std::sync::Mutex::new(DpopState::default()),
                }))))
            }
        }
    }

    /// What to send with one API request to `url` by `method`: the `Authorization`
    /// value and, for a DPoP-bound token, a fresh proof for this very request.
    ///
    /// # Errors
    /// When a service app cannot get an access token, or a proof cannot be signed.
    pub(crate) async fn credentials(
        &self,
        method: &Method,
        url: &Url,
    ) -> Result<Credentials, OktaError> {
        match &self.0 {
            Kind::Fixed(value) => Ok(Credentials {
                authorization: value.clone(),
                proof: None,
            }),
            Kind::OAuth(source) => source.credentials(method, url).await,
        }
    }

    /// Reads the DPoP parts of an API answer: remembers a `DPoP-Nonce` Okta sent, and
    /// says whether the answer asks for the request again with that nonce
    /// (`use_dpop_nonce`). Always false for an API token or a Bearer token.
    pub(crate) fn observe_answer(&self, headers: &HeaderMap) -> bool {
        match &self.0 {
            Kind::Fixed(_) => false,
            Kind::OAuth(source) => source.observe_api_answer(headers),
        }
    }

    /// The value to send as `Authorization`, marked sensitive.
    ///
    /// # Errors
    /// When a service app cannot get an access token.
    #[cfg(all(test, feature = "okta-sim"))]
    pub(crate) async fn authorization(&self) -> Result<HeaderValue, OktaError> {
        match &self.0 {
            Kind::Fixed(value) => Ok(value.clone()),
            Kind::OAuth(source) => source.authorization().await,
        }
    }

    /// Called when Okta answered 401 `E0000011` to a request sent with `rejected`:
    /// forgets that access token so the next call fetches a new one. True when a retry
    /// can help (an OAuth token can be renewed; an API token cannot).
    pub(crate) async fn renew_after_rejection(&self, rejected: &HeaderValue) -> bool {
        match &self.0 {
            Kind::Fixed(_) => false,
            Kind::OAuth(source) => {
                source.forget(rejected).await;
                true
            }
        }
    }
}

/// A service app's access tokens: fetched on demand, cached until shortly before expiry.
struct TokenSource {
    http: reqwest::Client,
    token_url: Url,
    app: ServiceApp,
    scope: String,
    /// Held while a token is fetched, so concurrent callers wait for that one fetch
    /// instead of each asking Okta (single flight).
    cached: Mutex<TokenState>,
    /// The key DPoP-bound tokens are bound to, made at start and kept for the life of
    /// the process (a new key would orphan the cached token).
    dpop_key: DpopKey,
    /// What Okta has told about DPoP so far; a plain mutex, never held across `.await`.
    dpop: std::sync::Mutex<DpopState>,
}

/// What the client learned about DPoP from Okta's answers.
#[derive(Default)]
struct DpopState {
    /// The token endpoint refused a request without a proof: the app requires DPoP.
    required: bool,
    /// The latest `DPoP-Nonce` of the token endpoint, and of the API (RFC 9449 §8, §9:
    /// each server's nonce is only good at that server).
    token_nonce: Option<String>,
    api_nonce: Option<String>,
}

#[derive(Default)]
struct TokenState {
    token: Option<CachedToken>,
    /// The last refusal of the token endpoint, and when it came.
    refused: Option<(TokenError, Instant)>,
}

struct CachedToken {
    authorization: HeaderValue,
    /// For a DPoP-bound token, its `ath` (base64url SHA-256 of the token).
    dpop_ath: Option<String>,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    token_type: String,
    access_token: Secret,
    expires_in: u64,
    #[serde(default)]
    scope: Option<String>,
}

/// One answer of the token endpoint: a token, or a refusal with the `DPoP-Nonce` it
/// carried (needed to retry a `use_dpop_nonce`).
enum TokenAnswer {
    Issued(CachedToken),
    Refused {
        error: TokenError,
        nonce: Option<String>,
    },
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenSource {
    #[cfg(all(test, feature = "okta-sim"))]
    async fn authorization(&self) -> Result<HeaderValue, OktaError> {
        self.current_token()
            .await
            .map(|(authorization, _)| authorization)
    }

    async fn credentials(&self, method: &Method, url: &Url) -> Result<Credentials, OktaError> {
        let (authorization, ath) = self.current_token().await?;
        let proof = match ath {
            None => None,
            Some(ath) => {
                let nonce = self.dpop_state().api_nonce.clone();
                Some(self.sign_proof(method, url, Some(&ath), nonce.as_deref())?)
            }
        };
        Ok(Credentials {
            authorization,
            proof,
        })
    }

    fn observe_api_answer(&self, headers: &HeaderMap) -> bool {
        let Some(nonce) = dpop::nonce(headers) else {
            return false;
        };
        // A nonce is remembered from any answer (RFC 9449 §9 lets a server send the next
        // one on success too); it is a reason to retry only with `use_dpop_nonce`.
        self.dpop_state().api_nonce = Some(nonce);
        dpop::nonce_challenge(headers).is_some()
    }

    fn dpop_state(&self) -> std::sync::MutexGuard<'_, DpopState> {
        self.dpop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sign_proof(
        &self,
        method: &Method,
        url: &Url,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<HeaderValue, OktaError> {
        self.dpop_key
            .proof(method, url, ath, nonce, unix_now())
            .map_err(|e| OktaError::Assertion {
                reason: e.to_string(),
            })
    }

    /// The access token's `Authorization` value and, when it is DPoP-bound, its `ath`.
    async fn current_token(&self) -> Result<(HeaderValue, Option<String>), OktaError> {
        let mut state = self.cached.lock().await;
        if let Some(token) = state.token.as_ref() {
            if Instant::now() < token.renew_at {
                return Ok((token.authorization.clone(), token.dpop_ath.clone()));
            }
        }
        if let Some((refusal, at)) = &state.refused {
            if at.elapsed() < REFUSAL_HOLD {
                return Err(OktaError::Token(Box::new(refusal.clone())));
            }
        }
        match self.fetch().await {
            Ok(fresh) => {
                let current = (fresh.authorization.clone(), fresh.dpop_ath.clone());
                *state = TokenState {
                    token: Some(fresh),
                    refused: None,
                };
                Ok(current)
            }
            Err(OktaError::Token(refusal)) if refusal.status < 500 => {
                state.refused = Some(((*refusal).clone(), Instant::now()));
                Err(OktaError::Token(refusal))
            }
            Err(error) => Err(error),
        }
    }

    /// Drops the cached token whatever it is; true if there was one.
    #[cfg(all(test, feature = "okta-sim"))]
    async fn forget_all(&self) -> bool {
        self.cached.lock().await.token.take().is_some()
    }

    async fn forget(&self, rejected: &HeaderValue) {
        let mut state = self.cached.lock().await;
        // Only the token Okta rejected: when several calls fail with the same token,
        // the first renews it and the others reuse the new one.
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.authorization == rejected)
        {
            state.token = None;
        }
    }

    async fn fetch(&self) -> Result<CachedToken, OktaError> {
        self.fetch_with_jti(new_jti()).await
    }

    /// Fetches a token, the first assertion with `jti`. Against an app that requires
    /// DPoP this is up to three requests, each with a fresh assertion (Okta may count an
    /// assertion as used even when it refuses the request): without a proof, refused as
    /// `invalid_dpop_proof` (learned once per process); with a proof, refused as
    /// `use_dpop_nonce`; with the nonce Okta sent. Each step is taken at most once.
    async fn fetch_with_jti(&self, jti: String) -> Result<CachedToken, OktaError> {
        let mut jti = Some(jti);
        let mut learned_required = false;
        let mut retried_with_nonce = false;
        loop {
            let (with_proof, nonce) = {
                let state = self.dpop_state();
                (state.required, state.token_nonce.clone())
            };
            let proof = if with_proof {
                Some(self.sign_proof(&Method::POST, &self.token_url, None, nonce.as_deref())?)
            } else {
                None
            };
            let this_jti = jti.take().unwrap_or_else(new_jti);
            match self.request_token(this_jti, proof).await? {
                TokenAnswer::Issued(token) => return Ok(token),
                TokenAnswer::Refused { error, nonce } => {
                    if error.error == "invalid_dpop_proof" && !with_proof && !learned_required {
                        learned_required = true;
                        self.dpop_state().required = true;
                        tracing::debug!("the Okta service app requires DPoP; sending proofs");
                        continue;
                    }
                    if error.error == "use_dpop_nonce" && with_proof && !retried_with_nonce {
                        if let Some(nonce) = nonce {
                            retried_with_nonce = true;
                            self.dpop_state().token_nonce = Some(nonce);
                            continue;
                        }
                    }
                    return Err(OktaError::Token(Box::new(error)));
                }
            }
        }
    }

    #[tracing::instrument(name = "okta.token", skip_all, fields(okta.operation = TOKEN_OPERATION, okta.request_id = tracing::field::Empty, http.status = tracing::field::Empty, okta.dpop = proof.is_some()))]
    async fn request_token(
        &self,
        jti: String,
        proof: Option<HeaderValue>,
    ) -> Result<TokenAnswer, OktaError> {
        let assertion = self
            .app
            .client_assertion(&self.token_url, unix_now(), jti)?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", &self.scope)
            .append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE)
            .append_pair("client_assertion", assertion.expose())
            .finish();
        let transport = |source: reqwest::Error| OktaError::Transport {
            operation: TOKEN_OPERATION,
            timed_out: source.is_timeout(),
            source,
        };
        let with_proof = proof.is_some();
        let mut request = self
            .http
            .post(self.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if let Some(proof) = proof {
            request = request.header(dpop::DPOP, proof);
        }
        let response = request.body(form).send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transport)?;
        let request_id = headers
            .get("x-okta-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let span = tracing::Span::current();
        span.record("http.status", status.as_u16());
        if let Some(id) = &request_id {
            span.record("okta.request_id", id.as_str());
        }
        let nonce = dpop::nonce(&headers);
        if status.is_success() {
            if let (true, Some(nonce)) = (with_proof, &nonce) {
                self.dpop_state().token_nonce = Some(nonce.clone());
            }
            return self
                .accept(&body, request_id, with_proof)
                .map(TokenAnswer::Issued);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            // The token endpoint is not paced (a token lasts an hour): its 429 goes up
            // as any other, and the pipeline retries after the reset.
            return Err(OktaError::RateLimited {
                operation: TOKEN_OPERATION,
                limit: super::error::LimitKind::Bucket,
                retry_after: rate_limit_wait(&headers),
                request_id,
            });
        }
        let (error, description) = match serde_json::from_slice::<OAuthErrorBody>(&body) {
            Ok(body) => (printable(&body.error), printable(&body.error_description)),
            Err(_) => (
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
                    .replace(' ', "_"),
                String::new(),
            ),
        };
        Ok(TokenAnswer::Refused {
            error: TokenError {
                status: status.as_u16(),
                error,
                description,
                request_id,
            },
            nonce,
        })
    }

    fn accept(
        &self,
        body: &[u8],
        request_id: Option<String>,
        sent_proof: bool,
    ) -> Result<CachedToken, OktaError> {
        // serde's message could quote a value from the body, which holds the token:
        // keep only where the problem is.
        let token: TokenResponse = serde_json::from_slice(body).map_err(|e| OktaError::Decode {
            operation: TOKEN_OPERATION,
            message: format!(
                "not a token response ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
            request_id: request_id.clone(),
        })?;
        // A DPoP-bound token is only usable with the key that asked for it; an app that
        // does not require DPoP may still answer Bearer to a request with a proof.
        let bound = sent_proof && token.token_type.eq_ignore_ascii_case("dpop");
        if !bound && !token.token_type.eq_ignore_ascii_case("bearer") {
            return Err(OktaError::Decode {
                operation: TOKEN_OPERATION,
                message: format!(
                    "token type {:?} is not Bearer{}",
                    printable(&token.token_type),
                    if sent_proof { " nor DPoP" } else { "" }
                ),
                request_id,
            });
        }
        let scheme = if bound { "DPoP" } else { "Bearer" };
        let dpop_ath = bound.then(|| dpop::access_token_hash(token.access_token.expose()));
        let mut authorization =
            HeaderValue::from_str(&format!("{scheme} {}", token.access_token.expose())).map_err(
                |_| OktaError::Decode {
                    operation: TOKEN_OPERATION,
                    message: "the access token has characters an HTTP header cannot carry".into(),
                    request_id: request_id.clone(),
                },
            )?;
        authorization.set_sensitive(true);
        let lifetime = Duration::from_secs(token.expires_in);
        let margin = (lifetime / 5).min(MAX_RENEWAL_MARGIN);
        tracing::debug!(
            expires_in_secs = token.expires_in,
            dpop_bound = bound,
            dpop_jkt = bound.then(|| self.dpop_key.thumbprint()),
            scope = token.scope.as_deref().map(printable),
            "obtained an Okta access token"
        );
        Ok(CachedToken {
            authorization,
            dpop_ath,
            renew_at: Instant::now() + lifetime.saturating_sub(margin),
        })
    }
}

/// The scope Okta says a request lacked: on a 403 for a Bearer token, Okta names it in
/// `WWW-Authenticate: Bearer …, scope="okta.users.manage", error="insufficient_scope"`.
pub(crate) fn insufficient_scope(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(WWW_AUTHENTICATE)?.to_str().ok()?;
    if auth_param(value, "error")? != "insufficient_scope" {
        return None;
    }
    auth_param(value, "scope").map(|s| printable(&s))
}

// These tests sign with keys from the fake Okta and talk to it, so they need its feature.
/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OktaSetupError {
    #[error("OKTA_API_TOKEN contains characters that cannot be sent in an HTTP header")]
    BadToken,
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("cannot make the DPoP key for the OAuth service app")]
    Dpop(#[source] dpop::DpopError),
}

#[cfg(all(test, feature = "okta-sim"))]
mod tests {
    use super::*;
    use crate::okta_sim::{test_key_pair, KeyKind, OktaSim, SimConfig, SimOAuthClient};

    fn app(kind: KeyKind) -> (ServiceApp, String) {
        let pair = test_key_pair(kind).expect("key pair");
        let key = SigningKey::from_pem(&Secret::new(pair.private_pem)).expect("key");
        (
            ServiceApp {
                client_id: "0oaTEST".into(),
                key,
                key_id: Some("kid-1".into()),
                scopes: DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            },
            pair.public_pem,
        )
    }

    #[test]
    fn keys_are_recognised_by_type_and_nothing_else_is_accepted() {
        for (kind, name) in [(KeyKind::Rsa, "RS256"), (KeyKind::P256, "ES256")] {
            let pair = test_key_pair(kind).expect("key pair");
            let key = SigningKey::from_pem(&Secret::new(pair.private_pem)).expect("usable");
            assert_eq!(key.algorithm_name(), name);
            assert!(!format!("{key:?}").contains("MII"), "{key:?}");
        }
        let pair = test_key_pair(KeyKind::Rsa).expect("key pair");
        assert_eq!(
            SigningKey::from_pem(&Secret::new(pair.public_pem)).unwrap_err(),
            KeyError::NotAPrivateKey("PUBLIC KEY".into())
        );
        assert_eq!(
            SigningKey::from_pem(&Secret::new("not a key")).unwrap_err(),
            KeyError::NotPem
        );
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            SigningKey::from_pem(&Secret::new(garbage)).unwrap_err(),
            KeyError::Unsupported
        );
    }

    #[test]
    fn the_assertion_carries_the_claims_okta_checks() {
        let (app, public_pem) = app(KeyKind::P256);
        let url = Url::parse("https://acme.okta.com/oauth2/v1/token").expect("url");
        let assertion = app
            .client_assertion(&url, 1_800_000_000, "jti-1".into())
            .expect("signed");
        let header = jsonwebtoken::decode_header(assertion.expose()).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("kid-1"));
        let key = jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes()).expect("pub");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.set_audience(&[url.as_str()]);
        let claims =
            jsonwebtoken::decode::<serde_json::Value>(assertion.expose(), &key, &validation)
                .expect("verifies")
                .claims;
        assert_eq!(claims["iss"], "0oaTEST");
        assert_eq!(claims["sub"], "0oaTEST");
        assert_eq!(claims["jti"], "jti-1");
        let lifetime = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
        assert!(lifetime > 0 && lifetime <= 3600, "{lifetime}");
    }

    #[test]
    fn jtis_are_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_jti()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn the_missing_scope_is_read_from_www_authenticate() {
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer authorization_uri=\"http://o.okta.com/oauth2/v1/authorize\", realm=\"IdpMgmt\", scope=\"okta.users.manage\", error=\"insufficient_scope\", error_description=\"The access token provided does not contain the required scopes.\", resource=\"/api/v1/users\"",
            ),
        );
        assert_eq!(
            insufficient_scope(&headers).as_deref(),
            Some("okta.users.manage")
        );
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\", scope=\"x\""),
        );
        assert_eq!(insufficient_scope(&headers), None);
        assert_eq!(
            auth_param(
                "Bearer error_description=\"scopes=\\\"a\", scope=\"b\"",
                "scope"
            )
            .as_deref(),
            Some("b")
        );
    }

    async fn sim_with_client(public_pem: String, lifetime: Duration) -> OktaSim {
        sim_with_dpop(public_pem, lifetime, true).await
    }

    async fn sim_with_dpop(public_pem: String, lifetime: Duration, required: bool) -> OktaSim {
        OktaSim::start(SimConfig {
            oauth_dpop_required: required,
            oauth_clients: vec![SimOAuthClient {
                client_id: "0oaTEST".into(),
                public_key_pem: public_pem,
                scopes: DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            }],
            access_token_lifetime: lifetime,
            ..SimConfig::default()
        })
        .await
        .expect("sim")
    }

    fn authorizer(sim: &OktaSim, app: ServiceApp) -> Authorizer {
        let base = Url::parse(&sim.base_url()).expect("url");
        Authorizer::new(&base, &OktaAuth::ServiceApp(app), reqwest::Client::new())
            .expect("authorizer")
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_token_fetch() {
        let (app, public_pem) = app(KeyKind::Rsa);
        let sim = sim_with_client(public_pem, Duration::from_secs(3600)).await;
        let auth = std::sync::Arc::new(authorizer(&sim, app));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let auth = auth.clone();
            tasks.spawn(async move { auth.authorization().await.expect("token") });
        }
        let mut values = std::collections::HashSet::new();
        while let Some(value) = tasks.join_next().await {
            let value = value.expect("task");
            assert!(value.is_sensitive());
            values.insert(value);
        }
        assert_eq!(values.len(), 1, "one token for everyone");
        assert_eq!(sim.issued_access_tokens().len(), 1, "one fetch");
    }

    #[tokio::test]
    async fn a_rejected_token_is_renewed_once_and_others_reuse_the_new_one() {
        let (app, public_pem) = app(KeyKind::P256);
        let sim = sim_with_client(public_pem, Duration::from_secs(3600)).await;
        let auth = authorizer(&sim, app);
        let first = auth.authorization().await.expect("token");
        assert!(auth.renew_after_rejection(&first).await);
        let second = auth.authorization().await.expect("token");
        assert_ne!(first, second);
        // A late rejection of the old token must not throw away the new one.
        assert!(auth.renew_after_rejection(&first).await);
        assert_eq!(auth.authorization().await.expect("token"), second);
        assert_eq!(sim.issued_access_tokens().len(), 2);
    }

    #[tokio::test]
    async fn a_token_is_renewed_before_it_expires() {
        let (app, public_pem) = app(KeyKind::P256);
        let sim = sim_with_client(public_pem, Duration::from_secs(3600)).await;
        let auth = authorizer(&sim, app);
        let first = auth.authorization().await.expect("token");
        tokio::time::pause();
        // 3600 s with a 60 s margin: still cached at 3539 s, renewed at 3541 s.
        tokio::time::advance(Duration::from_secs(3539)).await;
        assert_eq!(auth.authorization().await.expect("token"), first);
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::time::resume();
        assert_ne!(auth.authorization().await.expect("token"), first);
    }

    #[tokio::test]
    async fn a_replayed_assertion_is_refused_and_reported_as_a_permanent_okta_failure() {
        let (app, public_pem) = app(KeyKind::Rsa);
        // An app without DPoP, so that the bare form posts below get tokens.
        let sim = sim_with_dpop(public_pem, Duration::from_secs(3600), false).await;
        let token_url = Url::parse(&format!("{}/oauth2/v1/token", sim.base_url())).expect("url");
        let assertion = app
            .client_assertion(&token_url, unix_now(), "the-same-jti".into())
            .expect("signed");
        let post = || {
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .append_pair("scope", "okta.users.read")
                .append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE)
                .append_pair("client_assertion", assertion.expose())
                .finish();
            reqwest::Client::new()
                .post(token_url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form)
                .send()
        };
        assert_eq!(post().await.expect("first").status(), 200);
        let replay = post().await.expect("second");
        assert_eq!(replay.status(), 401);

        // The service's own path: a source whose assertion reuses that jti.
        let source = TokenSource {
            http: reqwest::Client::new(),
            token_url: token_url.clone(),
            app: app.clone(),
            scope: "okta.users.read".into(),
            cached: Mutex::new(TokenState::default()),
            dpop_key: DpopKey::generate().expect("key"),
            dpop: std::sync::Mutex::new(DpopState::default()),
        };
        let error = source
            .fetch_with_jti("the-same-jti".into())
            .await
            .err()
            .expect("refused");
        assert_eq!(error.kind(), crate::domain::outcome::ErrorKind::Okta);
        assert_eq!(error.error_code(), Some("invalid_client"));
        let message = error.to_string();
        assert!(message.contains("invalid_client"), "{message}");
        assert!(message.contains("already been used"), "{message}");
    }

    #[tokio::test]
    async fn a_refused_token_request_is_remembered_briefly_instead_of_repeated() {
        let (app, _) = app(KeyKind::Rsa);
        let other = test_key_pair(KeyKind::Rsa).expect("key pair");
        let sim = sim_with_client(other.public_pem, Duration::from_secs(3600)).await;
        let auth = authorizer(&sim, app);
        for _ in 0..5 {
            let error = auth.authorization().await.expect_err("wrong key");
            assert_eq!(error.error_code(), Some("invalid_client"));
            assert_eq!(error.kind(), crate::domain::outcome::ErrorKind::Okta);
        }
        assert_eq!(
            sim.token_requests().len(),
            1,
            "one request for five callers"
        );
        tokio::time::pause();
        tokio::time::advance(REFUSAL_HOLD + Duration::from_secs(1)).await;
        tokio::time::resume();
        let _ = auth.authorization().await.expect_err("still the wrong key");
        assert_eq!(sim.token_requests().len(), 2, "asked again after the hold");
    }

    fn source(sim: &OktaSim, app: ServiceApp) -> TokenSource {
        let Kind::OAuth(source) = authorizer(sim, app).0 else {
            unreachable!("a service app")
        };
        *source
    }

    #[tokio::test]
    async fn an_app_that_requires_dpop_gets_a_token_bound_to_the_ephemeral_key() {
        let (app, public_pem) = app(KeyKind::Rsa);
        let sim = sim_with_client(public_pem, Duration::from_secs(3600)).await;
        let source = source(&sim, app);
        let (authorization, ath) = source.current_token().await.expect("token");
        let errors: Vec<Option<String>> =
            sim.token_requests().into_iter().map(|r| r.error).collect();
        assert_eq!(
            errors,
            [
                Some("invalid_dpop_proof".to_owned()),
                Some("use_dpop_nonce".to_owned()),
                None
            ],
            "learns DPoP, then the nonce, each once"
        );
        let token = sim.issued_access_tokens().pop().expect("issued");
        assert_eq!(
            authorization.to_str().expect("ascii"),
            format!("DPoP {token}")
        );
        assert_eq!(ath, Some(dpop::access_token_hash(&token)));
        assert_eq!(
            sim.access_token_binding(&token).as_deref(),
            Some(source.dpop_key.thumbprint())
        );
        // The next token needs neither lesson again.
        assert!(source.forget_all().await);
        source.current_token().await.expect("token");
        assert_eq!(sim.token_requests().len(), 4);
        assert_eq!(sim.token_requests()[3].status, 200);
    }

    #[tokio::test]
    async fn an_app_without_dpop_is_served_bearer_tokens_as_before() {
        let (app, public_pem) = app(KeyKind::P256);
        let sim = sim_with_dpop(public_pem, Duration::from_secs(3600), false).await;
        let source = source(&sim, app);
        let url = Url::parse(&format!("{}/api/v1/users", sim.base_url())).expect("url");
        let credentials = source.credentials(&Method::GET, &url).await.expect("token");
        assert!(credentials.proof.is_none());
        let token = sim.issued_access_tokens().pop().expect("issued");
        assert_eq!(
            credentials.authorization.to_str().expect("ascii"),
            format!("Bearer {token}")
        );
        assert_eq!(sim.token_requests().len(), 1, "no proof, no extra request");
    }

    #[tokio::test]
    async fn a_stale_nonce_is_replaced_by_the_one_okta_sends() {
        let (app, public_pem) = app(KeyKind::Rsa);
        let sim = sim_with_client(public_pem, Duration::from_secs(3600)).await;
        let source = source(&sim, app);
        source.current_token().await.expect("token");
        // Two rotations: the nonce the client holds is no longer accepted.
        sim.rotate_dpop_nonces();
        sim.rotate_dpop_nonces();
        assert!(source.forget_all().await);
        source
            .current_token()
            .await
            .expect("renewed with the new nonce");
        let errors: Vec<Option<String>> = sim
            .token_requests()
            .into_iter()
            .skip(3)
            .map(|r| r.error)
            .collect();
        assert_eq!(errors, [Some("use_dpop_nonce".to_owned()), None]);
    }

    #[tokio::test]
    async fn an_unreachable_token_endpoint_is_transient() {
        let (app, _) = app(KeyKind::P256);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        let base =
            Url::parse(&format!("http://{}", listener.local_addr().expect("addr"))).expect("url");
        drop(listener);
        let auth = Authorizer::new(&base, &OktaAuth::ServiceApp(app), reqwest::Client::new())
            .expect("authorizer");
        let error = auth.authorization().await.expect_err("no token");
        assert_eq!(error.kind(), crate::domain::outcome::ErrorKind::Transient);
    }
}
