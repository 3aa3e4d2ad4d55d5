//! The fake's OAuth 2.0 service apps: `POST /oauth2/v1/token` for the client
//! credentials grant with `private_key_jwt`, the access tokens it issues, and the scope
//! each Management API operation needs.
//!
//! It is as strict as Okta where a client could go wrong: the assertion's signature is
//! checked against the public key registered for its client, as are its `aud` (the
//! token URL), `iss` = `sub` = client id, an `exp` at most an hour ahead, and a `jti`
//! never seen before; a scope the app was not granted is refused; an expired or unknown
//! access token gets 401 `E0000011`, and a token without an operation's scope gets 403
//! `E0000006` with the scope named in `WWW-Authenticate`, as Okta does.
//!
//! DPoP is checked here too, with the proof rules of [`super::dpop`]: by default the
//! apps require it, as one made in the Admin Console does; a proof, when sent, binds
//! the token to its key (`token_type: DPoP`), and such a token is then refused at the
//! API without a matching proof.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use super::dpop::{self, DpopState, Expected, ProofError};
use super::state::random_token;

/// What Okta allows as the longest life of a client assertion.
const MAX_ASSERTION_LIFETIME_SECS: u64 = 3600;
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A service app registered with the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOAuthClient {
    pub client_id: String,
    /// The app's public key, PEM (`-----BEGIN PUBLIC KEY-----`), RSA or P-256 EC.
    pub public_key_pem: String,
    /// The scopes granted to the app; a token request for any other is refused.
    pub scopes: Vec<String>,
}

/// One request to the token endpoint, for assertions in tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// The client the assertion claimed to be, when it could be read.
    pub client_id: Option<String>,
    pub status: u16,
    /// The OAuth error returned, if any.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
struct RegisteredClient {
    algorithm: Algorithm,
    key: DecodingKey,
    scopes: Vec<String>,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    scopes: Vec<String>,
    expires: Instant,
    /// The thumbprint of the key a DPoP-bound token is bound to (`cnf.jkt`).
    jkt: Option<String>,
}

/// Service apps, the tokens issued to them, and the assertion ids already used.
#[derive(Debug)]
pub(super) struct OAuthState {
    clients: HashMap<String, RegisteredClient>,
    tokens: HashMap<String, IssuedToken>,
    used_jtis: HashSet<(String, String)>,
    pub(super) lifetime: Duration,
    /// Every access token issued and every assertion received, so that tests can look
    /// for them where they must not be (logs).
    pub(super) issued: Vec<String>,
    pub(super) assertions: Vec<String>,
    pub(super) log: Vec<TokenRecord>,
    pub(super) dpop: DpopState,
}

impl Default for OAuthState {
    fn default() -> Self {
        OAuthState {
            clients: HashMap::new(),
            tokens: HashMap::new(),
            used_jtis: HashSet::new(),
            lifetime: Duration::from_secs(3600),
            issued: Vec::new(),
            assertions: Vec::new(),
            log: Vec::new(),
            dpop: DpopState::default(),
        }
    }
}

impl OAuthState {
    /// Registers (or replaces) a service app.
    ///
    /// # Errors
    /// When the public key is not an RSA or P-256 EC public key in PEM.
    pub(super) fn register(&mut self, client: &SimOAuthClient) -> Result<(), String> {
        let pem = client.public_key_pem.trim().as_bytes();
        let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, key)
        } else {
            return Err(format!(
                "the public key of {} is not an RSA or EC public key in PEM",
                client.client_id
            ));
        };
        self.clients.insert(
            client.client_id.clone(),
            RegisteredClient {
                algorithm,
                key,
                scopes: client.scopes.clone(),
            },
        );
        Ok(())
    }

    /// Makes every access token issued so far expired, as if their hour had passed.
    pub(super) fn expire_all(&mut self) {
        let now = Instant::now();
        for token in self.tokens.values_mut() {
            token.expires = now;
        }
    }

    /// The key thumbprint a valid access token is bound to (`None`: a Bearer token, or
    /// no valid token at all).
    pub(super) fn binding_of(&self, token: &str) -> Option<&str> {
        self.tokens
            .get(token)
            .filter(|t| Instant::now() < t.expires)
            .and_then(|t| t.jkt.as_deref())
    }

    /// The scopes of a valid access token; `None` when unknown or expired.
    pub(super) fn scopes_of(&self, token: &str) -> Option<&[String]> {
        self.tokens
            .get(token)
            .filter(|t| Instant::now() < t.expires)
            .map(|t| t.scopes.as_slice())
    }
}

