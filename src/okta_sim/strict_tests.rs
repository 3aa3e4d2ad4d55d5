//! The fake is as strict as a default real org where a lenient fake would hide client
//! bugs (BEHAVIOUR.md, "What a lenient fake hides"): deactivated users are read-only,
//! activation sends an email, search lags writes, a login with `/` cannot be fetched by
//! login, and search compares ignoring case. Each has a switch for the other real
//! setting, tested here too.

use super::{GroupType, OktaSim, SimConfig, UserStatus};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

struct Org {
    sim: OktaSim,
    http: Client,
}

impl Org {
    async fn start(config: SimConfig) -> Org {
        Org {
            sim: OktaSim::start(config).await.expect("fake starts"),
            http: Client::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.sim.base_url()))
            .header("Authorization", format!("SSWS {}", self.sim.api_token()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answer");
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    fn deactivated(&self, login: &str) -> String {
        self.sim.create_user(
            json!({"login": login, "email": login, "firstName": "A", "lastName": "B"}),
            UserStatus::Deprovisioned,
        )
    }
}

fn strict() -> SimConfig {
    SimConfig::default()
}

fn lenient_edits() -> SimConfig {
    SimConfig {
        deactivated_profile_edits: true,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn a_deactivated_user_is_read_only_unless_the_org_allows_edits() {
    let org = Org::start(strict()).await;
    let user = org.deactivated("gone@example.com");
    let group = org.sim.create_group("Sales", GroupType::OktaGroup);
    let (status, body) = org
        .call(
            Method::POST,
            &format!("/api/v1/users/{user}"),
            Some(json!({"profile": {"title": "New"}})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &body["errorCode"]),
        (403, &json!("E0000038"))
    );
    let membership = format!("/api/v1/groups/{group}/users/{user}");
    let (status, body) = org.call(Method::PUT, &membership, None).await;
    assert_eq!(
        (status.as_u16(), &body["errorCode"]),
        (403, &json!("E0000038"))
    );
    org.sim.add_member(&group, &user);
    let (status, _) = org.call(Method::DELETE, &membership, None).await;
    assert_eq!(
        status.as_u16(),
        204,
        "removing a membership works in any status"
    );

    let org = Org::start(lenient_edits()).await;
    let user = org.deactivated("gone@example.com");
    let group = org.sim.create_group("Sales", GroupType::OktaGroup);
    let (status, _) = org
        .call(
            Method::POST,
            &format!("/api/v1/users/{user}"),
            Some(json!({"profile": {"title": "New"}})),
        )
        .await;
    assert_eq!(status.as_u16(), 200);
    let membership = format!("/api/v1/groups/{group}/users/{user}");
    assert_eq!(
        org.call(Method::PUT, &membership, None).await.0.as_u16(),
        204
    );
}

#[tokio::test]
async fn activation_emails_the_user_unless_told_not_to() {
    let org = Org::start(strict()).await;
    let mailed = org.deactivated("mailed@example.com");
    let silent = org.deactivated("silent@example.com");
    let (status, body) = org
        .call(
            Method::POST,
            &format!("/api/v1/users/{mailed}/lifecycle/activate"),
            None,
        )
        .await;
    assert_eq!((status.as_u16(), body), (200, json!({})));
    let (status, body) = org
        .call(
            Method::POST,
            &format!("/api/v1/users/{silent}/lifecycle/activate?sendEmail=false"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 200);
    assert!(body["activationUrl"].is_string(), "{body}");
    let emails = org.sim.emails_sent();
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].user_id, mailed);
    assert_eq!(
        (emails[0].kind, emails[0].operation),
        ("activation", "activateUser")
    );
    let (_, listed) = org.call(Method::GET, "/__sim/emails", None).await;
    assert_eq!(listed[0]["user_id"], mailed.as_str());
}

#[tokio::test]
async fn search_lags_a_created_user_while_get_user_does_not() {
    let org = Org::start(SimConfig {
        search_lag: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let profile = json!({"login": "new@example.com", "email": "new@example.com",
        "firstName": "N", "lastName": "U", "employeeNumber": "E-77"});
    let (status, created) = org
        .call(
            Method::POST,
            "/api/v1/users?activate=true",
            Some(json!({"profile": profile})),
        )
        .await;
    assert_eq!(status.as_u16(), 200);
    let search = "/api/v1/users?search=profile.employeeNumber%20eq%20%22E-77%22";
    assert_eq!(
        org.call(Method::GET, search, None).await.1,
        json!([]),
        "not indexed yet"
    );
    let (status, _) = org
        .call(Method::GET, "/api/v1/users/new@example.com", None)
        .await;
    assert_eq!(status.as_u16(), 200, "getUser is consistent");
    assert_eq!(
        org.sim.emails_sent().len(),
        1,
        "createUser?activate=true mails"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, found) = org.call(Method::GET, search, None).await;
        if found[0]["id"] == created["id"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never indexed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let org = Org::start(SimConfig {
        search_lag: Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    org.call(
        Method::POST,
        "/api/v1/users",
        Some(json!({"profile": profile})),
    )
    .await;
    let (_, found) = org.call(Method::GET, search, None).await;
    assert_eq!(
        found.as_array().map(Vec::len),
        Some(1),
        "no lag: found at once"
    );
}

#[tokio::test]
async fn a_login_with_a_slash_is_found_by_search_only_and_eq_ignores_case() {
    let org = Org::start(strict()).await;
    let login = "ops/ada@example.com";
    let id = org.sim.create_user(
        json!({"login": login, "email": "ada@example.com", "firstName": "A", "lastName": "L"}),
        UserStatus::Active,
    );
    let (status, body) = org
        .call(Method::GET, "/api/v1/users/ops%2Fada@example.com", None)
        .await;
    assert_eq!(
        (status.as_u16(), &body["errorCode"]),
        (404, &json!("E0000007"))
    );
    let (status, _) = org
        .call(Method::GET, "/api/v1/users/ops%5Bada%5D@example.com", None)
        .await;
    assert_eq!(status.as_u16(), 400);
    let (_, found) = org
        .call(
            Method::GET,
            "/api/v1/users?search=profile.login%20eq%20%22OPS%2FAda%40example.com%22",
            None,
        )
        .await;
    assert_eq!(found[0]["id"], id.as_str(), "eq ignores case: {found}");
    org.sim
        .create_group("Sales-App-Access", GroupType::OktaGroup);
    let (_, groups) = org
        .call(
            Method::GET,
            "/api/v1/groups?search=profile.name%20eq%20%22sales-app-access%22",
            None,
        )
        .await;
    assert_eq!(groups[0]["profile"]["name"], "Sales-App-Access");
}

#[tokio::test]
async fn the_admin_routes_switch_the_org_settings() {
    let org = Org::start(strict()).await;
    let (_, settings) = org
        .call(
            Method::POST,
            "/__sim/settings",
            Some(json!({"deactivated_profile_edits": true, "search_lag_ms": 0})),
        )
        .await;
    assert_eq!(settings["deactivated_profile_edits"], true);
    assert_eq!(settings["search_lag_ms"], 0);
    let user = org.deactivated("gone@example.com");
    let (status, _) = org
        .call(
            Method::POST,
            &format!("/api/v1/users/{user}"),
            Some(json!({"profile": {"title": "New"}})),
        )
        .await;
    assert_eq!(status.as_u16(), 200);
}
