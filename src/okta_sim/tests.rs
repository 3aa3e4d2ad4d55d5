//! The fake exercised over real HTTP, as the service's client will use it.

use std::time::Duration;

use reqwest::{Client, Method, Response};
use serde_json::{json, Value};

use super::*;

struct Harness {
    sim: OktaSim,
    http: Client,
}

impl Harness {
    async fn start(config: SimConfig) -> Harness {
        Harness {
            sim: OktaSim::start(config).await.unwrap(),
            http: Client::new(),
        }
    }

    async fn new() -> Harness {
        Harness::start(SimConfig::default()).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self
            .http
            .request(method, self.url(path))
            .header("Authorization", format!("SSWS {}", self.sim.api_token()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> Response {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn create(&self, login: &str, query: &str) -> Value {
        let response = self
            .post(&format!("/api/v1/users{query}"), profile(login))
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

fn profile(login: &str) -> Value {
    json!({"profile": {"login": login, "email": login, "firstName": "Ada", "lastName": "Lovelace"}})
}

/// Asserts an Okta error answer and returns its body.
async fn expect_error(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-okta-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], code, "{body}");
    assert_eq!(body["errorLink"], code);
    assert!(body["errorId"].as_str().unwrap().starts_with("oae"));
    assert!(body["errorSummary"].is_string());
    assert!(body["errorCauses"].is_array());
    body
}

fn ids(users: &Value) -> Vec<String> {
    let mut ids: Vec<String> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn create_user_sets_status_from_activate_and_password() {
    let h = Harness::new().await;
    let user = h.create("ada@example.com", "?activate=true").await;
    assert_eq!(user["status"], "PROVISIONED");
    let id = user["id"].as_str().unwrap();
    assert!(id.starts_with("00u") && id.len() == 20);
    let created = user["created"].as_str().unwrap();
    assert_eq!(created.len(), 24, "{created}");
    assert!(created.ends_with('Z'));
    assert!(user["activated"].is_string() && user["lastLogin"].is_null());
    assert_eq!(user["credentials"]["provider"]["type"], "OKTA");
    assert!(user["_links"]["self"]["href"]
        .as_str()
        .unwrap()
        .ends_with(id));
    assert_eq!(
        h.create("bob@example.com", "").await["status"],
        "PROVISIONED"
    );
    let staged = h.create("cy@example.com", "?activate=false").await;
    assert_eq!(staged["status"], "STAGED");
    assert!(staged["activated"].is_null());
    let mut body = profile("dee@example.com");
    body["credentials"] = json!({"password": {"value": "s3cret!Pass"}});
    let active: Value = h
        .post("/api/v1/users?activate=true", body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(active["status"], "ACTIVE");
    assert_eq!(
        h.sim.user("ADA@example.com").unwrap().status,
        UserStatus::Provisioned
    );
}

#[tokio::test]
async fn duplicate_login_ignores_case() {
    let h = Harness::new().await;
    h.create("ada@example.com", "").await;
    let response = h.post("/api/v1/users", profile("ADA@Example.com")).await;
    let body = expect_error(response, 400, "E0000001").await;
    assert_eq!(body["errorSummary"], "Api validation failed: login");
    assert_eq!(
        body["errorCauses"],
        json!([{"errorSummary": "login: An object with this field already exists in the current organization"}])
    );
}

#[tokio::test]
async fn create_user_validates_like_okta() {
    let h = Harness::new().await;
    let body = expect_error(
        h.post("/api/v1/users", json!({"profile": {"login": "a@b.co"}}))
            .await,
        400,
        "E0000001",
    )
    .await;
    assert_eq!(body["errorCauses"].as_array().unwrap().len(), 3, "{body}");
    let mut bad_login = profile("not-an-email");
    expect_error(
        h.post("/api/v1/users", bad_login.clone()).await,
        400,
        "E0000001",
    )
    .await;
    bad_login["profile"]["login"] = json!("a@b");
    expect_error(h.post("/api/v1/users", bad_login).await, 400, "E0000001").await;
    let mut long_name = profile("ada@example.com");
    long_name["profile"]["firstName"] = json!("x".repeat(51));
    expect_error(h.post("/api/v1/users", long_name).await, 400, "E0000001").await;
    let mut unknown = profile("ada@example.com");
    unknown["profile"]["favouriteColour"] = json!("blue");
    expect_error(h.post("/api/v1/users", unknown).await, 400, "E0000001").await;

    let mut too_many = profile("ada@example.com");
    too_many["groupIds"] = json!((0..21).map(|i| format!("00g{i:017}")).collect::<Vec<_>>());
    expect_error(h.post("/api/v1/users", too_many).await, 400, "E0000093").await;
    let mut unknown_group = profile("ada@example.com");
    unknown_group["groupIds"] = json!(["00gDOESNOTEXIST000000"]);
    let body = expect_error(
        h.post("/api/v1/users", unknown_group).await,
        400,
        "E0000001",
    )
    .await;
    assert!(body["errorCauses"][0]["errorSummary"]
        .as_str()
        .unwrap()
        .contains("groupIds"));

    let raw = h
        .http
        .post(h.url("/api/v1/users"))
        .header("Authorization", format!("SSWS {}", h.sim.api_token()));
    expect_error(raw.body("{not json").send().await.unwrap(), 400, "E0000003").await;
    assert!(h.sim.users().is_empty());

    let sales = h.sim.create_group("Sales", GroupType::OktaGroup);
    let mut with_group = profile("ada@example.com");
    with_group["groupIds"] = json!([sales]);
    h.post("/api/v1/users", with_group).await;
    let id = h.sim.user("ada@example.com").unwrap().id;
    assert_eq!(h.sim.user_group_names(&id), vec!["Sales"]);
}

#[tokio::test]
async fn get_and_update_user() {
    let h = Harness::new().await;
    let id = h.create("o'brien+x@example.com", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_login: Value = h
        .get("/api/v1/users/O'Brien%2Bx%40example.com")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_login["id"], id);
    let body = expect_error(
        h.get("/api/v1/users/nobody@example.com").await,
        404,
        "E0000007",
    )
    .await;
    assert_eq!(
        body["errorSummary"],
        "Not found: Resource not found: nobody@example.com (User)"
    );

    let updated: Value = h
        .post(
            &format!("/api/v1/users/{id}"),
            json!({"profile": {"department": "R&D"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["profile"]["department"], "R&D");
    assert_eq!(updated["profile"]["firstName"], "Ada");
    let cleared = h
        .post(
            &format!("/api/v1/users/{id}"),
            json!({"profile": {"firstName": ""}}),
        )
        .await;
    expect_error(cleared, 400, "E0000001").await;
    let replaced = h
        .call(
            Method::PUT,
            &format!("/api/v1/users/{id}"),
            Some(json!({"profile": {"login": "z@example.com"}})),
        )
        .await;
    expect_error(replaced, 400, "E0000001").await;
    h.create("taken@example.com", "").await;
    let clash = h
        .post(
            &format!("/api/v1/users/{id}"),
            json!({"profile": {"login": "TAKEN@example.com"}}),
        )
        .await;
    expect_error(clash, 400, "E0000001").await;
}

#[tokio::test]
async fn lifecycle_transitions_follow_okta_rules() {
    use UserStatus::*;
    let h = Harness::new().await;
    let cases: &[(UserStatus, &str, u16, Option<&str>, UserStatus)] = &[
        (Staged, "activate", 200, None, Provisioned),
        (Deprovisioned, "activate", 200, None, Provisioned),
        (Active, "activate", 403, Some("E0000016"), Active),
        (Provisioned, "activate", 403, Some("E0000016"), Provisioned),
        (Suspended, "activate", 403, Some("E0000016"), Suspended),
        (Active, "deactivate", 200, None, Deprovisioned),
        (Staged, "deactivate", 200, None, Deprovisioned),
        (Suspended, "deactivate", 200, None, Deprovisioned),
        (
            Deprovisioned,
            "deactivate",
            404,
            Some("E0000007"),
            Deprovisioned,
        ),
        (Active, "suspend", 200, None, Suspended),
        (Provisioned, "suspend", 400, Some("E0000001"), Provisioned),
        (Suspended, "suspend", 400, Some("E0000001"), Suspended),
        (Suspended, "unsuspend", 200, None, Active),
        (Active, "unsuspend", 400, Some("E0000001"), Active),
        (
            Deprovisioned,
            "unsuspend",
            400,
            Some("E0000001"),
            Deprovisioned,
        ),
        (Provisioned, "reactivate", 200, None, Provisioned),
        (Active, "reactivate", 403, Some("E0000038"), Active),
    ];
    for (i, (from, action, status, code, to)) in cases.iter().enumerate() {
        let id = h.sim.create_user(
            profile(&format!("u{i}@example.com"))["profile"].clone(),
            *from,
        );
        let before = h.sim.user(&id).unwrap().status_changed;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let response = h
            .post(
                &format!("/api/v1/users/{id}/lifecycle/{action}?sendEmail=false"),
                json!({}),
            )
            .await;
        match code {
            Some(code) => {
                expect_error(response, *status, code).await;
            }
            None => assert_eq!(response.status(), *status, "{from:?} {action}"),
        }
        let after = h.sim.user(&id).unwrap();
        assert_eq!(after.status, *to, "{from:?} {action}");
        assert_eq!(
            after.status_changed > before,
            code.is_none(),
            "{from:?} {action}"
        );
    }
    let id = h
        .sim
        .create_user(profile("tok@example.com")["profile"].clone(), Staged);
    let token: Value = h
        .post(
            &format!("/api/v1/users/{id}/lifecycle/activate?sendEmail=false"),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(token["activationToken"].is_string());
    let unknown = h
        .post("/api/v1/users/00uNOPE/lifecycle/deactivate", json!({}))
        .await;
    expect_error(unknown, 404, "E0000007").await;
}

#[tokio::test]
async fn deactivate_twice_and_delete_twice() {
    let h = Harness::new().await;
    let id = h.create("ada@example.com", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = h.sim.create_group("Sales", GroupType::OktaGroup);
    assert!(h.sim.add_member(&group, &id));
    let path = format!("/api/v1/users/{id}/lifecycle/deactivate");
    assert_eq!(h.post(&path, json!({})).await.status(), 200);
    expect_error(h.post(&path, json!({})).await, 404, "E0000007").await;
    assert_eq!(
        h.sim.user_group_names(&id),
        vec!["Sales"],
        "memberships survive deactivation"
    );

    let other = h.create("bob@example.com", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user_path = format!("/api/v1/users/{other}");
    assert_eq!(h.call(Method::DELETE, &user_path, None).await.status(), 204);
    assert_eq!(
        h.sim.user(&other).unwrap().status,
        UserStatus::Deprovisioned
    );
    assert_eq!(h.call(Method::DELETE, &user_path, None).await.status(), 204);
    assert!(h.sim.user(&other).is_none());
    expect_error(h.get(&user_path).await, 404, "E0000007").await;
    expect_error(
        h.call(Method::DELETE, &user_path, None).await,
        404,
        "E0000007",
    )
    .await;
}

#[tokio::test]
async fn sessions_are_counted() {
    let h = Harness::new().await;
    let id = h.create("ada@example.com", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/users/{id}/sessions?oauthTokens=true");
    assert_eq!(h.call(Method::DELETE, &path, None).await.status(), 204);
    assert_eq!(h.call(Method::DELETE, &path, None).await.status(), 204);
    assert_eq!(h.sim.user(&id).unwrap().sessions_revoked, 2);
}

#[tokio::test]
async fn group_search_is_exact_and_q_is_prefix() {
    let h = Harness::start(SimConfig {
        groups: vec!["Sales".into(), "Sales-Ops".into(), "Engineering".into()],
        ..SimConfig::default()
    })
    .await;
    let exact: Value = h
        .get("/api/v1/groups?search=profile.name%20eq%20%22Sales%22")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(exact.as_array().unwrap().len(), 1);
    assert_eq!(exact[0]["profile"]["name"], "Sales");
    assert_eq!(exact[0]["type"], "OKTA_GROUP");
    assert_eq!(exact[0]["objectClass"], json!(["okta:user_group"]));
    assert!(exact[0]["id"].as_str().unwrap().starts_with("00g"));
    let prefix: Value = h.get("/api/v1/groups?q=Sales").await.json().await.unwrap();
    assert_eq!(prefix.as_array().unwrap().len(), 2);
    let by_type: Value = h
        .get("/api/v1/groups?search=type+eq+%22OKTA_GROUP%22")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_type.as_array().unwrap().len(), 3);
    expect_error(
        h.get("/api/v1/groups?search=profile.name%20eq%20Sales")
            .await,
        400,
        "E0000031",
    )
    .await;
    expect_error(
        h.get("/api/v1/groups?filter=profile.name%20eq%20%22Sales%22")
            .await,
        400,
        "E0000031",
    )
    .await;
    let id = h.sim.group_id("Sales").unwrap();
    let group: Value = h
        .get(&format!("/api/v1/groups/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(group["id"], id.as_str());
    expect_error(h.get("/api/v1/groups/00gNOPE").await, 404, "E0000007").await;
}

#[tokio::test]
async fn memberships_follow_group_type() {
    let h = Harness::new().await;
    let user = h.create("ada@example.com", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sales = h.sim.create_group("Sales", GroupType::OktaGroup);
    let app = h.sim.create_group("AD-Users", GroupType::AppGroup);
    let everyone = h.sim.create_group("Everyone", GroupType::BuiltIn);
    let path = format!("/api/v1/groups/{sales}/users/{user}");
    assert_eq!(h.call(Method::PUT, &path, None).await.status(), 204);
    assert_eq!(h.call(Method::PUT, &path, None).await.status(), 204);
    for group in [&app, &everyone] {
        let put = h
            .call(
                Method::PUT,
                &format!("/api/v1/groups/{group}/users/{user}"),
                None,
            )
            .await;
        expect_error(put, 403, "E0000006").await;
    }
    h.sim.add_member(&app, &user);
    let removal = h
        .call(
            Method::DELETE,
            &format!("/api/v1/groups/{app}/users/{user}"),
            None,
        )
        .await;
    expect_error(removal, 403, "E0000006").await;
    expect_error(
        h.call(
            Method::PUT,
            &format!("/api/v1/groups/00gNOPE/users/{user}"),
            None,
        )
        .await,
        404,
        "E0000007",
    )
    .await;
    expect_error(
        h.call(
            Method::PUT,
            &format!("/api/v1/groups/{sales}/users/00uNOPE"),
            None,
        )
        .await,
        404,
        "E0000007",
    )
    .await;

    let groups: Value = h
        .get(&format!("/api/v1/users/{user}/groups"))
        .await
        .json()
        .await
        .unwrap();
    let mut names: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["profile"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["AD-Users", "Sales"]);
    let members: Value = h
        .get(&format!("/api/v1/groups/{sales}/users"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(members[0]["id"], user.as_str());
    assert_eq!(h.call(Method::DELETE, &path, None).await.status(), 204);
    assert_eq!(h.call(Method::DELETE, &path, None).await.status(), 204);
    assert_eq!(h.sim.user_group_names(&user), vec!["AD-Users"]);
}

#[tokio::test]
async fn search_escaping_never_widens() {
    let h = Harness::new().await;
    let tricky = r#"E-1" or id sw "00u"#;
    let mut p = profile("tricky@example.com")["profile"].clone();
    p["employeeNumber"] = json!(tricky);
    let tricky_id = h.sim.create_user(p, UserStatus::Active);
    let mut p = profile("plain@example.com")["profile"].clone();
    p["employeeNumber"] = json!("E-1");
    let plain_id = h.sim.create_user(p, UserStatus::Active);

    let escaped = r#"profile.employeeNumber eq "E-1\" or id sw \"00u""#;
    let found: Value = h
        .http
        .get(h.url("/api/v1/users"))
        .query(&[("search", escaped)])
        .header("Authorization", format!("SSWS {}", h.sim.api_token()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&found), vec![tricky_id]);
    // The careless, unescaped form means something else entirely, and the fake says so.
    let careless = format!("profile.employeeNumber eq \"{tricky}\"");
    let widened: Value = h
        .http
        .get(h.url("/api/v1/users"))
        .query(&[("search", careless.as_str())])
        .header("Authorization", format!("SSWS {}", h.sim.api_token()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ids(&widened).contains(&plain_id));
}

#[tokio::test]
async fn search_sees_deactivated_users_but_q_and_list_do_not() {
    let h = Harness::new().await;
    let gone = h.sim.create_user(
        profile("ada@example.com")["profile"].clone(),
        UserStatus::Deprovisioned,
    );
    let here = h.sim.create_user(
        profile("adam@example.com")["profile"].clone(),
        UserStatus::Active,
    );
    let search: Value = h
        .get("/api/v1/users?search=profile.login%20eq%20%22ADA%40example.com%22")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&search), vec![gone.clone()]);
    let filter: Value = h
        .get("/api/v1/users?filter=status%20eq%20%22DEPROVISIONED%22")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&filter), vec![gone.clone()]);
    let q: Value = h.get("/api/v1/users?q=ada").await.json().await.unwrap();
    assert_eq!(ids(&q), vec![here.clone()]);
    let all: Value = h.get("/api/v1/users").await.json().await.unwrap();
    assert_eq!(ids(&all), vec![here]);
    let combined = "/api/v1/users?search=(status%20eq%20%22ACTIVE%22%20or%20status%20eq%20%22DEPROVISIONED%22)%20and%20profile.firstName%20sw%20%22ad%22";
    let both: Value = h.get(combined).await.json().await.unwrap();
    assert_eq!(both.as_array().unwrap().len(), 2);
    expect_error(
        h.get("/api/v1/users?search=profile.login%20eq%20%22x")
            .await,
        400,
        "E0000031",
    )
    .await;
    expect_error(
        h.get("/api/v1/users?filter=profile.employeeNumber%20eq%20%22E1%22")
            .await,
        400,
        "E0000031",
    )
    .await;
}

#[tokio::test]
async fn pagination_follows_link_until_none() {
    // Pages, not the search index's lag, are under test.
    let h = Harness::start(SimConfig {
        search_lag: std::time::Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            h.create(&format!("user{i}@example.com"), "").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut next = Some(h.url("/api/v1/users?limit=2&search=status%20eq%20%22PROVISIONED%22"));
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(url) = next.take() {
        let response = h
            .http
            .get(&url)
            .header("Authorization", format!("SSWS {}", h.sim.api_token()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let links: Vec<String> = response
            .headers()
            .get_all("link")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert!(
            links.iter().any(|l| l.ends_with("rel=\"self\"")),
            "{links:?}"
        );
        next = links.iter().find(|l| l.ends_with("rel=\"next\"")).map(|l| {
            l.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap()
                .to_owned()
        });
        let page: Value = response.json().await.unwrap();
        assert!(page.as_array().unwrap().len() <= 2);
        seen.extend(ids(&page));
        pages += 1;
    }
    assert_eq!(pages, 3);
    seen.sort();
    created.sort();
    assert_eq!(seen, created);
    expect_error(h.get("/api/v1/users?after=garbage").await, 400, "E0000001").await;
}

#[tokio::test]
async fn requires_the_api_token() {
    let h = Harness::new().await;
    let none = h.http.get(h.url("/api/v1/users")).send().await.unwrap();
    assert!(none.headers().contains_key("x-rate-limit-limit"));
    assert!(none.headers().contains_key("date"));
    let body = expect_error(none, 401, "E0000011").await;
    assert_eq!(body["errorSummary"], "Invalid token provided");
    let wrong = h
        .http
        .get(h.url("/api/v1/users"))
        .header("Authorization", "SSWS wrong")
        .send()
        .await
        .unwrap();
    expect_error(wrong, 401, "E0000011").await;
    let bearer = h
        .http
        .get(h.url("/api/v1/users"))
        .bearer_auth(h.sim.api_token())
        .send()
        .await
        .unwrap();
    expect_error(bearer, 401, "E0000011").await;
    let unknown = h.get("/api/v1/nothing-here").await;
    expect_error(unknown, 404, "E0000007").await;
    let outside = h.http.get(h.url("/elsewhere")).send().await.unwrap();
    assert!(outside.headers().contains_key("x-okta-request-id"));
}

#[tokio::test]
async fn request_ids_are_unique() {
    let h = Harness::new().await;
    let a = h.get("/api/v1/users").await.headers()["x-okta-request-id"].clone();
    let b = h.get("/api/v1/users").await.headers()["x-okta-request-id"].clone();
    assert_ne!(a, b);
}

#[tokio::test]
async fn rate_limit_per_bucket_then_429_until_reset() {
    let h = Harness::start(SimConfig {
        rate_limit: Some(RateLimit::uniform(3, Duration::from_millis(700))),
        ..SimConfig::default()
    })
    .await;
    let first = h.get("/api/v1/users").await;
    let header =
        |r: &Response, name: &str| r.headers()[name].to_str().unwrap().parse::<i64>().unwrap();
    assert_eq!(header(&first, "x-rate-limit-limit"), 3);
    assert_eq!(header(&first, "x-rate-limit-remaining"), 2);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now..=now + 2).contains(&header(&first, "x-rate-limit-reset")));
    h.get("/api/v1/users").await;
    h.get("/api/v1/users").await;
    let limited = h.get("/api/v1/users").await;
    assert_eq!(header(&limited, "x-rate-limit-remaining"), 0);
    let body = expect_error(limited, 429, "E0000047").await;
    assert_eq!(
        body["errorSummary"],
        "API call exceeded rate limit due to too many requests."
    );
    assert_eq!(
        h.get("/api/v1/groups").await.status(),
        200,
        "groups have their own bucket"
    );
    assert_ne!(
        h.get("/api/v1/users/someone@example.com").await.status(),
        429,
        "getUser has its own bucket"
    );
    assert_eq!(h.sim.rate_limited_count(), 1);
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_eq!(h.get("/api/v1/users").await.status(), 200);
    h.sim.set_rate_limit(None);
    for _ in 0..5 {
        assert_eq!(h.get("/api/v1/users").await.status(), 200);
    }
}

#[test]
fn requests_count_in_okta_endpoint_buckets() {
    let cases = [
        (Method::GET, "/api/v1/users", SimBucket::Users),
        (Method::POST, "/api/v1/users", SimBucket::Users),
        (Method::GET, "/api/v1/users/00u1", SimBucket::UserById),
        (Method::POST, "/api/v1/users/00u1", SimBucket::UserWrites),
        (Method::DELETE, "/api/v1/users/00u1", SimBucket::UserWrites),
        (
            Method::POST,
            "/api/v1/users/00u1/lifecycle/deactivate",
            SimBucket::Other,
        ),
        (
            Method::DELETE,
            "/api/v1/users/00u1/sessions",
            SimBucket::Other,
        ),
        (Method::GET, "/api/v1/users/00u1/groups", SimBucket::Other),
        (Method::GET, "/api/v1/groups", SimBucket::Groups),
        (Method::GET, "/api/v1/groups/00g1", SimBucket::GroupById),
        (
            Method::PUT,
            "/api/v1/groups/00g1/users/00u1",
            SimBucket::GroupById,
        ),
    ];
    for (method, path, bucket) in cases {
        assert_eq!(SimBucket::of(&method, path), bucket, "{method} {path}");
    }
}

#[tokio::test]
async fn a_workforce_orgs_limits_and_concurrency_limit_are_the_default() {
    let config = SimConfig::default();
    assert_eq!(config.concurrency_limit, Some(75));
    let h = Harness::start(config).await;
    for (path, limit) in [
        ("/api/v1/users", "600"),
        ("/api/v1/users/nobody", "2000"),
        ("/api/v1/users/nobody/groups", "1200"),
        ("/api/v1/groups", "500"),
        ("/api/v1/groups/00gnone", "1000"),
    ] {
        let response = h.get(path).await;
        assert_eq!(response.headers()["x-rate-limit-limit"], limit, "{path}");
        let reset: i64 = response.headers()["x-rate-limit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now + 58..=now + 61).contains(&reset), "a minute's window");
    }
    let users = h.sim.bucket(SimBucket::Users).expect("a window runs");
    assert_eq!((users.used, users.remaining), (1, 599));
    assert_eq!(h.sim.bucket(SimBucket::UserWrites), None, "not used yet");
}

#[tokio::test]
async fn an_empty_create_bucket_leaves_a_leavers_endpoints_open() {
    let h = Harness::start(SimConfig {
        rate_limit: Some(RateLimit::workforce().with_limit(SimBucket::Users, 1)),
        ..SimConfig::default()
    })
    .await;
    let id = h.sim.create_user(
        json!({"login": "leaver@example.com", "email": "leaver@example.com"}),
        UserStatus::Active,
    );
    h.get("/api/v1/users").await;
    expect_error(h.get("/api/v1/users").await, 429, "E0000047").await;
    assert_eq!(h.sim.bucket(SimBucket::Users).map(|b| b.remaining), Some(0));
    assert_eq!(h.get(&format!("/api/v1/users/{id}")).await.status(), 200);
    let revoke = h
        .call(
            Method::DELETE,
            &format!("/api/v1/users/{id}/sessions"),
            None,
        )
        .await;
    assert_eq!(revoke.status(), 204);
    let deactivate = h
        .call(
            Method::POST,
            &format!("/api/v1/users/{id}/lifecycle/deactivate"),
            None,
        )
        .await;
    assert_eq!(deactivate.status(), 200);
}

#[tokio::test]
async fn concurrency_limit_answers_429_with_zero_limit() {
    let h = Harness::start(SimConfig {
        concurrency_limit: Some(1),
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let (a, b) = tokio::join!(h.get("/api/v1/users"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.get("/api/v1/users").await
    });
    assert_eq!(a.status(), 200);
    assert_eq!(b.headers()["x-rate-limit-limit"], "0");
    assert_eq!(b.headers()["x-rate-limit-remaining"], "0");
    expect_error(b, 429, "E0000047").await;
}

#[tokio::test]
async fn faults_and_outages() {
    let h = Harness::new().await;
    h.sim.inject_fault(Fault {
        method: Some("post".into()),
        path_contains: Some("/api/v1/users".into()),
        times: 2,
        kind: FaultKind::Status {
            status: 503,
            error_code: "E0000009".into(),
        },
    });
    assert_eq!(
        h.get("/api/v1/users").await.status(),
        200,
        "GET does not match the fault"
    );
    for _ in 0..2 {
        expect_error(
            h.post("/api/v1/users", profile("ada@example.com")).await,
            503,
            "E0000009",
        )
        .await;
    }
    assert_eq!(
        h.post("/api/v1/users", profile("ada@example.com"))
            .await
            .status(),
        200
    );

    h.sim.inject_fault(Fault {
        method: None,
        path_contains: None,
        times: 1,
        kind: FaultKind::Hang(Duration::from_millis(500)),
    });
    let quick = h
        .http
        .get(h.url("/api/v1/users"))
        .header("Authorization", format!("SSWS {}", h.sim.api_token()));
    let logged_before = h.sim.request_log().len();
    let timed_out = quick.timeout(Duration::from_millis(100)).send().await;
    assert!(timed_out.unwrap_err().is_timeout());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        h.sim.request_log().len(),
        logged_before + 1,
        "the abandoned request is logged"
    );

    h.sim.inject_fault(Fault {
        method: Some("GET".into()),
        path_contains: None,
        times: 1,
        kind: FaultKind::CloseConnection,
    });
    let request = h
        .http
        .get(h.url("/api/v1/users"))
        .header("Authorization", format!("SSWS {}", h.sim.api_token()));
    match request.send().await {
        Err(error) => assert!(!error.is_timeout()),
        Ok(truncated) => assert!(truncated.json::<Value>().await.is_err()),
    }
    assert_eq!(h.get("/api/v1/users").await.status(), 200);

    h.sim.set_outage(Some(503));
    expect_error(h.get("/api/v1/groups").await, 503, "E0000009").await;
    h.sim.set_outage(None);
    assert_eq!(h.get("/api/v1/groups").await.status(), 200);
}

#[tokio::test]
async fn request_log_names_operations() {
    let h = Harness::new().await;
    let group = h.sim.create_group("Sales", GroupType::OktaGroup);
    let id = h.create("ada@example.com", "?activate=false").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.post(&format!("/api/v1/users/{id}/lifecycle/activate"), json!({}))
        .await;
    h.call(
        Method::PUT,
        &format!("/api/v1/groups/{group}/users/{id}"),
        None,
    )
    .await;
    h.get("/api/v1/groups?q=Sa").await;
    h.call(
        Method::DELETE,
        &format!("/api/v1/users/{id}/sessions"),
        None,
    )
    .await;
    let log = h.sim.request_log();
    let operations: Vec<&str> = log.iter().map(|r| r.operation).collect();
    assert_eq!(
        operations,
        [
            "createUser",
            "activateUser",
            "assignUserToGroup",
            "listGroups",
            "revokeUserSessions"
        ]
    );
    assert_eq!(log[0].query.as_deref(), Some("activate=false"));
    assert_eq!(log[2].status, 204);
    h.sim.clear_request_log();
    assert!(h.sim.request_log().is_empty());
}

#[tokio::test]
async fn admin_routes_steer_the_fake() {
    let h = Harness::new().await;
    let created: Value = h
        .http
        .post(h.url("/__sim/groups"))
        .json(&json!({"name": "Ops"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let group = created["id"].as_str().unwrap().to_owned();
    let user = h.create("ada@example.com", "").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.call(
        Method::PUT,
        &format!("/api/v1/groups/{group}/users/{user}"),
        None,
    )
    .await;
    let users: Value = h
        .http
        .get(h.url("/__sim/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users[0]["groups"], json!(["Ops"]));
    assert_eq!(users[0]["status"], "PROVISIONED");
    let fault = json!({"method": "GET", "times": 1, "kind": "status", "status": 500, "error_code": "E0000009"});
    assert_eq!(
        h.http
            .post(h.url("/__sim/faults"))
            .json(&fault)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    expect_error(h.get("/api/v1/groups").await, 500, "E0000009").await;
    let settings = json!({"outage_status": 503, "latency_ms": 0, "rate_limit": {"requests_per_window": 100, "window_ms": 60000}});
    assert_eq!(
        h.http
            .post(h.url("/__sim/settings"))
            .json(&settings)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    expect_error(h.get("/api/v1/groups").await, 503, "E0000009").await;
    h.http
        .post(h.url("/__sim/settings"))
        .json(&json!({"outage_status": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.get("/api/v1/groups").await.headers()["x-rate-limit-limit"],
        "100"
    );
    let log: Value = h
        .http
        .get(h.url("/__sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log[0]["operation"], "createUser");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let h = Harness::new().await;
    let url = h.url("/api/v1/users");
    h.sim.clone().shutdown().await;
    assert!(Client::new().get(url).send().await.is_err());
}