/// The scope named when a token lacks it, and the scopes that allow an operation (a
/// `manage` scope includes `read`, as Okta documents). `None` for operations the fake
/// does not know, which its router answers with 404 anyway.
pub(super) fn required_scope(operation: &str) -> Option<(&'static str, &'static [&'static str])> {
    const USERS_READ: &[&str] = &["okta.users.read", "okta.users.manage"];
    const USERS_MANAGE: &[&str] = &["okta.users.manage"];
    const GROUPS_READ: &[&str] = &["okta.groups.read", "okta.groups.manage"];
    const GROUPS_MANAGE: &[&str] = &["okta.groups.manage"];
    Some(match operation {
        "listUsers" | "getUser" | "listUserGroups" => ("okta.users.read", USERS_READ),
        "createUser" | "updateUser" | "replaceUser" | "deleteUser" | "activateUser"
        | "deactivateUser" | "suspendUser" | "unsuspendUser" | "reactivateUser"
        | "revokeUserSessions" => ("okta.users.manage", USERS_MANAGE),
        "listGroups" | "getGroup" | "listGroupUsers" => ("okta.groups.read", GROUPS_READ),
        "addGroup" | "assignUserToGroup" | "unassignUserFromGroup" => {
            ("okta.groups.manage", GROUPS_MANAGE)
        }
        _ => return None,
    })
}

/// Okta's 403 for a token without the operation's scope: the `E0000006` body, and the
/// scope in the `WWW-Authenticate` challenge.
pub(super) fn insufficient_scope_response(scope: &str, path: &str) -> Response {
    let mut response = super::state::ApiError::no_permission().into_response();
    let challenge = format!(
        "Bearer authorization_uri=\"/oauth2/v1/authorize\", realm=\"IdpMgmt\", scope=\"{scope}\", error=\"insufficient_scope\", error_description=\"The access token provided does not contain the required scopes.\", resource=\"{}\"",
        path.replace('"', "")
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// An OAuth error answer.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// A `DPoP-Nonce` to send with the refusal.
    nonce: Option<String>,
}

impl OAuthError {
    fn invalid_client(description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: description.into(),
            nonce: None,
        }
    }

    fn bad_request(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            nonce: None,
        }
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
}

/// The answer to `POST /oauth2/v1/token`, given the service apps and tokens (the
/// route, in `routes`, holds the store's lock for it).
pub(super) fn token(oauth: &mut OAuthState, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let audience = format!("http://{host}/oauth2/v1/token");
    let proofs: Vec<&str> = headers
        .get_all("dpop")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if let Some(assertion) = form.get("client_assertion") {
        oauth.assertions.push(assertion.clone());
    }
    let mut client_id = None;
    let result = issue(oauth, &form, &audience, &proofs, &mut client_id);
    let (status, error) = match &result {
        Ok(_) => (200, None),
        Err(e) => (e.status.as_u16(), Some(e.error.to_owned())),
    };
    oauth.log.push(TokenRecord {
        client_id,
        status,
        error,
    });
    let mut response = match result {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(e) => {
            let mut response = (
                e.status,
                Json(json!({"error": e.error, "error_description": e.description})),
            )
                .into_response();
            if let Some(nonce) = e.nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                response.headers_mut().insert(dpop::NONCE_HEADER, nonce);
            }
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn issue(
    oauth: &mut OAuthState,
    form: &HashMap<String, String>,
    audience: &str,
    proofs: &[&str],
    client_id_seen: &mut Option<String>,
) -> Result<serde_json::Value, OAuthError> {
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    if field("grant_type") != Some("client_credentials") {
        return Err(OAuthError::bad_request(
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        ));
    }
    if field("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
        return Err(OAuthError::invalid_client(
            "The client_assertion_type is invalid; it must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
        ));
    }
    let Some(assertion) = field("client_assertion") else {
        return Err(OAuthError::invalid_client(
            "Client authentication failed. Either the client or the client credentials are invalid.",
        ));
    };
    let Some(scope) = field("scope") else {
        return Err(OAuthError::bad_request(
            "invalid_scope",
            "The authorization server resource does not have any configured default scopes, 'scope' must be provided.",
        ));
    };

    // Who the assertion says it is, before its signature can be checked with that
    // client's key; nothing read here is trusted until then.
    let malformed = || OAuthError::invalid_client("The client_assertion token is malformed.");
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    let unverified = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
        .map_err(|_| malformed())?
        .claims;
    let Some(client_id) = unverified.iss.clone() else {
        return Err(OAuthError::invalid_client(
            "The client_assertion token must have an 'iss' claim.",
        ));
    };
    *client_id_seen = Some(client_id.clone());
    if let Some(given) = field("client_id") {
        if given != client_id {
            return Err(OAuthError::invalid_client(
                "The client_id does not match the client_assertion's issuer.",
            ));
        }
    }
    let Some(client) = oauth.clients.get(&client_id).cloned() else {
        return Err(OAuthError::invalid_client(
            "Invalid value for 'client_id' parameter.",
        ));
    };
    if header.alg != client.algorithm {
        return Err(OAuthError::invalid_client(
            "The client_assertion signature is invalid.",
        ));
    }
    let mut validation = Validation::new(client.algorithm);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[client_id.as_str()]);
    validation.sub = Some(client_id.clone());
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.leeway = 5;
    let verified = jsonwebtoken::decode::<AssertionClaims>(assertion, &client.key, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            OAuthError::invalid_client(match e.kind() {
                K::InvalidSignature | K::InvalidAlgorithm | K::InvalidEcdsaKey
                | K::InvalidRsaKey(_) => "The client_assertion signature is invalid.".to_owned(),
                K::ExpiredSignature => "The client_assertion token is expired.".to_owned(),
                K::InvalidAudience => {
                    "The audience claim for client_assertion must be the endpoint invoking the client_assertion."
                        .to_owned()
                }
                K::InvalidIssuer | K::InvalidSubject => {
                    "The client_assertion token's 'iss' and 'sub' claims must both be the client_id."
                        .to_owned()
                }
                K::MissingRequiredClaim(claim) => {
                    format!("The client_assertion token must have a '{claim}' claim.")
                }
                _ => "The client_assertion token is malformed.".to_owned(),
            })
        })?
        .claims;
    let now = jsonwebtoken::get_current_timestamp();
    if verified.exp.unwrap_or(0) > now + MAX_ASSERTION_LIFETIME_SECS + validation.leeway {
        return Err(OAuthError::invalid_client(
            "The client_assertion token has an expiration too far in the future.",
        ));
    }
    let Some(jti) = verified.jti.filter(|j| !j.is_empty()) else {
        return Err(OAuthError::invalid_client(
            "The client_assertion token must have a 'jti' claim.",
        ));
    };
    // Recorded only now: a caller without the key cannot use up someone's jti.
    if !oauth.used_jtis.insert((client_id.clone(), jti)) {
        return Err(OAuthError::invalid_client(
            "The client_assertion token has already been used (its 'jti' was seen before).",
        ));
    }

    // The proof is checked after the assertion, whose `jti` is then used up: a client
    // must sign a new assertion for its retry with a nonce.
    let jkt = if oauth.dpop.required || !proofs.is_empty() {
        let nonces = oauth.dpop.token_nonces.clone();
        let expected = Expected {
            method: "POST",
            htu: audience,
            ath: None,
            nonces: Some(&nonces),
        };
        match dpop::check(&mut oauth.dpop, proofs, &expected, now) {
            Ok(jkt) => Some(jkt),
            Err(refusal) => {
                return Err(OAuthError {
                    status: StatusCode::BAD_REQUEST,
                    error: refusal.error(),
                    description: refusal.description(true),
                    nonce: (refusal == ProofError::UseNonce).then(|| nonces.current().to_owned()),
                })
            }
        }
    } else {
        None
    };

    let requested: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
    let refused: Vec<&str> = requested
        .iter()
        .filter(|s| !client.scopes.contains(s))
        .map(String::as_str)
        .collect();
    if !refused.is_empty() {
        return Err(OAuthError::bad_request(
            "invalid_scope",
            format!(
                "The following scopes are not allowed: [{}]",
                refused.join(", ")
            ),
        ));
    }
    let access_token = format!("oat{}", random_token(48));
    oauth.tokens.insert(
        access_token.clone(),
        IssuedToken {
            scopes: requested.clone(),
            expires: Instant::now() + oauth.lifetime,
            jkt: jkt.clone(),
        },
    );
    oauth.issued.push(access_token.clone());
    Ok(json!({
        "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
        "expires_in": oauth.lifetime.as_secs(),
        "access_token": access_token,
        "scope": requested.join(" "),
    }))
}

/// Okta's refusal of an API request for DPoP reasons: empty body, a `DPoP` challenge.
#[derive(Debug, Clone)]
pub(super) struct DpopRefusal {
    status: StatusCode,
    error: &'static str,
    description: String,
    nonce: Option<String>,
}

impl DpopRefusal {
    pub(super) fn into_response(self, path: &str) -> Response {
        let mut response = self.status.into_response();
        let challenge = format!(
            "DPoP algs=\"RS256 RS384 RS512 ES256 ES384 ES512\", realm=\"IdpMgmt\", error=\"{}\", error_description=\"{}\", resource=\"{}\"",
            self.error,
            self.description.replace('"', "'"),
            path.replace('"', "")
        );
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(nonce) = self.nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
            headers.insert(dpop::NONCE_HEADER, nonce);
        }
        response
    }
}

