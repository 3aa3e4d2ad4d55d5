//! The fake org's directory (users, groups, memberships) and Okta's rules over it.
//!
//! Everything here is plain data and plain functions, free of HTTP but for the body an
//! [`ApiError`] becomes: the routes turn requests into calls on [`Directory`], so
//! lifecycle and validation rules can be read (and changed) in one place.

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

/// A user's lifecycle status, serialised as Okta spells it (`ACTIVE`, `LOCKED_OUT`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserStatus {
    Staged,
    Provisioned,
    Active,
    Recovery,
    PasswordExpired,
    LockedOut,
    Suspended,
    Deprovisioned,
}

impl UserStatus {
    /// Okta's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Staged => "STAGED",
            UserStatus::Provisioned => "PROVISIONED",
            UserStatus::Active => "ACTIVE",
            UserStatus::Recovery => "RECOVERY",
            UserStatus::PasswordExpired => "PASSWORD_EXPIRED",
            UserStatus::LockedOut => "LOCKED_OUT",
            UserStatus::Suspended => "SUSPENDED",
            UserStatus::Deprovisioned => "DEPROVISIONED",
        }
    }
}

/// A group's type. Only `OKTA_GROUP` memberships can be changed through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GroupType {
    OktaGroup,
    AppGroup,
    BuiltIn,
}

impl GroupType {
    /// Okta's name for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupType::OktaGroup => "OKTA_GROUP",
            GroupType::AppGroup => "APP_GROUP",
            GroupType::BuiltIn => "BUILT_IN",
        }
    }
}

/// An email Okta would have sent, for assertions (`/__sim/emails`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentEmail {
    pub user_id: String,
    pub login: String,
    /// What the email is for; `activation` (the welcome flow's link).
    pub kind: &'static str,
    /// The operation that sent it: `createUser` or `activateUser`.
    pub operation: &'static str,
}

/// An Okta error: HTTP status, `errorCode`, `errorSummary` and `errorCauses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub summary: String,
    pub causes: Vec<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, summary: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_owned(),
            summary: summary.into(),
            causes: Vec::new(),
        }
    }

    pub fn with_causes(mut self, causes: Vec<String>) -> Self {
        self.causes = causes;
        self
    }

    pub fn not_found(what: &str, kind: &str) -> Self {
        ApiError::new(
            404,
            "E0000007",
            format!("Not found: Resource not found: {what} ({kind})"),
        )
    }

    /// 400 `E0000001` naming the first invalid field, one cause per problem.
    pub fn validation(field: &str, causes: Vec<String>) -> Self {
        ApiError::new(400, "E0000001", format!("Api validation failed: {field}"))
            .with_causes(causes)
    }

    pub fn malformed_body() -> Self {
        ApiError::new(400, "E0000003", "The request body was not well-formed.")
    }

    pub fn invalid_search() -> Self {
        ApiError::new(400, "E0000031", "Invalid search criteria.")
    }

    pub fn rate_limited() -> Self {
        ApiError::new(
            429,
            "E0000047",
            "API call exceeded rate limit due to too many requests.",
        )
    }

    pub fn no_permission() -> Self {
        ApiError::new(
            403,
            "E0000006",
            "You do not have permission to perform the requested action",
        )
    }

    /// The error body for an injected fault or outage: Okta's usual summary for the
    /// code, or the usual code for the status when `code` is empty.
    pub fn simulated(status: u16, code: &str) -> Self {
        let code = match (code, status) {
            ("", 401) => "E0000011",
            ("", 403) => "E0000006",
            ("", 404) => "E0000007",
            ("", 429) => "E0000047",
            ("", 400..=499) => "E0000001",
            ("", _) => "E0000009",
            (code, _) => code,
        };
        let summary = match code {
            "E0000047" => {
                return ApiError {
                    status,
                    ..ApiError::rate_limited()
                }
            }
            "E0000006" => {
                return ApiError {
                    status,
                    ..ApiError::no_permission()
                }
            }
            "E0000009" => "Internal Server Error",
            "E0000007" => "Not found: Resource not found",
            "E0000011" => "Invalid token provided",
            "E0000001" => "Api validation failed",
            _ => "Simulated fault",
        };
        ApiError::new(status, code, summary)
    }
}

