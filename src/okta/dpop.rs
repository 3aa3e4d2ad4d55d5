//! DPoP (RFC 9449) proofs for the OAuth service-app path.
//!
//! An API Services app made in Okta's Admin Console requires DPoP by default: its access
//! tokens are bound to a key the client holds, and every use of one must come with a
//! fresh proof signed by that key. This module owns that key and signs those proofs; it
//! also reads the DPoP parts of Okta's answers (`DPoP-Nonce`, the `DPoP` challenge in
//! `WWW-Authenticate`). Deciding *when* to send a proof is `auth`'s job.
//!
//! The key is an ephemeral P-256 key made when the client is built, not the app's own
//! key (see `docs/okta-dpop.md`): it never leaves memory, needs no registration with
//! Okta, and ES256 signs in microseconds where RS256 with the app's key costs far more
//! per request.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Url};
use serde::Serialize;
use std::fmt;

/// The response header carrying the nonce a server wants in the next proofs.
pub(crate) const DPOP_NONCE: &str = "dpop-nonce";

/// The request header carrying a proof.
pub(crate) const DPOP: &str = "dpop";

/// Why a DPoP key or proof could not be made. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error(
        "cannot generate the DPoP key (the system's random generator or the crypto library failed)"
    )]
    KeyGeneration,
    #[error("cannot sign a DPoP proof")]
    Signing,
}

/// The ephemeral ES256 key that DPoP-bound access tokens are bound to.
pub struct DpopKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// The proof's protected header, base64url: it is the same for every proof.
    encoded_header: String,
    /// RFC 7638 thumbprint of the public key, base64url(SHA-256): the `cnf.jkt` Okta binds.
    thumbprint: String,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("thumbprint", &self.thumbprint)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: String,
    htm: &'a str,
    htu: String,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl DpopKey {
    /// Makes a fresh P-256 key.
    ///
    /// # Errors
    /// [`DpopError::KeyGeneration`] when the crypto library cannot.
    pub fn generate() -> Result<Self, DpopError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| DpopError::KeyGeneration)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| DpopError::KeyGeneration)?;
        // An uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(DpopError::KeyGeneration);
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        // Members in lexicographic order and nothing else: this is also the RFC 7638
        // thumbprint input.
        let jwk = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(sha256(jwk.as_bytes()));
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#);
        Ok(Self {
            pair,
            rng,
            encoded_header: URL_SAFE_NO_PAD.encode(header),
            thumbprint,
        })
    }

    /// The key's RFC 7638 thumbprint (what a bound token's `cnf.jkt` names).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A proof for one request: `method` and `url` are the request's, `ath` is
    /// [`access_token_hash`] of the access token sent with it (none at the token
    /// endpoint), `nonce` the server's latest `DPoP-Nonce`, `now` Unix seconds.
    ///
    /// # Errors
    /// [`DpopError::Signing`] when the crypto library refuses (practically never).
    pub fn proof(
        &self,
        method: &Method,
        url: &Url,
        ath: Option<&str>,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<HeaderValue, DpopError> {
        let claims = ProofClaims {
            jti: new_jti(),
            htm: method.as_str(),
            htu: htu(url),
            iat: now,
            ath,
            nonce,
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| DpopError::Signing)?;
        let mut jws = String::with_capacity(self.encoded_header.len() + payload.len() * 2 + 90);
        jws.push_str(&self.encoded_header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
        let signature = self
            .pair
            .sign(&self.rng, jws.as_bytes())
            .map_err(|_| DpopError::Signing)?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        let mut value = HeaderValue::from_str(&jws).map_err(|_| DpopError::Signing)?;
        // Not a credential on its own (bound to one request, and to the token by `ath`),
        // but nothing gains from showing it.
        value.set_sensitive(true);
        Ok(value)
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// `ath`: base64url(SHA-256(access token)), binding a proof to the token sent with it.
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha256(access_token.as_bytes()))
}

/// The proof's `htu`: the request URL without query and fragment (RFC 9449 §4.2), with
/// the path percent-decoded, because Okta decodes the request path before comparing
/// (okta-sdk-python #541, okta-sdk-java #1526: `%40` in `htu` is refused).
pub fn htu(url: &Url) -> String {
    let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy();
    let mut htu = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        htu.push_str(&format!(":{port}"));
    }
    htu.push_str(&path);
    htu
}

/// The nonce a server asked for: a `DPoP-Nonce` header on an answer whose error (OAuth
/// body at the token endpoint, `WWW-Authenticate` challenge at the API) is
/// `use_dpop_nonce`. `None` when the answer is no such challenge.
pub(crate) fn nonce_challenge(headers: &HeaderMap) -> Option<String> {
    let challenged = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| challenge_errors(v).any(|e| e == "use_dpop_nonce"));
    challenged.then(|| nonce(headers)).flatten()
}