/// The DPoP rules of an `/api/` request with an access token: a DPoP-bound token only
/// with the `DPoP` scheme and a valid proof by its key for this request (with the
/// API's nonce when it asks for one); a Bearer token never with the `DPoP` scheme.
/// `None` lets the usual token check go on (an unknown or expired token gets its 401
/// `E0000011` there).
pub(super) fn dpop_refusal(
    oauth: &mut OAuthState,
    method: &str,
    host: &str,
    path: &str,
    headers: &HeaderMap,
) -> Option<DpopRefusal> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    let refuse = |status: StatusCode, error: &'static str, description: &str| DpopRefusal {
        status,
        error,
        description: description.to_owned(),
        nonce: None,
    };
    if let Some(token) = presented.strip_prefix("Bearer ") {
        // RFC 9449 §7.1: a DPoP-bound token is no Bearer token.
        return oauth.binding_of(token).map(|_| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "The access token is DPoP-bound; send it with the DPoP scheme and a DPoP proof.",
            )
        });
    }
    let token = presented.strip_prefix("DPoP ")?;
    oauth.scopes_of(token)?;
    let Some(bound) = oauth.binding_of(token).map(str::to_owned) else {
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token is not DPoP-bound.",
        ));
    };
    let proofs: Vec<&str> = headers
        .get_all("dpop")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let htu = dpop::expected_htu(host, path);
    let ath = dpop::access_token_hash(token);
    let nonces = oauth.dpop.api_nonce.then(|| oauth.dpop.api_nonces.clone());
    let expected = Expected {
        method,
        htu: &htu,
        ath: Some(&ath),
        nonces: nonces.as_ref(),
    };
    match dpop::check(
        &mut oauth.dpop,
        &proofs,
        &expected,
        jsonwebtoken::get_current_timestamp(),
    ) {
        Ok(jkt) if jkt == bound => None,
        Ok(_) => Some(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_dpop_proof",
            "The DPoP proof JWT key does not match the access token's binding.",
        )),
        Err(ProofError::UseNonce) => Some(DpopRefusal {
            status: StatusCode::UNAUTHORIZED,
            error: "use_dpop_nonce",
            description: ProofError::UseNonce.description(false),
            nonce: nonces.map(|n| n.current().to_owned()),
        }),
        Err(refusal) => Some(refuse(
            StatusCode::BAD_REQUEST,
            refusal.error(),
            &refusal.description(false),
        )),
    }
}