/// The body Okta answers an error with. Here, beside the error, because the gate and the
/// token endpoint answer errors too, not only the routes.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "errorCode": self.code,
            "errorSummary": self.summary,
            "errorLink": self.code,
            "errorId": format!("oae{}", random_token(22)),
            "errorCauses": self.causes.iter().map(|c| json!({"errorSummary": c})).collect::<Vec<_>>(),
        });
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(body)).into_response()
    }
}

/// A user as the fake stores it.
#[derive(Debug, Clone)]
pub struct User {
    pub seq: u64,
    pub id: String,
    pub status: UserStatus,
    pub created: OffsetDateTime,
    pub activated: Option<OffsetDateTime>,
    pub status_changed: Option<OffsetDateTime>,
    pub last_updated: OffsetDateTime,
    pub password_changed: Option<OffsetDateTime>,
    pub has_password: bool,
    pub profile: Map<String, Value>,
    pub sessions_revoked: u32,
    /// Until when `search=` does not see the user (Okta's index lags writes).
    pub unsearchable_until: Option<std::time::Instant>,
}

impl User {
    /// Whether `search=` sees the user yet.
    pub fn searchable(&self) -> bool {
        self.unsearchable_until
            .is_none_or(|until| std::time::Instant::now() >= until)
    }

    pub fn login(&self) -> &str {
        self.profile
            .get("login")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn set_status(&mut self, status: UserStatus, now: OffsetDateTime) {
        self.status = status;
        self.status_changed = Some(now);
        self.last_updated = now;
    }
}

/// A group as the fake stores it.
#[derive(Debug, Clone)]
pub struct Group {
    pub seq: u64,
    pub id: String,
    pub kind: GroupType,
    pub name: String,
    pub description: Option<String>,
    pub created: OffsetDateTime,
    pub last_updated: OffsetDateTime,
    pub last_membership_updated: OffsetDateTime,
}

/// How a user is created through `createUser`.
pub struct NewUser {
    pub profile: Map<String, Value>,
    pub group_ids: Vec<String>,
    pub password: bool,
    pub activate: bool,
}

/// The whole fake org. Users and groups are kept in creation order, which is the
/// order listings return them in.
///
/// Users are only added, changed and removed through `Directory`'s methods, which keep
/// `index` and `member_set` in step; readers may walk `users` and `memberships` freely.
#[derive(Debug, Default)]
pub struct Directory {
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    /// (group id, user id), in the order the memberships were made.
    pub memberships: Vec<(String, String)>,
    next_seq: u64,
    index: UserIndex,
    /// The pairs of `memberships`, for constant-time "already a member?".
    member_set: HashSet<(String, String)>,
    /// "Edit Deactivated User Profile Updates" (off by default, as in Okta).
    pub deactivated_profile_edits: bool,
    /// How long a user made by `createUser` stays invisible to `search=`.
    pub search_lag: std::time::Duration,
}

/// Lookups of users by id and by login without walking every user: benchmarks create
/// tens of thousands, and a linear scan per request (under the store's one lock) made
/// the fake, not the service, the bottleneck.
#[derive(Debug, Default)]
struct UserIndex {
    /// id → seq.
    by_id: HashMap<String, u64>,
    /// Login in ASCII lower case (Okta compares logins ignoring case) → the seqs of the
    /// users with it; seeding may create duplicates, and the first created wins.
    by_login: HashMap<String, BTreeSet<u64>>,
}

impl UserIndex {
    fn add(&mut self, user: &User) {
        self.by_id.insert(user.id.clone(), user.seq);
        self.add_login(user.login(), user.seq);
    }

    fn remove(&mut self, user: &User) {
        self.by_id.remove(&user.id);
        self.remove_login(user.login(), user.seq);
    }

    fn add_login(&mut self, login: &str, seq: u64) {
        self.by_login
            .entry(login.to_ascii_lowercase())
            .or_default()
            .insert(seq);
    }

