//! Dry run (`DRY_RUN=true`): the client reads Okta as usual but never sends a request
//! that changes anything. Each changing call is answered here with what Okta would
//! have answered, as far as the service reads it, so the provisioner runs its normal
//! path and its report lists the actions it would have taken.
//!
//! Doing it at this one point — rather than in the provisioner — keeps the dry run
//! honest: the decisions, the reads and the group cache are the real ones.

use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

/// Prefix of the ids of users "created" in a dry run; such a user does not exist.
pub const SYNTHETIC_ID_PREFIX: &str = "dry-run-";

/// Whether an Okta user id was made up by a dry run.
pub fn is_synthetic_id(id: &str) -> bool {
    id.starts_with(SYNTHETIC_ID_PREFIX)
}

/// Whether a request would change Okta (and so is not sent in a dry run).
pub fn changes_okta(method: &Method) -> bool {
    method != Method::GET && method != Method::HEAD
}

/// The answer Okta would give to a changing request: status and JSON body.
pub fn synthetic_answer(operation: &str, url: &Url, body: Option<&Value>) -> (StatusCode, Vec<u8>) {
    let profile = body
        .and_then(|b| b.get("profile"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let answer = match operation {
        "createUser" => {
            let activate = url
                .query_pairs()
                .any(|(k, v)| k == "activate" && v != "false");
            json!({
                "id": format!("{SYNTHETIC_ID_PREFIX}{:016x}", fastrand::u64(..)),
                "status": if activate { "PROVISIONED" } else { "STAGED" },
                "profile": profile,
            })
        }
        "updateUser" => {
            // POST /api/v1/users/{id}: the id is the last path segment.
            let id = url
                .path_segments()
                .and_then(|mut s| s.next_back().map(str::to_owned))
                .unwrap_or_default();
            json!({ "id": id, "status": "ACTIVE", "profile": profile })
        }
        // Lifecycle, membership, sessions, delete: the service reads only success.
        _ => json!({}),
    };
    (StatusCode::OK, answer.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_create_answers_a_synthetic_user_with_the_requested_status() {
        let url = Url::parse("https://acme.okta.com/api/v1/users?activate=false").expect("url");
        let body = json!({"profile": {"login": "ada@example.com"}});
        let (status, bytes) = synthetic_answer("createUser", &url, Some(&body));
        assert_eq!(status, StatusCode::OK);
        let user: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(user["status"], "STAGED");
        assert_eq!(user["profile"]["login"], "ada@example.com");
        assert!(is_synthetic_id(user["id"].as_str().expect("id")));
    }

    #[test]
    fn only_reads_are_sent() {
        assert!(!changes_okta(&Method::GET));
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            assert!(changes_okta(&method));
        }
    }
}