/// The kind of a generated key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048, for RS256.
    Rsa,
    /// EC P-256, for ES256.
    P256,
}

/// A generated key pair in PEM: the private key (PKCS#8) for the service, the public
/// key (SPKI) for the fake.
#[derive(Clone)]
pub struct TestKeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

impl std::fmt::Debug for TestKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKeyPair")
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

/// Generates a key pair for a fake service app (tests, local runs).
///
/// # Errors
/// When the system's random generator or the crypto library fails.
pub fn test_key_pair(kind: KeyKind) -> Result<TestKeyPair, aws_lc_rs::error::Unspecified> {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::signature::KeyPair as _;
    let (private_der, public_der): (Vec<u8>, PublicKeyX509Der<'static>) = match kind {
        KeyKind::Rsa => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)?;
            let private = pair.as_der()?.as_ref().to_vec();
            (private, pair.public_key().as_der()?)
        }
        KeyKind::P256 => {
            let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            )?;
            let private = pair.to_pkcs8v1()?.as_ref().to_vec();
            (private, pair.public_key().as_der()?)
        }
    };
    Ok(TestKeyPair {
        private_pem: pem::encode(&pem::Pem::new("PRIVATE KEY", private_der)),
        public_pem: pem::encode(&pem::Pem::new("PUBLIC KEY", public_der.as_ref().to_vec())),
    })
}
