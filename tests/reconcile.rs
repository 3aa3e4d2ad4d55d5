//! `iam-provisioner reconcile` (issue 15) as operators run it: the binary, against the
//! fake Okta and the real broker. Each kind of drift is found; `--fix` repairs through
//! the service's pipeline until a second run finds nothing; a truncated roster is
//! refused; listings span pages and survive a rate limit; a bad line is named.

mod common;

use common::{Options, World, AMQP_URL};
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::{
    Fault, FaultKind, GroupType, OktaSim, RateLimit, SimConfig, UserStatus,
};
use serde_json::{json, Value};
use std::process::{Command, Output};
use std::time::Duration;

/// The mapping every test uses (as `common::Options` does).
fn mapping() -> Value {
    json!({
        "Engineering": ["Engineering-Core", "GitHub-Users"],
        "Sales": "Sales-App-Access",
    })
}

/// A roster line, as HR exports it.
fn employee(id: &str, email: &str, groups: &[&str]) -> Value {
    json!({"id": id, "email": email, "first_name": "Ada", "last_name": "Lovelace",
           "groups": groups, "title": "Engineer"})
}

/// The Okta profile the service writes for [`employee`].
fn okta_profile(id: &str, email: &str) -> Value {
    json!({"login": email, "email": email, "firstName": "Ada", "lastName": "Lovelace",
           "employeeNumber": id, "title": "Engineer"})
}

fn roster_text(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Runs `reconcile` with `args`, the roster given on standard input, configured for
/// `names`, the fake `sim` and the test mapping, plus `env`.
async fn reconcile(
    names: &TopologyNames,
    sim: &OktaSim,
    roster: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut command = Command::new(common::process::BINARY);
    command
        .arg("reconcile")
        .args(["--roster", "-"])
        .args(args)
        .env_clear()
        .env("AMQP_URL", AMQP_URL)
        .env("INPUT_EXCHANGE", &names.input_exchange)
        .env("WORK_QUEUE", &names.work_queue)
        .env("RESULTS_EXCHANGE", &names.results_exchange)
        .env("DEAD_LETTER_EXCHANGE", &names.dead_letter_exchange)
        .env("DEAD_LETTER_QUEUE", &names.dead_letter_queue)
        .env("OKTA_ORG_URL", sim.base_url())
        .env("OKTA_API_TOKEN", sim.api_token())
        .env("GROUP_MAPPING", mapping().to_string());
    for (k, v) in env {
        command.env(k, v);
    }
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let roster = roster.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = command.spawn().expect("the binary runs");
        let mut stdin = child.stdin.take().expect("stdin");
        // A writer thread: a large roster must not deadlock against a full stdout pipe.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(roster.as_bytes());
        });
        let output = child.wait_with_output().expect("the binary finishes");
        let _ = writer.join();
        output
    })
    .await
    .expect("the command's task")
}

fn json_report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the report is JSON ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fake Okta with the mapped groups and one unmanaged group.
async fn sim_with_groups(config: SimConfig) -> (OktaSim, [String; 4]) {
    let sim = OktaSim::start(config).await.expect("fake Okta starts");
    let ids = [
        "Engineering-Core",
        "GitHub-Users",
        "Sales-App-Access",
        "Unmanaged",
    ]
    .map(|name| sim.create_group(name, GroupType::OktaGroup));
    (sim, ids)
}

fn names(test: &str) -> TopologyNames {
    TopologyNames::prefixed(&common::unique_prefix(test))
}

