//! Reading Okta's side of a reconciliation: the users in scope and the members of every
//! mapped group, page by page, into compact records.
//!
//! A page of up to 200 users is decoded, each user cut down to what the drift needs (id,
//! status, login, the profile fields the service writes, as one small JSON text) and
//! the page dropped: 100,000 users stay far below the memory bound, where holding them as
//! `serde_json` values would not. Every request goes through the client's pacer; a 429
//! that the pacer could not avoid is waited out here and the same page asked again, and
//! both are said on standard error so that a long run shows what it waits for.

use super::drift::GroupIx;
use super::progress::Progress;
use crate::domain::plan::AccountStatus;
use crate::okta::listing::Page;
use crate::okta::{OktaClient, OktaError};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Which Okta users a reconciliation answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Every user with an `employeeNumber` (`search=profile.employeeNumber pr`, which
    /// includes deactivated users): the accounts HR owns.
    EmployeeNumber,
    /// Every user in any mapped group: the access this service manages.
    MappedGroups,
}

impl Scope {
    /// The scope's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EmployeeNumber => "employee-number",
            Scope::MappedGroups => "mapped-groups",
        }
    }
}

/// One Okta user, cut down to what the drift needs.
#[derive(Debug, Clone)]
pub struct OktaRecord {
    pub user_id: Box<str>,
    pub status: AccountStatus,
    pub login: Box<str>,
    /// `profile.employeeNumber`, if set.
    pub employee_number: Option<Box<str>>,
    /// The profile fields the service writes, as a JSON object's text.
    pub profile: Box<str>,
    /// Mapped groups the user is a member of (sorted, no duplicates).
    pub groups: Vec<GroupIx>,
    /// Whether the user is in the run's scope.
    pub in_scope: bool,
}

impl OktaRecord {
    /// The written profile fields as a map.
    pub fn profile_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.profile).unwrap_or_default()
    }

    /// The mapped groups as a set.
    pub fn group_set(&self) -> BTreeSet<GroupIx> {
        self.groups.iter().copied().collect()
    }
}

/// Okta's side, as read.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub records: Vec<OktaRecord>,
    /// Employee number → the record that stands for it (an enabled one over a
    /// disabled one when several users share a number).
    pub by_employee: HashMap<Box<str>, u32>,
    by_user_id: HashMap<Box<str>, u32>,
    /// Users sharing an employee number with another (not compared; reported).
    pub duplicate_employee_numbers: u64,
    pub stats: ListingStats,
}

/// What reading Okta cost.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ListingStats {
    /// List requests sent, retries included.
    pub requests: u64,
    pub pages: u64,
    /// 429s waited out here, plus pages after which the bucket was empty (the pacer then
    /// holds the next request until the window resets).
    pub rate_limit_waits: u64,
    /// Time spent waiting out 429s here, in milliseconds.
    pub rate_limit_wait_ms: u64,
}

/// A user as `listUsers` and `listGroupUsers` return it; only what is kept is read.
#[derive(Deserialize)]
struct ListedUser {
    id: String,
    status: String,
    #[serde(default)]
    profile: Map<String, Value>,
}

/// Reads the users and group memberships of one run.
pub struct OktaReader<'a> {
    client: &'a OktaClient,
    page_limit: u32,
    /// The profile keys the service writes.
    written_keys: &'a [String],
    progress: &'a mut Progress,
    snapshot: Snapshot,
}

/// How many times one page is asked again after a transient failure.
const TRANSIENT_RETRIES: u32 = 3;
/// How many 429s in a row one page may meet before the run gives up.
const RATE_LIMIT_RETRIES: u32 = 30;

impl<'a> OktaReader<'a> {
    pub fn new(
        client: &'a OktaClient,
        page_limit: u32,
        written_keys: &'a [String],
        progress: &'a mut Progress,
    ) -> Self {
        Self {
            client,
            page_limit,
            written_keys,
            progress,
            snapshot: Snapshot::default(),
        }
    }

