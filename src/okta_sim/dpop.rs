//! The fake's DPoP (RFC 9449) checks, as strict as a default Okta org: an API Services
//! app made in the Admin Console requires a proof at the token endpoint, the token
//! endpoint asks for its nonce first, and a DPoP-bound token is accepted at the API only
//! with a fresh proof by the same key.
//!
//! What Okta answers, and where that is known from:
//! - token endpoint: 400 `invalid_dpop_proof` "The DPoP proof JWT header is missing."
//!   (support.okta.com), 400 `use_dpop_nonce` with `DPoP-Nonce` (devforum.okta.com 30239;
//!   Okta renews the nonce daily and keeps the previous one valid, so the fake accepts
//!   the current and the previous nonce);
//! - API: a bad proof gets 400 with an empty body and a `DPoP … error="invalid_dpop_proof"`
//!   challenge (okta-sdk-nodejs #453, okta-sdk-dotnet #852); Okta compares `htu` with the
//!   percent-decoded request path (okta-sdk-python #541); a nonce demanded by the API is
//!   a 401 `use_dpop_nonce` challenge with `DPoP-Nonce` (RFC 9449 §9), which the fake
//!   asks for by default, being stricter than Okta is documented to be.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::state::random_token;

/// The response header with the nonce a server wants in the next proofs.
pub(super) const NONCE_HEADER: &str = "dpop-nonce";

/// How far back a proof's `iat` may lie, and how far ahead (clock skew).
const MAX_PROOF_AGE_SECS: u64 = 60;
const MAX_PROOF_SKEW_SECS: u64 = 5;
/// Past this many remembered proof ids, those too old to be accepted anyway are dropped.
const JTI_PRUNE_AT: usize = 50_000;

/// A server's nonce: the current one, and the one before it, still accepted.
#[derive(Debug, Clone)]
pub(super) struct Nonces {
    current: String,
    previous: Option<String>,
}

impl Nonces {
    fn new() -> Self {
        Nonces {
            current: random_token(32),
            previous: None,
        }
    }

    pub(super) fn current(&self) -> &str {
        &self.current
    }

    fn accepts(&self, nonce: &str) -> bool {
        nonce == self.current || self.previous.as_deref() == Some(nonce)
    }

    fn rotate(&mut self) {
        self.previous = Some(std::mem::replace(&mut self.current, random_token(32)));
    }
}

/// DPoP settings and memory of the fake.
#[derive(Debug)]
pub(super) struct DpopState {
    /// The service apps require DPoP (the Admin Console's default).
    pub(super) required: bool,
    /// The API asks for its own nonce in proofs.
    pub(super) api_nonce: bool,
    pub(super) token_nonces: Nonces,
    pub(super) api_nonces: Nonces,
    /// Proof ids already used, per key thumbprint, with their `iat`.
    used: HashMap<(String, String), u64>,
}

impl Default for DpopState {
    fn default() -> Self {
        DpopState {
            required: true,
            api_nonce: true,
            token_nonces: Nonces::new(),
            api_nonces: Nonces::new(),
            used: HashMap::new(),
        }
    }
}

impl DpopState {
    /// Both servers move to a new nonce; the one before stays valid.
    pub(super) fn rotate_nonces(&mut self) {
        self.token_nonces.rotate();
        self.api_nonces.rotate();
    }
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ProofError {
    /// No `DPoP` header.
    Missing,
    /// A proof Okta would refuse, with Okta's description.
    Invalid(String),
    /// A valid proof without the server's current nonce.
    UseNonce,
}

impl ProofError {
    /// The OAuth error code.
    pub(super) fn error(&self) -> &'static str {
        match self {
            ProofError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }

    /// Okta's description.
    pub(super) fn description(&self, at_token_endpoint: bool) -> String {
        match self {
            ProofError::Missing => "The DPoP proof JWT header is missing.".to_owned(),
            ProofError::Invalid(description) => description.clone(),
            ProofError::UseNonce if at_token_endpoint => {
                "Authorization server requires nonce in DPoP proof.".to_owned()
            }
            ProofError::UseNonce => "Resource server requires nonce in DPoP proof.".to_owned(),
        }
    }
}

/// What a proof must match.
pub(super) struct Expected<'a> {
    pub(super) method: &'a str,
    /// The request URL without query, its path percent-decoded.
    pub(super) htu: &'a str,
    /// `ath` of the access token sent with it (API requests).
    pub(super) ath: Option<&'a str>,
    /// The nonces to demand, if this server demands one.
    pub(super) nonces: Option<&'a Nonces>,
}