/// Seeds one drifted employee of each kind (and two that are in step) into `sim`;
/// returns the roster that goes with them.
fn seed_every_kind(sim: &OktaSim, groups: &[String; 4]) -> Vec<Value> {
    let [eng, github, sales, unmanaged] = groups;
    let seed = |id: &str, email: &str, status: UserStatus, member_of: &[&String]| {
        let user = sim.create_user(okta_profile(id, email), status);
        for group in member_of {
            sim.add_member(group, &user);
        }
        user
    };
    // In step, with an unmanaged group that must not count.
    seed(
        "E-1",
        "e1@example.com",
        UserStatus::Active,
        &[eng, github, unmanaged],
    );
    // Disabled: in the roster, deactivated in Okta.
    seed("E-3", "e3@example.com", UserStatus::Deprovisioned, &[]);
    // Orphan: enabled, not in the roster.
    seed("E-4", "e4@example.com", UserStatus::Active, &[sales]);
    // Groups: the roster says Sales; Okta has Engineering-Core and not Sales.
    seed("E-5", "e5@example.com", UserStatus::Active, &[eng]);
    // Profile: Okta's last name differs.
    sim.create_user(
        json!({"login": "e6@example.com", "email": "e6@example.com", "firstName": "Ada",
               "lastName": "Byron", "employeeNumber": "E-6", "title": "Engineer"}),
        UserStatus::Active,
    );
    // A leaver done right: deactivated, not in the roster: no finding.
    seed("E-7", "e7@example.com", UserStatus::Deprovisioned, &[sales]);
    // Unmatched: in a mapped group, no employee number.
    let nobody = sim.create_user(
        json!({"login": "contractor@example.com", "email": "contractor@example.com",
               "firstName": "C", "lastName": "T"}),
        UserStatus::Active,
    );
    sim.add_member(sales, &nobody);
    vec![
        employee("E-1", "e1@example.com", &["Engineering"]),
        // Missing: no Okta user.
        employee("E-2", "e2@example.com", &[]),
        employee("E-3", "e3@example.com", &[]),
        employee("E-5", "e5@example.com", &["Sales"]),
        employee("E-6", "e6@example.com", &[]),
    ]
}

#[tokio::test]
async fn every_kind_of_drift_is_reported_and_nothing_changes_without_fix() {
    let (sim, groups) = sim_with_groups(SimConfig::default()).await;
    let roster = seed_every_kind(&sim, &groups);
    let names = names("reconcile-kinds");
    let before = sim.users();

    let output = reconcile(&names, &sim, &roster_text(&roster), &["--json"], &[]).await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "drift exits 1: {}",
        stderr(&output)
    );
    let report = json_report(&output);
    for kind in [
        "orphan",
        "missing",
        "disabled",
        "groups",
        "profile",
        "unmatched",
    ] {
        assert_eq!(report["counts"][kind], 1, "{kind}: {report:#}");
    }
    let findings = report["findings"].as_array().expect("findings");
    let by_kind = |kind: &str| {
        findings
            .iter()
            .find(|f| f["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind} finding"))
    };
    assert_eq!(findings[0]["kind"], "orphan", "orphans are shown first");
    assert_eq!(by_kind("orphan")["employee_id"], "E-4");
    assert_eq!(by_kind("missing")["employee_id"], "E-2");
    assert_eq!(by_kind("disabled")["employee_id"], "E-3");
    assert_eq!(by_kind("groups")["employee_id"], "E-5");
    let detail = by_kind("groups")["detail"].as_str().expect("detail");
    assert!(
        detail.contains("extra: Engineering-Core") && detail.contains("missing: Sales-App-Access"),
        "{detail}"
    );
    assert!(!detail.contains("Unmanaged"));
    assert_eq!(by_kind("profile")["employee_id"], "E-6");
    assert!(by_kind("profile")["detail"]
        .as_str()
        .is_some_and(|d| d.contains("lastName")));
    assert_eq!(by_kind("unmatched")["login"], "contractor@example.com");
    assert!(
        !findings
            .iter()
            .any(|f| f["employee_id"] == "E-1" || f["employee_id"] == "E-7"),
        "in step and a proper leaver: {findings:#?}"
    );
    assert_eq!(report["fix"]["requested"], false);

    // The readable report: counts first, in report order.
    let text = reconcile(&names, &sim, &roster_text(&roster), &[], &[]).await;
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    let second_line = stdout.lines().nth(1).unwrap_or_default();
    assert_eq!(
        second_line,
        "drift: orphan 1, missing 1, disabled 1, groups 1, profile 1, unmatched 1 (total 6)",
        "{stdout}"
    );
    assert!(stderr(&text).contains("users with an employee number read"));

    // Without --fix, Okta is only read.
    assert!(
        sim.request_log().iter().all(|r| r.method == "GET"),
        "only reads: {:?}",
        sim.request_log()
            .iter()
            .filter(|r| r.method != "GET")
            .collect::<Vec<_>>()
    );
    let after = sim.users();
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((b.status, &b.profile), (a.status, &a.profile));
    }
}