/// The `DPoP-Nonce` header of any answer, if there is one.
pub(crate) fn nonce(headers: &HeaderMap) -> Option<String> {
    headers
        .get(DPOP_NONCE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// What a `DPoP` challenge says went wrong (`error` and `error_description`), for the
/// operator; `None` without one.
pub(crate) fn problem(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.trim_start().starts_with("DPoP"))?;
    let error = auth_param(value, "error")?;
    let description = auth_param(value, "error_description").unwrap_or_default();
    Some(crate::domain::event::printable(&format!(
        "DPoP {error}: {description}"
    )))
}

/// Every `error="…"` value in a `WWW-Authenticate` value, which may hold a `Bearer` and a
/// `DPoP` challenge at once (RFC 9449 §7.2).
fn challenge_errors(value: &str) -> impl Iterator<Item = &str> {
    value
        .match_indices("error=\"")
        .filter_map(move |(at, needle)| {
            let preceded_ok = value[..at]
                .chars()
                .next_back()
                .is_none_or(|c| c == ',' || c.is_whitespace());
            let start = at + needle.len();
            let end = value[start..].find('"')? + start;
            preceded_ok.then(|| &value[start..end])
        })
}

/// A fresh, unpredictable `jti`: 128 random bits, hex. For DPoP proofs and for the
/// service app's client assertions alike.
pub(crate) fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The system generator failing is near impossible; uniqueness is what Okta
        // checks, and the clock plus a fast PRNG still gives it.
        let fallback = fastrand::u128(..) ^ u128::from(seconds_since_epoch());
        bytes = fallback.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn seconds_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The value of one `name="value"` parameter of a challenge; only a whole parameter
/// name matches (`scope`, not the `scopes` inside a description).
pub(crate) fn auth_param(challenge: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=\"");
    let mut from = 0;
    while let Some(found) = challenge[from..].find(&needle) {
        let start = from + found;
        let preceded_ok = challenge[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c == ',' || c.is_whitespace());
        let value_start = start + needle.len();
        if preceded_ok {
            let value_end = challenge[value_start..].find('"')? + value_start;
            return Some(challenge[value_start..value_end].to_owned());
        }
        from = value_start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    fn decode(proof: &HeaderValue) -> (jsonwebtoken::Header, serde_json::Value) {
        let text = proof.to_str().expect("ascii");
        let header = jsonwebtoken::decode_header(text).expect("header");
        let key = DecodingKey::from_jwk(header.jwk.as_ref().expect("jwk")).expect("key");
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<serde_json::Value>(text, &key, &validation)
            .expect("signature verifies with the key in the header")
            .claims;
        (header, claims)
    }

    #[test]
    fn a_proof_carries_what_rfc_9449_requires() {
        let key = DpopKey::generate().expect("key");
        let url =
            Url::parse("https://acme.okta.com/api/v1/users/a%20b@x.com?search=x#f").expect("url");
        let ath = access_token_hash("oat-token");
        let proof = key
            .proof(&Method::POST, &url, Some(&ath), Some("n-1"), 1_800_000_000)
            .expect("proof");
        assert!(proof.is_sensitive());
        let (header, claims) = decode(&proof);
        assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk = header.jwk.expect("jwk");
        assert_eq!(
            jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256),
            key.thumbprint()
        );
        assert_eq!(claims["htm"], "POST");
        assert_eq!(
            claims["htu"],
            "https://acme.okta.com/api/v1/users/a b@x.com"
        );
        assert_eq!(claims["iat"], 1_800_000_000u64);
        assert_eq!(claims["ath"], ath);
        assert_eq!(claims["nonce"], "n-1");
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
        // No private member in the header's key.
        let raw_header = proof
            .to_str()
            .expect("ascii")
            .split('.')
            .next()
            .expect("header");
        let raw: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(raw_header).expect("b64"))
                .expect("json");
        let members: Vec<&String> = raw["jwk"].as_object().expect("jwk").keys().collect();
        assert_eq!(members, ["crv", "kty", "x", "y"]);
    }

    #[test]
    fn proofs_without_token_or_nonce_leave_those_claims_out_and_never_repeat_a_jti() {
        let key = DpopKey::generate().expect("key");
        let url = Url::parse("http://127.0.0.1:8080/oauth2/v1/token").expect("url");
        let mut jtis = std::collections::HashSet::new();
        for _ in 0..200 {
            let proof = key
                .proof(&Method::POST, &url, None, None, 1)
                .expect("proof");
            let (_, claims) = decode(&proof);
            assert!(claims.get("ath").is_none() && claims.get("nonce").is_none());
            assert_eq!(claims["htu"], "http://127.0.0.1:8080/oauth2/v1/token");
            assert!(jtis.insert(claims["jti"].as_str().expect("jti").to_owned()));
        }
    }

    #[test]
    fn ath_is_base64url_sha256_of_the_token() {
        // RFC 9449 §7.1's example token and its hash.
        assert_eq!(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn the_key_does_not_show_in_debug() {
        let key = DpopKey::generate().expect("key");
        let shown = format!("{key:?}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(shown.contains(key.thumbprint()), "{shown}");
    }

    #[test]
    fn a_nonce_challenge_needs_the_error_and_the_nonce() {
        let mut headers = HeaderMap::new();
        headers.insert(DPOP_NONCE, HeaderValue::from_static("n-2"));
        assert_eq!(
            nonce_challenge(&headers),
            None,
            "a nonce alone is no challenge"
        );
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer error=\"invalid_token\", DPoP algs=\"ES256\", error=\"use_dpop_nonce\", error_description=\"Resource server requires nonce in DPoP proof\"",
            ),
        );
        assert_eq!(nonce_challenge(&headers).as_deref(), Some("n-2"));
        headers.remove(DPOP_NONCE);
        assert_eq!(nonce_challenge(&headers), None, "no nonce to retry with");
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "DPoP error=\"invalid_dpop_proof\", error_description=\"'htu' claim in the DPoP proof JWT is invalid.\"",
            ),
        );
        let problem = problem(&headers).expect("a DPoP problem");
        assert!(
            problem.starts_with("DPoP invalid_dpop_proof: "),
            "{problem}"
        );
        assert!(
            problem.contains("htu") && problem.contains("is invalid."),
            "{problem}"
        );
    }
}