#[derive(Deserialize)]
struct ProofClaims {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    htm: Option<String>,
    #[serde(default)]
    htu: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

fn invalid(description: &str) -> ProofError {
    ProofError::Invalid(description.to_owned())
}

/// Checks the `DPoP` header values of a request; on success records the proof's `jti`
/// and returns the key's thumbprint (`jkt`).
///
/// # Errors
/// [`ProofError`] as Okta would refuse the proof.
pub(super) fn check(
    used: &mut DpopState,
    values: &[&str],
    expected: &Expected<'_>,
    now: u64,
) -> Result<String, ProofError> {
    let proof = match values {
        [] => return Err(ProofError::Missing),
        [one] => *one,
        _ => return Err(invalid("Multiple DPoP proof JWT headers are not allowed.")),
    };
    let parse_failure = || invalid("DPoP proof JWT cannot be parsed.");
    let header = jsonwebtoken::decode_header(proof).map_err(|_| parse_failure())?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(invalid(
            "The DPoP proof JWT 'typ' header must be 'dpop+jwt'.",
        ));
    }
    if !matches!(
        header.alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::ES256
            | Algorithm::ES384
    ) {
        return Err(invalid("The DPoP proof JWT 'alg' is not supported."));
    }
    let Some(jwk) = header.jwk.as_ref() else {
        return Err(invalid("The DPoP proof JWT 'jwk' header is missing."));
    };
    if jwk_has_private_members(proof) {
        return Err(invalid(
            "The DPoP proof JWT 'jwk' header must not contain a private key.",
        ));
    }
    if !matches!(
        jwk.algorithm,
        AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
    ) {
        return Err(invalid(
            "The DPoP proof JWT 'jwk' header is not an RSA or EC public key.",
        ));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| parse_failure())?;
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key, &validation)
        .map_err(|_| invalid("The DPoP proof JWT signature is invalid."))?
        .claims;
    if claims.htm.as_deref() != Some(expected.method) {
        return Err(invalid("'htm' claim in the DPoP proof JWT is invalid."));
    }
    if claims.htu.as_deref() != Some(expected.htu) {
        return Err(invalid("'htu' claim in the DPoP proof JWT is invalid."));
    }
    let Some(iat) = claims.iat else {
        return Err(invalid("'iat' claim in the DPoP proof JWT is missing."));
    };
    if iat + MAX_PROOF_AGE_SECS < now || iat > now + MAX_PROOF_SKEW_SECS {
        return Err(invalid("The DPoP proof JWT 'iat' is not recent enough."));
    }
    let Some(jti) = claims.jti.filter(|j| !j.is_empty()) else {
        return Err(invalid("'jti' claim in the DPoP proof JWT is missing."));
    };
    if let Some(ath) = expected.ath {
        match claims.ath.as_deref() {
            None => return Err(invalid("'ath' claim in the DPoP proof JWT is missing.")),
            Some(given) if given != ath => {
                return Err(invalid("'ath' claim in the DPoP proof JWT is invalid."))
            }
            Some(_) => {}
        }
    }
    if let Some(nonces) = expected.nonces {
        match claims.nonce.as_deref() {
            Some(nonce) if nonces.accepts(nonce) => {}
            // Missing or stale alike: the answer carries the current one.
            _ => return Err(ProofError::UseNonce),
        }
    }
    let jkt = jwk_thumbprint(jwk);
    if used.used.len() >= JTI_PRUNE_AT {
        used.used
            .retain(|_, seen| *seen + MAX_PROOF_AGE_SECS + MAX_PROOF_SKEW_SECS >= now);
    }
    // Recorded only for a proof that passed every other check, as Okta can only know a
    // replay by a signed proof.
    if used.used.insert((jkt.clone(), jti), iat).is_some() {
        return Err(invalid("The DPoP proof JWT 'jti' has already been used."));
    }
    Ok(jkt)
}

/// RFC 7638 thumbprint, base64url(SHA-256).
pub(super) fn jwk_thumbprint(jwk: &Jwk) -> String {
    jwk.thumbprint(ThumbprintHash::SHA256)
}

/// `ath` of an access token: base64url(SHA-256(token)).
pub(super) fn access_token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Whether the proof's `jwk` carries a private member (`d`, RSA's primes), which
/// `jsonwebtoken`'s `Jwk` would silently drop.
fn jwk_has_private_members(proof: &str) -> bool {
    let Some(encoded) = proof.split('.').next() else {
        return true;
    };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(encoded) else {
        return true;
    };
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return true;
    };
    ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|member| header["jwk"].get(member).is_some())
}