    fn remove_login(&mut self, login: &str, seq: u64) {
        let key = login.to_ascii_lowercase();
        if let Some(seqs) = self.by_login.get_mut(&key) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_login.remove(&key);
            }
        }
    }

    fn with_login(&self, login: &str) -> impl Iterator<Item = u64> + '_ {
        self.by_login
            .get(&login.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .copied()
    }
}

/// RFC 3339 in UTC with milliseconds, as Okta writes every timestamp.
pub fn timestamp(t: OffsetDateTime) -> String {
    // Written by hand: the generic formatters cost more than the rest of a response.
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut out = String::with_capacity(24);
    let mut digits = |value: u32, width: u32| {
        for place in (0..width).rev() {
            let digit = value / 10u32.pow(place) % 10;
            out.push(char::from(b'0' + digit as u8));
        }
    };
    digits(t.year().clamp(0, 9999) as u32, 4);
    digits(u32::from(u8::from(t.month())), 2);
    digits(u32::from(t.day()), 2);
    digits(u32::from(t.hour()), 2);
    digits(u32::from(t.minute()), 2);
    digits(u32::from(t.second()), 2);
    digits(u32::from(t.millisecond()), 3);
    // YYYYMMDDHHMMSSmmm → YYYY-MM-DDTHH:MM:SS.mmmZ
    for (at, separator) in [
        (4, '-'),
        (7, '-'),
        (10, 'T'),
        (13, ':'),
        (16, ':'),
        (19, '.'),
    ] {
        out.insert(at, separator);
    }
    out.push('Z');
    out
}

/// A random string from Okta's id alphabet.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

/// Attributes of Okta's default user profile; anything else is refused as Okta does
/// for an org without custom attributes.
#[rustfmt::skip]
const BASE_PROFILE: &[&str] = &[
    "login", "email", "secondEmail", "firstName", "lastName", "middleName",
    "honorificPrefix", "honorificSuffix", "title", "displayName", "nickName",
    "profileUrl", "primaryPhone", "mobilePhone", "streetAddress", "city", "state",
    "zipCode", "countryCode", "postalAddress", "preferredLanguage", "locale",
    "timezone", "userType", "employeeNumber", "costCenter", "organization",
    "division", "department", "managerId", "manager",
];

/// Checks a complete profile against Okta's base-profile rules.
pub fn validate_profile(profile: &Map<String, Value>) -> Result<(), ApiError> {
    // (field, cause) in Okta's order; the summary names the first field.
    let mut problems: Vec<(&str, String)> = Vec::new();
    let text = |field: &str| profile.get(field).and_then(Value::as_str).unwrap_or("");
    for field in ["login", "email", "firstName", "lastName"] {
        if text(field).trim().is_empty() {
            problems.push((field, format!("{field}: The field cannot be left blank")));
        }
    }
    let login = text("login");
    if !login.is_empty() && !(5..=100).contains(&login.chars().count()) {
        let cause = "login: The field must be between 5 and 100 characters";
        problems.push(("login", cause.into()));
    }
    if !login.is_empty() && !looks_like_email(login) {
        let cause = "login: Username must be in the form of an email address";
        problems.push(("login", cause.into()));
    }
    for field in ["email", "secondEmail"] {
        if !text(field).is_empty() && !looks_like_email(text(field)) {
            problems.push((field, format!("{field}: Does not match required pattern")));
        }
    }
    for field in ["firstName", "lastName"] {
        if text(field).chars().count() > 50 {
            problems.push((
                field,
                format!("{field}: The field cannot exceed 50 characters"),
            ));
        }
    }
    for (name, value) in profile {
        if !BASE_PROFILE.contains(&name.as_str()) {
            let cause = format!("Property name '{name}' is not defined in the profile");
            problems.push((name, cause));
        } else if !(value.is_string() || value.is_null()) {
            problems.push((name, format!("{name}: The field must be a string")));
        }
    }
    match problems.first() {
        None => Ok(()),
        Some((field, _)) => Err(ApiError::validation(
            field,
            problems.iter().map(|(_, cause)| cause.clone()).collect(),
        )),
    }
}