    /// Reads every user with an employee number into the scope:
    /// `search=profile.employeeNumber pr`, or, where an org refuses `pr` in a search
    /// (400 `E0000031`), every user by status (`search` with `eq` and `or`, which Okta
    /// documents) with those without an employee number dropped here.
    ///
    /// # Errors
    /// The [`OktaError`] that stopped the listing.
    pub async fn read_employee_number_scope(&mut self) -> Result<(), OktaError> {
        let first = self
            .client
            .search_users_url("profile.employeeNumber pr", self.page_limit);
        match self.read_users(first).await {
            Err(e) if e.is(400, "E0000031") => {
                self.progress.warn(
                    "Okta refused `search=profile.employeeNumber pr`; listing every user by status instead",
                );
                let every_status = [
                    "STAGED",
                    "PROVISIONED",
                    "ACTIVE",
                    "RECOVERY",
                    "PASSWORD_EXPIRED",
                    "LOCKED_OUT",
                    "SUSPENDED",
                    "DEPROVISIONED",
                ]
                .map(|s| format!("status eq \"{s}\""))
                .join(" or ");
                let url = self.client.search_users_url(&every_status, self.page_limit);
                self.read_users(url).await
            }
            other => other,
        }
    }

    async fn read_users(&mut self, first: Url) -> Result<(), OktaError> {
        let mut next = Some(first);
        let mut users = 0u64;
        while let Some(url) = next.take() {
            let page: Page<ListedUser> = self.fetch("listUsers", url).await?;
            for user in page.items {
                let numbered = user
                    .profile
                    .get("employeeNumber")
                    .is_some_and(|n| n.as_str().map_or(!n.is_null(), |s| !s.trim().is_empty()));
                if numbered {
                    users += 1;
                    self.keep(user, true, None);
                }
            }
            next = page.next;
            let pages = self.snapshot.stats.pages;
            self.progress
                .tick(|| format!("okta: {users} users in scope read ({pages} pages)"));
        }
        self.progress
            .note(&format!("okta: {users} users with an employee number read"));
        Ok(())
    }

    /// Reads the members of a mapped group; with `in_scope`, they join the scope.
    ///
    /// # Errors
    /// The [`OktaError`] that stopped the listing.
    pub async fn read_group(
        &mut self,
        group: GroupIx,
        group_id: &str,
        group_name: &str,
        in_scope: bool,
    ) -> Result<(), OktaError> {
        let mut next = Some(self.client.group_users_url(group_id, self.page_limit));
        let mut members = 0u64;
        while let Some(url) = next.take() {
            let page: Page<ListedUser> = self.fetch("listGroupUsers", url).await?;
            members += page.items.len() as u64;
            for user in page.items {
                self.keep(user, in_scope, Some(group));
            }
            next = page.next;
            self.progress
                .tick(|| format!("okta: group {group_name}: {members} members read"));
        }
        self.progress
            .note(&format!("okta: group {group_name}: {members} members"));
        Ok(())
    }

    /// The snapshot read so far.
    pub fn finish(self) -> Snapshot {
        self.snapshot
    }