/// The `htu` a request must name: origin plus percent-decoded path, as Okta compares.
pub(super) fn expected_htu(host: &str, path: &str) -> String {
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    format!("http://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::okta::dpop::{access_token_hash as client_ath, DpopKey};
    use reqwest::{Method, Url};

    const NOW: u64 = 1_800_000_000;

    fn proof(key: &DpopKey, url: &str, ath: Option<&str>, nonce: Option<&str>, iat: u64) -> String {
        key.proof(
            &Method::GET,
            &Url::parse(url).expect("url"),
            ath,
            nonce,
            iat,
        )
        .expect("proof")
        .to_str()
        .expect("ascii")
        .to_owned()
    }

    fn expected<'a>(
        htu: &'a str,
        ath: Option<&'a str>,
        nonces: Option<&'a Nonces>,
    ) -> Expected<'a> {
        Expected {
            method: "GET",
            htu,
            ath,
            nonces,
        }
    }

    #[test]
    fn a_good_proof_passes_once_and_names_its_key() {
        let key = DpopKey::generate().expect("key");
        let mut state = DpopState::default();
        let ath = client_ath("oat1");
        let htu = expected_htu("o.test", "/api/v1/users/a%40b.com");
        let sent = proof(
            &key,
            "http://o.test/api/v1/users/a%40b.com?x=1",
            Some(&ath),
            None,
            NOW,
        );
        let jkt =
            check(&mut state, &[&sent], &expected(&htu, Some(&ath), None), NOW).expect("accepted");
        assert_eq!(jkt, key.thumbprint());
        assert_eq!(access_token_hash("oat1"), ath);
        assert_eq!(
            check(&mut state, &[&sent], &expected(&htu, Some(&ath), None), NOW),
            Err(invalid("The DPoP proof JWT 'jti' has already been used."))
        );
    }

    #[test]
    fn each_claim_is_checked() {
        let key = DpopKey::generate().expect("key");
        let mut state = DpopState::default();
        let ath = client_ath("oat1");
        let htu = "http://o.test/api/v1/users";
        let url = "http://o.test/api/v1/users";
        let refused = |state: &mut DpopState, sent: &str, exp: Expected<'_>| {
            check(state, &[sent], &exp, NOW).expect_err("refused")
        };
        assert_eq!(
            check(&mut state, &[], &expected(htu, None, None), NOW),
            Err(ProofError::Missing)
        );
        let no_ath = proof(&key, url, None, None, NOW);
        assert_eq!(
            refused(&mut state, &no_ath, expected(htu, Some(&ath), None)),
            invalid("'ath' claim in the DPoP proof JWT is missing.")
        );
        let other_ath = proof(&key, url, Some(&client_ath("oat2")), None, NOW);
        assert_eq!(
            refused(&mut state, &other_ath, expected(htu, Some(&ath), None)),
            invalid("'ath' claim in the DPoP proof JWT is invalid.")
        );
        let elsewhere = proof(&key, "http://o.test/api/v1/groups", Some(&ath), None, NOW);
        assert_eq!(
            refused(&mut state, &elsewhere, expected(htu, Some(&ath), None)),
            invalid("'htu' claim in the DPoP proof JWT is invalid.")
        );
        let good = proof(&key, url, Some(&ath), None, NOW);
        let post = Expected {
            method: "POST",
            ..expected(htu, Some(&ath), None)
        };
        assert_eq!(
            refused(&mut state, &good, post),
            invalid("'htm' claim in the DPoP proof JWT is invalid.")
        );
        let old = proof(&key, url, Some(&ath), None, NOW - 120);
        assert_eq!(
            refused(&mut state, &old, expected(htu, Some(&ath), None)),
            invalid("The DPoP proof JWT 'iat' is not recent enough.")
        );
        let mut tampered = good.clone();
        tampered.insert(tampered.len() - 4, 'A');
        tampered.truncate(good.len());
        assert!(matches!(
            refused(&mut state, &tampered, expected(htu, Some(&ath), None)),
            ProofError::Invalid(_)
        ));
        assert_eq!(
            check(
                &mut state,
                &[&good, &good],
                &expected(htu, Some(&ath), None),
                NOW
            ),
            Err(invalid("Multiple DPoP proof JWT headers are not allowed."))
        );
        // A plain JWT (no typ dpop+jwt) is not a proof.
        let plain = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"htm": "GET"}),
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .expect("jwt");
        assert_eq!(
            refused(&mut state, &plain, expected(htu, None, None)),
            invalid("The DPoP proof JWT 'typ' header must be 'dpop+jwt'.")
        );
    }

    #[test]
    fn a_nonce_is_demanded_and_the_previous_one_still_passes() {
        let key = DpopKey::generate().expect("key");
        let mut state = DpopState::default();
        let nonces = state.api_nonces.clone();
        let htu = "http://o.test/api/v1/users";
        let without = proof(&key, htu, None, None, NOW);
        assert_eq!(
            check(
                &mut state,
                &[&without],
                &expected(htu, None, Some(&nonces)),
                NOW
            ),
            Err(ProofError::UseNonce)
        );
        let first = nonces.current().to_owned();
        state.rotate_nonces();
        let nonces = state.api_nonces.clone();
        let with_previous = proof(&key, htu, None, Some(&first), NOW);
        assert!(check(
            &mut state,
            &[&with_previous],
            &expected(htu, None, Some(&nonces)),
            NOW
        )
        .is_ok());
        state.rotate_nonces();
        let nonces = state.api_nonces.clone();
        let stale = proof(&key, htu, None, Some(&first), NOW);
        assert_eq!(
            check(
                &mut state,
                &[&stale],
                &expected(htu, None, Some(&nonces)),
                NOW
            ),
            Err(ProofError::UseNonce)
        );
    }
}