#[tokio::test]
async fn a_roster_in_step_exits_zero_and_a_json_array_roster_is_read() {
    let (sim, [eng, github, sales, _]) = sim_with_groups(SimConfig::default()).await;
    let user = sim.create_user(okta_profile("E-1", "e1@example.com"), UserStatus::Active);
    sim.add_member(&eng, &user);
    sim.add_member(&github, &user);
    // Seeded in bulk through the fake's admin API, as a person would for a large org.
    let seeded: Value = reqwest::Client::new()
        .post(format!("{}/__sim/users/bulk", sim.base_url()))
        .json(
            &json!([{"profile": okta_profile("E-2", "e2@example.com"), "status": "ACTIVE",
                       "groups": [sales]}]),
        )
        .send()
        .await
        .expect("the bulk call answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(seeded["created"], 1);
    let names = names("reconcile-clean");
    let array = format!(
        "[\n  {},\n  {}\n]\n",
        employee("E-1", "e1@example.com", &["Engineering"]),
        employee("E-2", "e2@example.com", &["Sales"])
    );
    let output = reconcile(&names, &sim, &array, &[], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("(total 0)"));

    // An org that refuses `pr` in a search: every user by status, the same answer.
    sim.create_user(
        json!({"login": "nobody@example.com", "email": "nobody@example.com", "firstName": "N", "lastName": "B"}),
        UserStatus::Active,
    );
    sim.inject_fault(Fault {
        method: Some("GET".into()),
        path_contains: Some("/api/v1/users".into()),
        times: 1,
        kind: FaultKind::Status {
            status: 400,
            error_code: "E0000031".into(),
        },
    });
    let output = reconcile(&names, &sim, &array, &[], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("listing every user by status instead"));
}

#[tokio::test]
async fn the_mapped_groups_scope_answers_for_the_members_of_mapped_groups() {
    let (sim, [eng, github, sales, _]) = sim_with_groups(SimConfig::default()).await;
    let e1 = sim.create_user(okta_profile("E-1", "e1@example.com"), UserStatus::Active);
    sim.add_member(&eng, &e1);
    sim.add_member(&github, &e1);
    // In Okta, in no mapped group, and the roster gives it none: found by login, in step.
    sim.create_user(okta_profile("E-2", "e2@example.com"), UserStatus::Active);
    // Not in the roster, in a mapped group: an orphan.
    let e4 = sim.create_user(okta_profile("E-4", "e4@example.com"), UserStatus::Active);
    sim.add_member(&sales, &e4);
    // Not in the roster, in no mapped group: outside this scope.
    sim.create_user(okta_profile("E-9", "e9@example.com"), UserStatus::Active);
    let roster = vec![
        employee("E-1", "e1@example.com", &["Engineering"]),
        employee("E-2", "e2@example.com", &[]),
        employee("E-3", "e3@example.com", &[]),
    ];
    let names = names("reconcile-scope");
    let output = reconcile(
        &names,
        &sim,
        &roster_text(&roster),
        &["--json", "--scope", "mapped-groups"],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report = json_report(&output);
    assert_eq!(report["scope"], "mapped-groups");
    assert_eq!(report["okta_users_in_scope"], 2, "{report:#}");
    let found: Vec<(String, String)> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or_default().to_owned(),
                f["employee_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("orphan".to_owned(), "E-4".to_owned()),
            ("missing".to_owned(), "E-3".to_owned())
        ]
    );
    assert!(
        !sim.request_log()
            .iter()
            .any(|r| r.query.as_deref().is_some_and(|q| q.contains("search"))
                && r.path == "/api/v1/users"),
        "no listing of every user in this scope"
    );
}

#[tokio::test]
async fn listings_span_pages_and_wait_out_rate_limits_mid_listing() {
    // 4 requests per 2 s in every bucket: the users listing empties its bucket part-way.
    let config = SimConfig {
        rate_limit: Some(RateLimit::uniform(4, Duration::from_secs(2))),
        ..SimConfig::default()
    };
    let (sim, [eng, github, ..]) = sim_with_groups(config).await;
    let mut roster = Vec::new();
    for n in 0..25 {
        let (id, email) = (format!("E-{n}"), format!("e{n}@example.com"));
        let user = sim.create_user(okta_profile(&id, &email), UserStatus::Active);
        sim.add_member(&eng, &user);
        sim.add_member(&github, &user);
        roster.push(employee(&id, &email, &["Engineering"]));
    }
    // The last user, on the last page, is an orphan: seen only if every page was read.
    sim.create_user(
        okta_profile("E-LAST", "last@example.com"),
        UserStatus::Active,
    );
    // And two 429s in the middle of the run: on the first page of a group's members.
    sim.inject_fault(Fault {
        method: Some("GET".into()),
        path_contains: Some(format!("/groups/{github}/users")),
        times: 2,
        kind: FaultKind::Status {
            status: 429,
            error_code: "E0000047".into(),
        },
    });
    let names = names("reconcile-pages");
    let output = reconcile(
        &names,
        &sim,
        &roster_text(&roster),
        &["--json", "--page-limit", "4", "--max-orphan-share", "0.5"],
        &[],
    )
    .await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let report = json_report(&output);
    assert_eq!(report["okta_users_in_scope"], 26, "{report:#}");
    assert_eq!(report["counts"]["orphan"], 1);
    assert_eq!(report["findings"][0]["employee_id"], "E-LAST");
    assert_eq!(
        report["findings"].as_array().map(Vec::len),
        Some(1),
        "every member on every page was seen: {report:#}"
    );
    // 26 users / 4 = 7 pages, and 25 members / 4 = 7 pages per mapped group (three).
    let pages = report["metrics"]["okta_pages"].as_u64().expect("pages");
    // users, two mapped groups of 25, and the empty Sales group.
    let expected_pages = 7 + 7 + 7 + 1;
    assert!(pages >= expected_pages, "{pages} pages");
    let requests = report["metrics"]["okta_list_requests"]
        .as_u64()
        .expect("requests");
    assert!(
        requests >= pages + 2,
        "each 429 asked for its page again: {requests} requests"
    );
    assert!(
        err.contains("rate limit (429) on listGroupUsers: waiting"),
        "the 429 waits are said: {err}"
    );
    assert!(
        err.contains("bucket is empty; the next page waits"),
        "the paced waits are said: {err}"
    );
    // Each page followed Okta's `Link`, with the limit asked for.
    let log = sim.request_log();
    let user_pages: Vec<_> = log
        .iter()
        .filter(|r| r.path == "/api/v1/users" && r.method == "GET")
        .collect();
    assert_eq!(user_pages.len(), 7);
    assert!(user_pages
        .iter()
        .all(|r| r.query.as_deref().is_some_and(|q| q.contains("limit=4"))));
    assert!(user_pages[1..]
        .iter()
        .all(|r| r.query.as_deref().is_some_and(|q| q.contains("after="))));
}

#[tokio::test]
async fn a_bad_roster_line_is_named_and_stops_the_run_above_the_limit() {
    let (sim, _) = sim_with_groups(SimConfig::default()).await;
    sim.create_user(okta_profile("E-1", "e1@example.com"), UserStatus::Active);
    let names = names("reconcile-bad-line");
    let roster = format!(
        "{}\n{}\n{}\n",
        employee("E-1", "e1@example.com", &[]),
        json!({"id": "E-2", "email": "e2@example.com", "first_name": "No last name"}),
        employee("E-3", "e3@example.com", &[]),
    );
    let output = reconcile(&names, &sim, &roster, &["--fix"], &[]).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 2") && err.contains("employee.last_name"),
        "the line and the field are named: {err}"
    );
    assert!(
        sim.request_log().is_empty(),
        "nothing compared, nothing fixed"
    );

    // Within RECONCILE_MAX_BAD_LINES the run goes on and reports the line; the employee
    // of the bad line is not taken for an orphan.
    sim.create_user(okta_profile("E-2", "e2@example.com"), UserStatus::Active);
    let output = reconcile(
        &names,
        &sim,
        &roster,
        &["--json"],
        &[("RECONCILE_MAX_BAD_LINES", "1")],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report = json_report(&output);
    assert_eq!(report["roster_bad_lines"][0]["line"], 2);
    assert_eq!(report["counts"]["orphan"], 0, "{report:#}");
    assert_eq!(report["counts"]["missing"], 1, "E-3");
}

#[tokio::test]
async fn a_truncated_roster_refuses_fix_naming_the_share() {
    let (sim, _) = sim_with_groups(SimConfig::default()).await;
    let mut roster = Vec::new();
    for n in 0..10 {
        let (id, email) = (format!("E-{n}"), format!("e{n}@example.com"));
        sim.create_user(okta_profile(&id, &email), UserStatus::Active);
        if n < 6 {
            roster.push(employee(&id, &email, &[]));
        }
    }
    let names = names("reconcile-truncated");
    let output = reconcile(&names, &sim, &roster_text(&roster), &["--fix"], &[]).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("4 orphans are 40.0% of the 10 users in scope") && err.contains("--force"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("fix: REFUSED"));
    assert!(sim.request_log().iter().all(|r| r.method == "GET"));
    assert!(sim.users().iter().all(|u| u.status == UserStatus::Active));
}

#[tokio::test]
async fn fix_repairs_through_the_pipeline_until_okta_matches_the_roster() {
    let options = Options {
        okta_groups: vec![],
        sim: SimConfig {
            // The second run must see the users the service just created.
            search_lag: Duration::ZERO,
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("reconcile-fix", options).await;
    let sim = &world.sim;
    let groups = [
        "Engineering-Core",
        "GitHub-Users",
        "Sales-App-Access",
        "Unmanaged",
    ]
    .map(|name| sim.create_group(name, GroupType::OktaGroup));
    let mut roster = seed_every_kind(sim, &groups);
    // The unmatched contractor is HR's new hire E-8: the hire adopts the login.
    roster.push(employee("E-8", "contractor@example.com", &["Sales"]));
    let unmanaged_member = sim.user("e1@example.com").expect("E-1").id;

    let output = reconcile(
        &world.names,
        &world.sim,
        &roster_text(&roster),
        &[
            "--fix",
            "--json",
            "--run-id",
            "r1",
            "--max-orphan-share",
            "0.5",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report = json_report(&output);
    assert_eq!(
        report["fix"]["published"]["employee.added"], 3,
        "{report:#}"
    );
    assert_eq!(report["fix"]["published"]["employee.updated"], 2);
    assert_eq!(report["fix"]["published"]["employee.removed"], 1);

    let event_ids: Vec<String> = ["E-2", "E-3", "E-4", "E-5", "E-6", "E-8"]
        .iter()
        .map(|id| format!("reconcile-r1-{id}"))
        .collect();
    // The outcomes of every corrective event, and the run's summary among them.
    let mut summaries = Vec::new();
    let mut finals = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + common::OVERALL_PATIENCE;
    while finals.len() < event_ids.len() || summaries.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{finals:#?}");
        let (key, body, _) = world.next_outcome().await;
        if key == "reconcile.completed" {
            summaries.push(body);
            continue;
        }
        let id = body["source_event_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if body["status"] != "retrying" && event_ids.contains(&id) {
            finals.insert(id, body);
        }
    }
    for (id, outcome) in &finals {
        assert_eq!(outcome["status"], "succeeded", "{id}: {outcome:#}");
    }

    // Okta now matches the roster: a second run finds nothing.
    let again = reconcile(
        &world.names,
        &world.sim,
        &roster_text(&roster),
        &["--json"],
        &[],
    )
    .await;
    let report = json_report(&again);
    assert_eq!(again.status.code(), Some(0), "no drift left: {report:#}");
    assert_eq!(
        world.sim.user("e4@example.com").expect("E-4").status,
        UserStatus::Deprovisioned,
        "the orphan was offboarded by the service"
    );
    // Nothing outside the mapped groups was touched.
    let unmanaged_members = world
        .sim
        .request_log()
        .iter()
        .filter(|r| r.path.contains(&groups[3]) && r.method != "GET")
        .count();
    assert_eq!(unmanaged_members, 0);
    assert!(world.sim.user(&unmanaged_member).is_some());

    // The summary event of each run is on the results exchange.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while summaries.len() < 2 && tokio::time::Instant::now() < deadline {
        let (key, body, _) = world.next_outcome().await;
        if key == "reconcile.completed" {
            summaries.push(body);
        }
    }
    assert_eq!(summaries.len(), 2, "{summaries:#?}");
    assert_eq!(summaries[0]["run_id"], "r1");
    assert_eq!(summaries[0]["fixed"], true);
    assert_eq!(summaries[0]["counts"]["orphan"], 1);
    assert_eq!(summaries[1]["fixed"], false);
    assert_eq!(summaries[1]["drift"], false);
    assert!(summaries[1]["duration_ms"].is_u64());
}

#[tokio::test]
async fn only_groups_reapplies_the_mapping_and_fixes_nothing_else() {
    let options = Options {
        okta_groups: vec![],
        // Reconciliation's events pass as an HR publisher's: their `user_id` is the
        // broker user of AMQP_URL (guest here).
        env: vec![("TRUSTED_PUBLISHERS", "guest".to_owned())],
        sim: SimConfig {
            search_lag: Duration::ZERO,
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("reconcile-only-groups", options).await;
    let sim = &world.sim;
    let groups = [
        "Engineering-Core",
        "GitHub-Users",
        "Sales-App-Access",
        "Unmanaged",
    ]
    .map(|name| sim.create_group(name, GroupType::OktaGroup));
    let roster = seed_every_kind(sim, &groups);

    let output = reconcile(
        &world.names,
        &world.sim,
        &roster_text(&roster),
        &[
            "--fix",
            "--only",
            "groups",
            "--json",
            "--run-id",
            "g1",
            "--max-orphan-share",
            "0.5",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report = json_report(&output);
    assert_eq!(
        report["fix"]["published"],
        json!({"employee.updated": 1}),
        "{report:#}"
    );
    let outcome = world.final_outcome("reconcile-g1-E-5").await;
    assert_eq!(outcome["status"], "succeeded", "{outcome:#}");

    let again = reconcile(
        &world.names,
        &world.sim,
        &roster_text(&roster),
        &["--json"],
        &[],
    )
    .await;
    let report = json_report(&again);
    assert_eq!(report["counts"]["groups"], 0, "{report:#}");
    for kind in ["orphan", "missing", "disabled", "profile", "unmatched"] {
        assert_eq!(report["counts"][kind], 1, "{kind} untouched: {report:#}");
    }
    assert_eq!(
        world.sim.user("e5@example.com").expect("E-5").profile["lastName"],
        "Lovelace"
    );
}