fn looks_like_email(value: &str) -> bool {
    matches!(value.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
}

/// 403 `E0000038`: Okta's answer to a change the user's status does not allow.
fn not_in_this_status() -> ApiError {
    ApiError::new(
        403,
        "E0000038",
        "This operation is not allowed in the user's current status.",
    )
}

fn duplicate_login() -> ApiError {
    ApiError::validation(
        "login",
        vec!["login: An object with this field already exists in the current organization".into()],
    )
}

impl Directory {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn fresh_id(&self, prefix: &str) -> String {
        loop {
            let id = format!("{prefix}{}", random_token(17));
            if !self.index.by_id.contains_key(&id) && !self.groups.iter().any(|g| g.id == id) {
                return id;
            }
        }
    }

    /// Where the user with `seq` is in `users` (kept in seq order: users are only ever
    /// appended, and removal keeps the order).
    fn position(&self, seq: u64) -> Option<usize> {
        self.users.binary_search_by_key(&seq, |u| u.seq).ok()
    }

    /// The seq of the user with this id, else of the first created with this login.
    fn seq_of(&self, id_or_login: &str) -> Option<u64> {
        self.index
            .by_id
            .get(id_or_login)
            .copied()
            .or_else(|| self.index.with_login(id_or_login).next())
    }

    /// A user by id, or by login ignoring case.
    pub fn find_user(&self, id_or_login: &str) -> Option<&User> {
        let position = self.position(self.seq_of(id_or_login)?)?;
        self.users.get(position)
    }

    fn user_mut(&mut self, id_or_login: &str) -> Result<&mut User, ApiError> {
        let index = self
            .seq_of(id_or_login)
            .and_then(|seq| self.position(seq))
            .ok_or_else(|| ApiError::not_found(id_or_login, "User"))?;
        Ok(&mut self.users[index])
    }

    pub fn find_group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    fn login_taken(&self, login: &str, except_id: Option<&str>) -> bool {
        let except = except_id.and_then(|id| self.index.by_id.get(id).copied());
        self.index.with_login(login).any(|seq| Some(seq) != except)
    }

    /// Adds a user as it is, stamping `activated` and `statusChanged` unless STAGED.
    /// Seeding (tests, admin) calls this directly, without Okta's validation.
    pub fn insert_user(&mut self, profile: Map<String, Value>, status: UserStatus) -> String {
        let now = OffsetDateTime::now_utc();
        let id = self.fresh_id("00u");
        let seq = self.next_seq();
        let stamped = (status != UserStatus::Staged).then_some(now);
        let user = User {
            seq,
            id: id.clone(),
            status,
            created: now,
            activated: stamped,
            status_changed: stamped,
            last_updated: now,
            password_changed: None,
            has_password: false,
            profile,
            sessions_revoked: 0,
            unsearchable_until: None,
        };
        self.index.add(&user);
        self.users.push(user);
        id
    }

    /// `createUser`.
    pub fn create_user(&mut self, new: NewUser) -> Result<&mut User, ApiError> {
        if new.group_ids.len() > 20 {
            return Err(
                ApiError::new(400, "E0000093", "Target count limit exceeded")
                    .with_causes(vec!["The number of group targets is too large".into()]),
            );
        }
        validate_profile(&new.profile)?;
        let login = new
            .profile
            .get("login")
            .and_then(Value::as_str)
            .unwrap_or("");
        if self.login_taken(login, None) {
            return Err(duplicate_login());
        }
        let bad_groups: Vec<String> = new
            .group_ids
            .iter()
            .filter(|id| {
                self.find_group(id)
                    .is_none_or(|g| g.kind != GroupType::OktaGroup)
            })
            .map(|id| {
                format!("groupIds: Group {id} does not exist or its memberships cannot be changed")
            })
            .collect();
        if !bad_groups.is_empty() {
            return Err(ApiError::validation("groupIds", bad_groups));
        }
        let status = match (new.activate, new.password) {
            (false, _) => UserStatus::Staged,
            (true, false) => UserStatus::Provisioned,
            (true, true) => UserStatus::Active,
        };
        let id = self.insert_user(new.profile, status);
        for group_id in new.group_ids {
            self.add_member(&group_id, &id);
        }
        let lag = self.search_lag;
        let user = self.user_mut(&id)?;
        if !lag.is_zero() {
            user.unsearchable_until = Some(std::time::Instant::now() + lag);
        }
        if new.password {
            user.has_password = true;
            user.password_changed = Some(user.created);
        }
        Ok(user)
    }

    /// `updateUser` (merge) and `replaceUser` (replace) of the profile.
    pub fn update_profile(
        &mut self,
        id_or_login: &str,
        changes: Map<String, Value>,
        replace: bool,
        password: bool,
    ) -> Result<&User, ApiError> {
        let current = self
            .find_user(id_or_login)
            .ok_or_else(|| ApiError::not_found(id_or_login, "User"))?;
        if current.status == UserStatus::Deprovisioned && !self.deactivated_profile_edits {
            return Err(not_in_this_status());
        }
        let mut profile = if replace {
            Map::new()
        } else {
            current.profile.clone()
        };
        profile.extend(changes);
        validate_profile(&profile)?;
        let login = profile.get("login").and_then(Value::as_str).unwrap_or("");
        if self.login_taken(login, Some(&current.id)) {
            return Err(duplicate_login());
        }
        let now = OffsetDateTime::now_utc();
        let position = self
            .seq_of(id_or_login)
            .and_then(|seq| self.position(seq))
            .ok_or_else(|| ApiError::not_found(id_or_login, "User"))?;
        let user = &mut self.users[position];
        let old_login = user.login().to_owned();
        user.profile = profile;
        user.last_updated = now;
        if password {
            user.has_password = true;
            user.password_changed = Some(now);
        }
        let (seq, new_login) = (user.seq, user.login().to_owned());
        self.index.remove_login(&old_login, seq);
        self.index.add_login(&new_login, seq);
        Ok(&self.users[position])
    }

    /// Sets a status directly (test helper), stamping `statusChanged`.
    pub fn force_status(&mut self, id_or_login: &str, status: UserStatus) -> bool {
        let now = OffsetDateTime::now_utc();
        match self.user_mut(id_or_login) {
            Ok(user) => {
                user.set_status(status, now);
                if status != UserStatus::Staged && user.activated.is_none() {
                    user.activated = Some(now);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Applies a lifecycle operation (`activate`, `deactivate`, …) with Okta's rules.
    pub fn lifecycle(&mut self, id: &str, action: &str) -> Result<UserStatus, ApiError> {
        use UserStatus::*;
        let now = OffsetDateTime::now_utc();
        let user = self.user_mut(id)?;
        let next = match (action, user.status) {
            ("activate", Staged | Deprovisioned) => {
                user.activated = Some(now);
                if user.has_password {
                    Active
                } else {
                    Provisioned
                }
            }
            ("activate", _) => {
                return Err(ApiError::new(
                    403,
                    "E0000016",
                    "Activation failed because the user is already active",
                ));
            }
            // Okta has been reported to answer a second deactivation with 404.
            ("deactivate", Deprovisioned) => return Err(ApiError::not_found(id, "User")),
            ("deactivate", _) => {
                user.has_password = false;
                Deprovisioned
            }
            ("suspend", Active) => Suspended,
            ("suspend", _) => {
                return Err(ApiError::validation(
                    "status",
                    vec!["Cannot suspend a user that is not ACTIVE".into()],
                ));
            }
            ("unsuspend", Suspended) => Active,
            ("unsuspend", _) => {
                return Err(ApiError::validation(
                    "status",
                    vec!["Cannot unsuspend a user that is not SUSPENDED".into()],
                ));
            }
            ("reactivate", Provisioned | Recovery) => Provisioned,
            ("reactivate", _) => {
                return Err(ApiError::new(
                    403,
                    "E0000038",
                    "This operation is not allowed in the user's current status.",
                ));
            }
            _ => return Err(ApiError::not_found(action, "Lifecycle")),
        };
        user.set_status(next, now);
        Ok(next)
    }

    /// `deleteUser`: deactivates first, deletes on the second call.
    pub fn delete_user(&mut self, id: &str) -> Result<(), ApiError> {
        let user = self.user_mut(id)?;
        if user.status != UserStatus::Deprovisioned {
            user.set_status(UserStatus::Deprovisioned, OffsetDateTime::now_utc());
            user.has_password = false;
            return Ok(());
        }
        let (id, seq) = (user.id.clone(), user.seq);
        if let Some(position) = self.position(seq) {
            let removed = self.users.remove(position);
            self.index.remove(&removed);
        }
        self.memberships.retain(|(_, member)| *member != id);
        self.member_set.retain(|(_, member)| *member != id);
        Ok(())
    }

    pub fn revoke_sessions(&mut self, id: &str) -> Result<(), ApiError> {
        self.user_mut(id)?.sessions_revoked += 1;
        Ok(())
    }

    pub fn insert_group(
        &mut self,
        name: &str,
        kind: GroupType,
        description: Option<String>,
    ) -> String {
        let now = OffsetDateTime::now_utc();
        let id = self.fresh_id("00g");
        let seq = self.next_seq();
        self.groups.push(Group {
            seq,
            id: id.clone(),
            kind,
            name: name.into(),
            description,
            created: now,
            last_updated: now,
            last_membership_updated: now,
        });
        id
    }

    /// Adds a membership with no rule checks (seeding); false if either side is unknown.
    pub fn add_member(&mut self, group_id: &str, user_id: &str) -> bool {
        let Some(user_id) = self.find_user(user_id).map(|u| u.id.clone()) else {
            return false;
        };
        let Some(group) = self.groups.iter_mut().find(|g| g.id == group_id) else {
            return false;
        };
        let pair = (group.id.clone(), user_id);
        if self.member_set.insert(pair.clone()) {
            group.last_membership_updated = OffsetDateTime::now_utc();
            self.memberships.push(pair);
        }
        true
    }

    /// `assignUserToGroup` / `unassignUserFromGroup`: only `OKTA_GROUP`s can change.
    pub fn change_membership(
        &mut self,
        group_id: &str,
        user_id: &str,
        add: bool,
    ) -> Result<(), ApiError> {
        let group = self
            .find_group(group_id)
            .ok_or_else(|| ApiError::not_found(group_id, "UserGroup"))?;
        let kind = group.kind;
        let user_id = self
            .find_user(user_id)
            .filter(|u| u.id == user_id)
            .map(|u| u.id.clone())
            .ok_or_else(|| ApiError::not_found(user_id, "User"))?;
        if kind != GroupType::OktaGroup {
            return Err(ApiError::no_permission());
        }
        // Memberships of a deactivated user can be removed, not added, unless the org
        // allows edits of deactivated users.
        let deactivated = self
            .find_user(&user_id)
            .is_some_and(|u| u.status == UserStatus::Deprovisioned);
        if add && deactivated && !self.deactivated_profile_edits {
            return Err(not_in_this_status());
        }
        if add {
            self.add_member(group_id, &user_id);
        } else {
            let before = self.memberships.len();
            self.memberships
                .retain(|(g, u)| !(g == group_id && *u == user_id));
            self.member_set
                .remove(&(group_id.to_owned(), user_id.clone()));
            if self.memberships.len() != before {
                if let Some(group) = self.groups.iter_mut().find(|g| g.id == group_id) {
                    group.last_membership_updated = OffsetDateTime::now_utc();
                }
            }
        }
        Ok(())
    }

    pub fn groups_of(&self, user_id: &str) -> Vec<&Group> {
        let ids: Vec<&str> = self
            .memberships
            .iter()
            .filter(|(_, u)| u == user_id)
            .map(|(g, _)| g.as_str())
            .collect();
        self.groups
            .iter()
            .filter(|g| ids.contains(&g.id.as_str()))
            .collect()
    }

    pub fn members_of(&self, group_id: &str) -> Vec<&User> {
        // A set: a group of 100,000 members (the reconciliation benchmark) would make a
        // list lookup per user quadratic.
        let ids: HashSet<&str> = self
            .memberships
            .iter()
            .filter(|(g, _)| g == group_id)
            .map(|(_, u)| u.as_str())
            .collect();
        self.users
            .iter()
            .filter(|u| ids.contains(&u.id.as_str()))
            .collect()
    }
}

/// The user as Okta's JSON; `origin` is the scheme and host the client used.
pub fn user_json(user: &User, origin: &str, user_type_id: &str) -> Value {
    serde_json::to_value(UserView {
        user,
        origin,
        user_type_id,
    })
    .unwrap_or_default()
}

/// The user as Okta's JSON, serialised straight from the store: answers that hold one
/// user need no intermediate `Value` (a benchmark's every hire costs one). Keys are
/// written in the sorted order of `serde_json`'s maps, so the bytes are [`user_json`]'s.
pub struct UserView<'a> {
    pub user: &'a User,
    pub origin: &'a str,
    pub user_type_id: &'a str,
}

impl Serialize for UserView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Href {
            href: String,
        }
        #[derive(Serialize)]
        struct Links {
            #[serde(rename = "self")]
            this: Href,
        }
        #[derive(Serialize)]
        struct Provider {
            name: &'static str,
            #[serde(rename = "type")]
            kind: &'static str,
        }
        #[derive(Serialize)]
        struct Empty {}
        #[derive(Serialize)]
        struct Credentials {
            #[serde(skip_serializing_if = "Option::is_none")]
            password: Option<Empty>,
            provider: Provider,
        }
        #[derive(Serialize)]
        struct TypeRef<'a> {
            id: &'a str,
        }
        let user = self.user;
        let time = |t: Option<OffsetDateTime>| t.map(timestamp);
        let mut map = serializer.serialize_map(Some(12))?;
        map.serialize_entry(
            "_links",
            &Links {
                this: Href {
                    href: format!("{}/api/v1/users/{}", self.origin, user.id),
                },
            },
        )?;
        map.serialize_entry("activated", &time(user.activated))?;
        map.serialize_entry("created", &timestamp(user.created))?;
        map.serialize_entry(
            "credentials",
            &Credentials {
                password: user.has_password.then_some(Empty {}),
                provider: Provider {
                    name: "OKTA",
                    kind: "OKTA",
                },
            },
        )?;
        map.serialize_entry("id", &user.id)?;
        map.serialize_entry("lastLogin", &Option::<()>::None)?;
        map.serialize_entry("lastUpdated", &timestamp(user.last_updated))?;
        map.serialize_entry("passwordChanged", &time(user.password_changed))?;
        map.serialize_entry("profile", &user.profile)?;
        map.serialize_entry("status", user.status.as_str())?;
        map.serialize_entry("statusChanged", &time(user.status_changed))?;
        map.serialize_entry(
            "type",
            &TypeRef {
                id: self.user_type_id,
            },
        )?;
        map.end()
    }
}

/// The group as Okta's JSON.
pub fn group_json(group: &Group, origin: &str) -> Value {
    let href = format!("{origin}/api/v1/groups/{}", group.id);
    json!({
        "id": group.id,
        "created": timestamp(group.created),
        "lastUpdated": timestamp(group.last_updated),
        "lastMembershipUpdated": timestamp(group.last_membership_updated),
        "objectClass": ["okta:user_group"],
        "type": group.kind.as_str(),
        "profile": {"name": group.name, "description": group.description},
        "_links": {"self": {"href": href}, "users": {"href": format!("{href}/users")}},
    })
}

#[cfg(test)]
mod index_tests {
    //! The lookup index must answer exactly as a walk over `users` would.

    use super::*;

    fn profile(login: &str) -> Map<String, Value> {
        let value = json!({"login": login, "email": login, "firstName": "A", "lastName": "B"});
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn create(directory: &mut Directory, login: &str) -> String {
        let new = NewUser {
            profile: profile(login),
            group_ids: vec![],
            password: false,
            activate: true,
        };
        directory.create_user(new).expect("created").id.clone()
    }

    #[test]
    fn a_changed_login_is_found_under_the_new_one_only() {
        let mut directory = Directory::default();
        let id = create(&mut directory, "old@example.com");
        let mut changes = Map::new();
        changes.insert("login".into(), json!("New@Example.com"));
        directory
            .update_profile("OLD@example.com", changes, false, false)
            .expect("updated");
        assert_eq!(
            directory.find_user("new@example.com").map(|u| &u.id),
            Some(&id)
        );
        assert!(directory.find_user("old@example.com").is_none());
        assert!(directory.login_taken("NEW@example.com", None));
        assert!(!directory.login_taken("new@example.com", Some(&id)));
        let other = create(&mut directory, "old@example.com");
        assert_eq!(
            directory.find_user("old@example.com").map(|u| &u.id),
            Some(&other)
        );
    }

    #[test]
    fn with_seeded_duplicate_logins_the_first_created_wins_until_deleted() {
        let mut directory = Directory::default();
        let first = directory.insert_user(profile("dup@example.com"), UserStatus::Active);
        let second = directory.insert_user(profile("DUP@example.com"), UserStatus::Active);
        assert_eq!(
            directory.find_user("dup@example.com").map(|u| &u.id),
            Some(&first)
        );
        directory.delete_user(&first).expect("deactivated");
        directory.delete_user(&first).expect("deleted");
        assert!(directory.find_user(&first).is_none());
        assert_eq!(
            directory.find_user("dup@example.com").map(|u| &u.id),
            Some(&second)
        );
        assert_eq!(directory.find_user(&second).map(|u| &u.id), Some(&second));
    }

    #[test]
    fn a_user_is_written_as_it_was_built_with_json() {
        let mut directory = Directory::default();
        let plain = create(&mut directory, "view@example.com");
        let staged = directory.insert_user(profile("staged@example.com"), UserStatus::Staged);
        directory
            .update_profile(&plain, Map::new(), false, true)
            .expect("password set");
        for id in [plain, staged] {
            let user = directory.find_user(&id).expect("user");
            let time = |t: Option<OffsetDateTime>| t.map(timestamp);
            let mut credentials = json!({"provider": {"type": "OKTA", "name": "OKTA"}});
            if user.has_password {
                credentials["password"] = json!({});
            }
            let expected = json!({
                "id": user.id,
                "status": user.status.as_str(),
                "created": timestamp(user.created),
                "activated": time(user.activated),
                "statusChanged": time(user.status_changed),
                "lastLogin": null,
                "lastUpdated": timestamp(user.last_updated),
                "passwordChanged": time(user.password_changed),
                "type": {"id": "oty1"},
                "profile": user.profile,
                "credentials": credentials,
                "_links": {"self": {"href": format!("http://o/api/v1/users/{}", user.id)}},
            });
            assert_eq!(user_json(user, "http://o", "oty1"), expected);
            let view = UserView {
                user,
                origin: "http://o",
                user_type_id: "oty1",
            };
            assert_eq!(
                serde_json::to_string(&view).expect("serialises"),
                expected.to_string()
            );
        }
        let t = time::macros::datetime!(2026-01-02 03:04:05.006 UTC);
        assert_eq!(timestamp(t), "2026-01-02T03:04:05.006Z");
        let offset = time::macros::datetime!(2026-01-02 03:04:05.1 +02:00);
        assert_eq!(timestamp(offset), "2026-01-02T01:04:05.100Z");
    }

    #[test]
    fn a_removed_membership_can_be_made_again() {
        let mut directory = Directory::default();
        let group = directory.insert_group("Sales", GroupType::OktaGroup, None);
        let user = create(&mut directory, "m@example.com");
        assert!(directory.add_member(&group, &user));
        assert!(directory.add_member(&group, &user));
        assert_eq!(directory.memberships.len(), 1, "no duplicate membership");
        directory
            .change_membership(&group, &user, false)
            .expect("removed");
        assert!(directory.groups_of(&user).is_empty());
        directory
            .change_membership(&group, &user, true)
            .expect("added again");
        assert_eq!(directory.groups_of(&user).len(), 1);
    }
}
