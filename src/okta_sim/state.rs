//! The fake org's directory (users, groups, memberships) and Okta's rules over it.
//!
//! Everything here is plain data and plain functions, free of HTTP: the routes turn
//! requests into calls on [`Directory`] and its [`ApiError`]s into Okta error bodies,
//! so lifecycle and validation rules can be read (and changed) in one place.

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::{GroupType, UserStatus};

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
}

impl User {
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
#[derive(Debug, Default)]
pub struct Directory {
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    /// (group id, user id), in the order the memberships were made.
    pub memberships: Vec<(String, String)>,
    next_seq: u64,
}

/// RFC 3339 in UTC with milliseconds, as Okta writes every timestamp.
pub fn timestamp(t: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
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
            if !self.users.iter().any(|u| u.id == id) && !self.groups.iter().any(|g| g.id == id) {
                return id;
            }
        }
    }

    /// A user by id, or by login ignoring case.
    pub fn find_user(&self, id_or_login: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id_or_login).or_else(|| {
            self.users
                .iter()
                .find(|u| u.login().eq_ignore_ascii_case(id_or_login))
        })
    }

    fn user_mut(&mut self, id_or_login: &str) -> Result<&mut User, ApiError> {
        let index = self
            .find_user(id_or_login)
            .map(|found| found.seq)
            .and_then(|seq| self.users.iter().position(|u| u.seq == seq))
            .ok_or_else(|| ApiError::not_found(id_or_login, "User"))?;
        Ok(&mut self.users[index])
    }

    pub fn find_group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    fn login_taken(&self, login: &str, except_id: Option<&str>) -> bool {
        self.users
            .iter()
            .any(|u| u.login().eq_ignore_ascii_case(login) && Some(u.id.as_str()) != except_id)
    }

    /// Adds a user as it is, stamping `activated` and `statusChanged` unless STAGED.
    /// Seeding (tests, admin) calls this directly, without Okta's validation.
    pub fn insert_user(&mut self, profile: Map<String, Value>, status: UserStatus) -> String {
        let now = OffsetDateTime::now_utc();
        let id = self.fresh_id("00u");
        let seq = self.next_seq();
        let stamped = (status != UserStatus::Staged).then_some(now);
        self.users.push(User {
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
        });
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
        let user = self.user_mut(&id)?;
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
        let user = self.user_mut(id_or_login)?;
        user.profile = profile;
        user.last_updated = now;
        if password {
            user.has_password = true;
            user.password_changed = Some(now);
        }
        Ok(user)
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
        let id = user.id.clone();
        self.users.retain(|u| u.id != id);
        self.memberships.retain(|(_, member)| *member != id);
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
        if !self.memberships.contains(&pair) {
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
        if add {
            self.add_member(group_id, &user_id);
        } else {
            let before = self.memberships.len();
            self.memberships
                .retain(|(g, u)| !(g == group_id && *u == user_id));
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
        let ids: Vec<&str> = self
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
    let time = |t: Option<OffsetDateTime>| t.map(timestamp);
    let mut credentials = json!({"provider": {"type": "OKTA", "name": "OKTA"}});
    if user.has_password {
        credentials["password"] = json!({});
    }
    json!({
        "id": user.id,
        "status": user.status.as_str(),
        "created": timestamp(user.created),
        "activated": time(user.activated),
        "statusChanged": time(user.status_changed),
        "lastLogin": null,
        "lastUpdated": timestamp(user.last_updated),
        "passwordChanged": time(user.password_changed),
        "type": {"id": user_type_id},
        "profile": user.profile,
        "credentials": credentials,
        "_links": {"self": {"href": format!("{origin}/api/v1/users/{}", user.id)}},
    })
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