    /// One page, waiting out rate limits and retrying transient failures.
    async fn fetch(
        &mut self,
        operation: &'static str,
        url: Url,
    ) -> Result<Page<ListedUser>, OktaError> {
        let mut transient = 0u32;
        let mut limited = 0u32;
        loop {
            self.snapshot.stats.requests += 1;
            match self.client.list_page(operation, url.clone()).await {
                Ok(page) => {
                    self.snapshot.stats.pages += 1;
                    if self.client.last_rate_limit_remaining() == Some(0) && page.next.is_some() {
                        self.snapshot.stats.rate_limit_waits += 1;
                        self.progress.note(&format!(
                            "okta: rate limit: the {operation} bucket is empty; the next page waits for the window to reset"
                        ));
                    }
                    return Ok(page);
                }
                Err(OktaError::RateLimited { retry_after, .. }) if limited < RATE_LIMIT_RETRIES => {
                    limited += 1;
                    let wait = retry_after.max(Duration::from_millis(100));
                    self.snapshot.stats.rate_limit_waits += 1;
                    self.snapshot.stats.rate_limit_wait_ms += wait.as_millis() as u64;
                    self.progress.note(&format!(
                        "okta: rate limit (429) on {operation}: waiting {:.1}s, then asking for the same page again",
                        wait.as_secs_f64()
                    ));
                    tokio::time::sleep(wait).await;
                }
                Err(error)
                    if transient < TRANSIENT_RETRIES
                        && matches!(
                            error.kind(),
                            crate::domain::outcome::ErrorKind::Transient
                                | crate::domain::outcome::ErrorKind::RateLimited
                        )
                        && !matches!(error, OktaError::RateLimited { .. }) =>
                {
                    transient += 1;
                    let wait = Duration::from_secs(1 << transient);
                    self.progress.note(&format!(
                        "okta: {operation} failed ({error}); trying the same page again in {}s",
                        wait.as_secs()
                    ));
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Keeps one listed user: a new record, or a membership of an existing one.
    fn keep(&mut self, user: ListedUser, in_scope: bool, group: Option<GroupIx>) {
        let snapshot = &mut self.snapshot;
        let index = match snapshot.by_user_id.get(user.id.as_str()) {
            Some(&index) => index,
            None => {
                let record = compact(user, self.written_keys);
                let index = snapshot.records.len() as u32;
                if let Some(number) = &record.employee_number {
                    match snapshot.by_employee.get(number).copied() {
                        None => {
                            snapshot.by_employee.insert(number.clone(), index);
                        }
                        Some(other) => {
                            snapshot.duplicate_employee_numbers += 1;
                            // The enabled account is the one HR's employee uses.
                            let other_enabled =
                                super::drift::is_enabled(&snapshot.records[other as usize].status);
                            if !other_enabled && super::drift::is_enabled(&record.status) {
                                snapshot.by_employee.insert(number.clone(), index);
                            }
                        }
                    }
                }
                snapshot.by_user_id.insert(record.user_id.clone(), index);
                snapshot.records.push(record);
                index
            }
        };
        let record = &mut snapshot.records[index as usize];
        record.in_scope |= in_scope;
        if let Some(group) = group {
            if let Err(at) = record.groups.binary_search(&group) {
                record.groups.insert(at, group);
            }
        }
    }
}

/// Cuts a listed user down to an [`OktaRecord`].
fn compact(user: ListedUser, written_keys: &[String]) -> OktaRecord {
    let text = |value: Option<&Value>| -> Option<String> {
        match value? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let employee_number = text(user.profile.get("employeeNumber")).map(String::into_boxed_str);
    let login = text(user.profile.get("login")).unwrap_or_default();
    let kept: Map<String, Value> = user
        .profile
        .into_iter()
        .filter(|(key, value)| !value.is_null() && written_keys.iter().any(|k| k == key))
        .collect();
    OktaRecord {
        user_id: user.id.into_boxed_str(),
        status: AccountStatus::parse(&user.status),
        login: login.into_boxed_str(),
        employee_number,
        profile: serde_json::to_string(&kept)
            .unwrap_or_default()
            .into_boxed_str(),
        groups: Vec::new(),
        in_scope: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_cut_down_to_the_written_fields() {
        let user: ListedUser = serde_json::from_value(serde_json::json!({
            "id": "00u1", "status": "ACTIVE",
            "profile": {"login": "a@example.com", "employeeNumber": "E-1", "lastName": "L",
                        "mobilePhone": "123", "title": null},
            "_links": {"self": {"href": "x"}},
        }))
        .expect("decodes");
        let keys = vec![
            "login".to_owned(),
            "lastName".to_owned(),
            "title".to_owned(),
        ];
        let record = compact(user, &keys);
        assert_eq!(&*record.user_id, "00u1");
        assert_eq!(record.employee_number.as_deref(), Some("E-1"));
        assert_eq!(&*record.login, "a@example.com");
        assert_eq!(
            serde_json::from_str::<Value>(&record.profile).expect("json"),
            serde_json::json!({"login": "a@example.com", "lastName": "L"})
        );
    }
}
