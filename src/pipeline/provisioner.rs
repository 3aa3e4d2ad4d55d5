//! The provisioner: carries out one validated HR event against Okta.
//!
//! It reads Okta, asks the pure rules in `domain::plan` what to do, and does it. Every
//! path converges: running it again for the same event (a redelivery after a crash, a
//! duplicate publish) finds the work done and does nothing more.

use crate::domain::event::{printable, EmployeeRecord, EventBody, HrEvent, LeaverRef};
use crate::domain::mapping::GroupMapping;
use crate::domain::outcome::{ErrorKind, Failure};
use crate::domain::plan::{self, AccountStatus, Action, LifecycleStep, OffboardingMode};
// What provisioning is asked to do and reports: plain data, in the domain so that the
// decisions need nothing of the provisioner.
pub use crate::domain::plan::{Purpose, Report};
use crate::okta::groups::{GroupDirectory, GroupLookupError, ResolvedGroup};
use crate::okta::{OktaClient, OktaError, OktaUser};
use crate::trust::protected::Verdict;
use crate::trust::{ProtectedAccounts, ProtectedSettings, TrustMetrics};
use serde_json::{Map, Value};
use std::sync::{Arc, RwLock};

/// Okta's limit of `groupIds` in one `createUser` call.
const MAX_GROUPS_ON_CREATE: usize = 20;

/// The mapping in force; replaceable at run time (a reload swaps the whole mapping, so an
/// event always sees one consistent version).
#[derive(Clone, Default)]
pub struct SharedMapping(Arc<RwLock<Arc<GroupMapping>>>);

impl SharedMapping {
    /// Wraps a mapping.
    pub fn new(mapping: GroupMapping) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(mapping))))
    }

    /// The mapping in force now.
    pub fn current(&self) -> Arc<GroupMapping> {
        match self.0.read() {
            Ok(m) => Arc::clone(&m),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts a new mapping in force.
    pub fn replace(&self, mapping: GroupMapping) {
        let mut slot = match self.0.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(mapping);
    }
}

/// Facts about the delivery that change what an event may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryFacts {
    /// `x-replay-count` of a message replayed from the dead-letter queue; 0 otherwise.
    pub replay_count: u32,
    /// Why the event runs now (see `super::decisions::schedule`).
    pub purpose: Purpose,
    /// A hire published before a removal of the same employee that has already been
    /// carried out (the leavers lane overtook it, see `crate::pipeline::lanes`): the account must
    /// end offboarded, as publication order leaves it, and never be enabled on the way.
    pub overtaken_by_removal: bool,
}

/// Why an event could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Mapping(GroupLookupError),
    #[error(transparent)]
    Okta(#[from] OktaError),
    #[error("{count} Okta users have employeeNumber {employee_id:?}; refusing to guess which one leaves")]
    AmbiguousEmployee { employee_id: String, count: usize },
    #[error("Okta reported login {login:?} as taken but returned no such user; will retry")]
    VanishedUser { login: String },
    /// The account found by login belongs to someone else in HR's eyes (contract
    /// section 3, "Trust"); nothing was changed.
    #[error("Okta user {login} has employeeNumber '{okta_employee_number}', not this event's employee id '{event_employee_id}'; an account HR does not own is never adopted or changed (see docs/okta.md, \"Changing an employee id\")")]
    NotOwned {
        login: String,
        okta_employee_number: String,
        event_employee_id: String,
    },
    #[error("account {account} is protected (PROTECTED_GROUPS / PROTECTED_LOGINS): no event may change, adopt or disable it")]
    Protected { account: String },
    #[error("the protected groups have not been read from Okta yet; will retry")]
    ProtectedNotLoaded,
}

impl From<GroupLookupError> for ProvisionError {
    fn from(error: GroupLookupError) -> Self {
        match error {
            // Okta failing while we look a group up is an Okta failure, not the mapping's.
            GroupLookupError::Okta(okta) => ProvisionError::Okta(okta),
            other => ProvisionError::Mapping(other),
        }
    }
}

impl ProvisionError {
    /// The failure as reported in outcomes and dead-letter headers.
    pub fn to_failure(&self) -> Failure {
        match self {
            ProvisionError::Okta(okta) => okta.to_failure(),
            ProvisionError::Mapping(_) => Failure::new(ErrorKind::Mapping, self.to_string()),
            ProvisionError::AmbiguousEmployee { .. } => {
                Failure::new(ErrorKind::Okta, self.to_string())
            }
            ProvisionError::VanishedUser { .. } => {
                Failure::new(ErrorKind::Transient, self.to_string())
            }
            ProvisionError::NotOwned { .. } => Failure::new(ErrorKind::Conflict, self.to_string()),
            ProvisionError::Protected { .. } => Failure::new(ErrorKind::Conflict, self.to_string()),
            ProvisionError::ProtectedNotLoaded => {
                Failure::new(ErrorKind::Transient, self.to_string())
            }
        }
    }
}

/// Carries out HR events against Okta.
pub struct Provisioner {
    okta: OktaClient,
    groups: GroupDirectory,
    mapping: SharedMapping,
    offboarding: OffboardingMode,
    /// Accounts no event may touch (`crate::trust::protected`).
    protected: ProtectedAccounts,
}

impl Provisioner {
    /// A provisioner with its own group cache.
    pub fn new(
        okta: OktaClient,
        groups: GroupDirectory,
        mapping: SharedMapping,
        offboarding: OffboardingMode,
    ) -> Self {
        Self {
            okta,
            groups,
            mapping,
            offboarding,
            protected: ProtectedAccounts::new(ProtectedSettings::default(), TrustMetrics::new()),
        }
    }

    /// The same provisioner, refusing events for `protected` accounts.
    pub fn with_protected(self, protected: ProtectedAccounts) -> Self {
        Self { protected, ..self }
    }

    /// The protected accounts, which must be loaded before events run.
    pub fn protected(&self) -> &ProtectedAccounts {
        &self.protected
    }

    /// Refuses (as `conflict`) an event for a protected account; `user` is the Okta
    /// user found, if any; `login` the login the event names.
    fn refuse_protected(
        &self,
        event: &HrEvent,
        user: Option<&OktaUser>,
    ) -> Result<(), ProvisionError> {
        let named = event.email().map(|e| e.as_str());
        let found_login = user.and_then(|u| u.profile.get("login").and_then(Value::as_str));
        let user_id = user.map(|u| u.id.as_str());
        for login in [named, found_login] {
            match self
                .protected
                .verdict(event.event_id.as_str(), user_id, login)
            {
                Verdict::Allowed => {}
                Verdict::NotLoaded => return Err(ProvisionError::ProtectedNotLoaded),
                Verdict::Protected => {
                    return Err(ProvisionError::Protected {
                        account: format!(
                            "{:?}",
                            crate::domain::event::printable(
                                login.or(user_id).unwrap_or("(unknown)")
                            )
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    /// The Okta client, for health probes.
    pub fn okta(&self) -> &OktaClient {
        &self.okta
    }

    /// The group cache, for metrics and warm-up.
    pub fn groups(&self) -> &GroupDirectory {
        &self.groups
    }

    /// The mapping in force, for reloads.
    pub fn mapping(&self) -> &SharedMapping {
        &self.mapping
    }

    /// Resolves every mapped group once, so the first hires find them cached; returns the
    /// problems found (they fail only the events that need those groups).
    pub async fn warm_group_cache(&self) -> Vec<GroupLookupError> {
        let mut problems = Vec::new();
        for target in self.mapping.current().all_targets() {
            if let Err(problem) = self.groups.resolve(&target).await {
                problems.push(problem);
            }
        }
        problems
    }

    /// Carries out one event.
    ///
    /// # Errors
    /// [`ProvisionError`]; its `to_failure().kind` says whether a retry may help.
    #[tracing::instrument(name = "provision", skip_all, fields(event_id = event.event_id.as_str(), event_type = %event.event_type()))]
    pub async fn provision(
        &self,
        event: &HrEvent,
        facts: DeliveryFacts,
    ) -> Result<Report, ProvisionError> {
        // A listed login is refused before any Okta call.
        self.refuse_protected(event, None)?;
        match &event.body {
            EventBody::Added(record) if facts.purpose == Purpose::Activate => {
                self.activate_scheduled(event, record).await
            }
            EventBody::Added(record) => self.hire(event, record, facts).await,
            EventBody::Updated(record) => self.update(event, record, facts).await,
            EventBody::Removed { leaver, .. } => self.offboard(event, leaver).await,
        }
    }

    async fn hire(
        &self,
        event: &HrEvent,
        record: &EmployeeRecord,
        facts: DeliveryFacts,
    ) -> Result<Report, ProvisionError> {
        let mapping = self.mapping.current();
        let resolved = mapping.resolve(&record.groups);
        let desired = self.resolve_all(&resolved.targets).await?;
        let mut report = Report {
            unmapped_groups: resolved.unmapped,
            ..Report::default()
        };
        let (on_create, later) = desired.split_at(desired.len().min(MAX_GROUPS_ON_CREATE));
        let ids: Vec<String> = on_create.iter().map(|g| g.id.clone()).collect();
        // Before the start date the account exists, with its groups, but is not enabled;
        // overtaken by its removal, it is created STAGED (never enabled), then offboarded.
        let staging = matches!(facts.purpose, Purpose::Stage { .. });
        match self
            .okta
            .create_user(
                &okta_profile(record),
                &ids,
                !staging && !facts.overtaken_by_removal,
            )
            .await
        {
            Ok(user) => {
                report.actions.push(Action::UserCreated);
                report.actions.extend(
                    on_create
                        .iter()
                        .map(|g| Action::GroupAssigned(g.name.clone())),
                );
                for group in later {
                    self.okta.assign_to_group(&group.id, &user.id).await?;
                    report
                        .actions
                        .push(Action::GroupAssigned(group.name.clone()));
                }
                report.okta_user_id = Some(user.id.clone());
                if facts.overtaken_by_removal {
                    self.apply_offboarding(&user, &mut report).await?;
                }
                Ok(report)
            }
            Err(e) if e.is_duplicate_login() => {
                let login = record.email.as_str();
                let user = self.okta.get_user(login).await?.ok_or_else(|| {
                    ProvisionError::VanishedUser {
                        login: login.to_owned(),
                    }
                })?;
                check_owned(&user, record.id.as_str())?;
                self.refuse_protected(event, Some(&user))?;
                report.okta_user_id = Some(user.id.clone());
                if plan::is_stale_replay(
                    facts.replay_count,
                    event.occurred_at,
                    user.status_changed_at(),
                ) {
                    report.actions.push(Action::SkippedStale);
                    return Ok(report);
                }
                // Okta's order for a rehire (contract section 3): a deactivated user may
                // lose memberships but, in a default org, gains none and keeps its
                // profile until it is active again. Stale access goes first, so the
                // account is never enabled with a previous job's groups.
                let changes = self.membership_changes(&user, &desired).await?;
                self.remove_stale(&user.id, &changes, &mut report).await?;
                let mut status = user.account_status();
                if !staging && !facts.overtaken_by_removal {
                    status = self
                        .enable(&user.id, &status, plan::rehire_step(&status), &mut report)
                        .await?;
                }
                // Staged or overtaken, a deactivated user stays so: what Okta refuses now
                // is written when it is activated (`activate_scheduled`, or the next hire).
                self.write_profile_and_groups(&user, &status, record, &changes.add, &mut report)
                    .await?;
                if facts.overtaken_by_removal {
                    self.apply_offboarding(&user, &mut report).await?;
                }
                Ok(report)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn update(
        &self,
        event: &HrEvent,
        record: &EmployeeRecord,
        facts: DeliveryFacts,
    ) -> Result<Report, ProvisionError> {
        let mapping = self.mapping.current();
        let resolved = mapping.resolve(&record.groups);
        let desired = self.resolve_all(&resolved.targets).await?;
        let mut report = Report {
            unmapped_groups: resolved.unmapped,
            ..Report::default()
        };
        let leaver_ref = LeaverRef {
            id: Some(record.id.clone()),
            email: Some(record.email.clone()),
        };
        let Some((user, found_by)) = self.find_user(&leaver_ref).await? else {
            return Ok(report);
        };
        if found_by == FoundBy::Login {
            check_owned(&user, record.id.as_str())?;
        }
        self.refuse_protected(event, Some(&user))?;
        report.okta_user_id = Some(user.id.clone());
        if plan::is_stale_replay(
            facts.replay_count,
            event.occurred_at,
            user.status_changed_at(),
        ) {
            report.actions.push(Action::SkippedStale);
            return Ok(report);
        }
        // Never a status change: on a deactivated user, what Okta refuses is skipped
        // and said so (the next rehire writes it).
        let changes = self.membership_changes(&user, &desired).await?;
        self.remove_stale(&user.id, &changes, &mut report).await?;
        self.write_profile_and_groups(
            &user,
            &user.account_status(),
            record,
            &changes.add,
            &mut report,
        )
        .await?;
        Ok(report)
    }

    /// A staged hire's start date has come: enable the account if it still waits for
    /// it (`plan::activation_step`); a removal since, or any later status change,
    /// cancels the activation.
    async fn activate_scheduled(
        &self,
        event: &HrEvent,
        record: &EmployeeRecord,
    ) -> Result<Report, ProvisionError> {
        let mut report = Report::default();
        let who = LeaverRef {
            id: Some(record.id.clone()),
            email: Some(record.email.clone()),
        };
        let Some((user, found_by)) = self.find_user(&who).await? else {
            return Ok(report);
        };
        if found_by == FoundBy::Login {
            check_owned(&user, record.id.as_str())?;
        }
        self.refuse_protected(event, Some(&user))?;
        report.okta_user_id = Some(user.id.clone());
        let status = user.account_status();
        let Some(step) =
            plan::activation_step(&status, user.status_changed_at(), event.occurred_at)
        else {
            return Ok(report);
        };
        // As a rehire: stale access off, enable, then what a deactivated user could not
        // be given when the hire was staged.
        let mapping = self.mapping.current();
        let resolved = mapping.resolve(&record.groups);
        let desired = self.resolve_all(&resolved.targets).await?;
        report.unmapped_groups = resolved.unmapped;
        let changes = self.membership_changes(&user, &desired).await?;
        self.remove_stale(&user.id, &changes, &mut report).await?;
        let status = self
            .enable(&user.id, &status, Some(step), &mut report)
            .await?;
        self.write_profile_and_groups(&user, &status, record, &changes.add, &mut report)
            .await?;
        Ok(report)
    }

    /// Carries out an enabling step the plan chose for a user now in `status`; returns
    /// the status the user is in afterwards.
    async fn enable(
        &self,
        user_id: &str,
        status: &AccountStatus,
        step: Option<LifecycleStep>,
        report: &mut Report,
    ) -> Result<AccountStatus, ProvisionError> {
        match step {
            Some(LifecycleStep::Activate) => {
                // False when Okta says the user is already active: nothing done.
                if self.okta.activate_user(user_id).await? {
                    report
                        .actions
                        .push(if *status == AccountStatus::Deprovisioned {
                            Action::UserReactivated
                        } else {
                            Action::UserActivated
                        });
                }
                // Activated without a password: PROVISIONED until the user signs in.
                Ok(AccountStatus::Provisioned)
            }
            Some(LifecycleStep::Unsuspend) => {
                self.okta.unsuspend_user(user_id).await?;
                report.actions.push(Action::UserUnsuspended);
                Ok(AccountStatus::Active)
            }
            _ => Ok(status.clone()),
        }
    }

    async fn offboard(
        &self,
        event: &HrEvent,
        leaver: &LeaverRef,
    ) -> Result<Report, ProvisionError> {
        let mut report = Report::default();
        let Some((user, found_by)) = self.find_user(leaver).await? else {
            // Found by login, "nobody" is Okta's consistent answer; by the lagging
            // search alone, it may not be yet.
            report.nobody_by_employee_id = leaver.email.is_none() && leaver.id.is_some();
            return Ok(report);
        };
        if let (FoundBy::Login, Some(id)) = (found_by, &leaver.id) {
            check_owned(&user, id.as_str())?;
        }
        self.refuse_protected(event, Some(&user))?;
        report.okta_user_id = Some(user.id.clone());
        self.apply_offboarding(&user, &mut report).await?;
        Ok(report)
    }

    /// Takes a found user to the offboarding mode's target state.
    async fn apply_offboarding(
        &self,
        user: &OktaUser,
        report: &mut Report,
    ) -> Result<(), ProvisionError> {
        for step in plan::offboarding_steps(&user.account_status(), self.offboarding) {
            match step {
                LifecycleStep::RevokeSessions => {
                    self.okta.revoke_sessions(&user.id).await?;
                    report.actions.push(Action::SessionsRevoked);
                }
                LifecycleStep::Deactivate => {
                    if self.okta.deactivate_user(&user.id).await? {
                        report.actions.push(Action::UserDeactivated);
                    }
                }
                LifecycleStep::Suspend => {
                    self.okta.suspend_user(&user.id).await?;
                    report.actions.push(Action::UserSuspended);
                }
                LifecycleStep::Delete => {
                    if self.okta.delete_user(&user.id).await? {
                        report.actions.push(Action::UserDeleted);
                    }
                }
                LifecycleStep::Activate | LifecycleStep::Unsuspend => {}
            }
        }
        Ok(())
    }

    /// Finds a user by login (email) first, else by `profile.employeeNumber`, and says
    /// which found it (a user found by login may belong to another employee).
    async fn find_user(
        &self,
        who: &LeaverRef,
    ) -> Result<Option<(OktaUser, FoundBy)>, ProvisionError> {
        if let Some(email) = &who.email {
            if let Some(user) = self.okta.get_user(email.as_str()).await? {
                return Ok(Some((user, FoundBy::Login)));
            }
        }
        let Some(id) = &who.id else {
            return Ok(None);
        };
        let mut found = self.okta.find_users_by_employee_number(id.as_str()).await?;
        // The search is exact, but only trust an exact, same-value match.
        found.retain(|u| {
            u.profile.get("employeeNumber").and_then(Value::as_str) == Some(id.as_str())
        });
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop().map(|user| (user, FoundBy::EmployeeNumber))),
            count => Err(ProvisionError::AmbiguousEmployee {
                employee_id: id.as_str().to_owned(),
                count,
            }),
        }
    }

    async fn resolve_all(
        &self,
        targets: &[crate::domain::mapping::GroupTarget],
    ) -> Result<Vec<ResolvedGroup>, ProvisionError> {
        let mut groups: Vec<ResolvedGroup> = Vec::with_capacity(targets.len());
        for target in targets {
            let group = self.groups.resolve(target).await?;
            if !groups.iter().any(|g| g.id == group.id) {
                groups.push(group);
            }
        }
        Ok(groups)
    }

    /// The ids of every mapped group that exists: the groups this service manages.
    async fn managed_group_ids(&self) -> Result<Vec<String>, ProvisionError> {
        let mut ids = Vec::new();
        for target in self.mapping.current().all_targets() {
            match self.groups.resolve(&target).await {
                Ok(group) => ids.push(group.id),
                // A mapped group Okta lacks has no members to remove.
                Err(GroupLookupError::Okta(e)) => return Err(e.into()),
                Err(_) => {}
            }
        }
        Ok(ids)
    }

    /// What must change in the user's membership of mapped groups: stale ones out,
    /// missing ones in. Groups no mapping names are never touched.
    async fn membership_changes(
        &self,
        user: &OktaUser,
        desired: &[ResolvedGroup],
    ) -> Result<MembershipChanges, ProvisionError> {
        let managed = self.managed_group_ids().await?;
        let current_groups = self.okta.list_user_groups(&user.id).await?;
        let current: Vec<String> = current_groups.iter().map(|g| g.id.clone()).collect();
        let desired_ids: Vec<String> = desired.iter().map(|g| g.id.clone()).collect();
        let plan = plan::plan_membership(&current, &desired_ids, &managed);
        let named = |id: &String| ResolvedGroup {
            id: id.clone(),
            name: current_groups
                .iter()
                .find(|g| g.id == *id)
                .map(|g| g.profile.name.clone())
                .or_else(|| desired.iter().find(|g| g.id == *id).map(|g| g.name.clone()))
                .unwrap_or_else(|| id.clone()),
        };
        Ok(MembershipChanges {
            remove: plan.remove.iter().map(named).collect(),
            add: plan.add.iter().map(named).collect(),
        })
    }

    /// Removes stale mapped memberships; Okta allows it in any status.
    async fn remove_stale(
        &self,
        user_id: &str,
        changes: &MembershipChanges,
        report: &mut Report,
    ) -> Result<(), ProvisionError> {
        for group in &changes.remove {
            self.okta.remove_from_group(&group.id, user_id).await?;
            report
                .actions
                .push(Action::GroupRemoved(group.name.clone()));
        }
        Ok(())
    }

    /// Writes the profile, then adds the missing mapped groups. A user in `status`
    /// `DEPROVISIONED` may be refused both (403 `E0000038`, Okta's default): each refusal
    /// is skipped and named in the report, never a failure; an org that allows edits of
    /// deactivated users gets them.
    async fn write_profile_and_groups(
        &self,
        user: &OktaUser,
        status: &AccountStatus,
        record: &EmployeeRecord,
        add: &[ResolvedGroup],
        report: &mut Report,
    ) -> Result<(), ProvisionError> {
        let deactivated = *status == AccountStatus::Deprovisioned;
        let refused = |e: &OktaError| deactivated && e.is(403, "E0000038");
        let changes = profile_changes(&user.profile, &okta_profile(record));
        if !changes.is_empty() {
            match self.okta.update_profile(&user.id, &changes).await {
                Ok(_) => report.actions.push(Action::ProfileUpdated),
                Err(e) if refused(&e) => report.actions.push(Action::ProfileSkippedDeactivated),
                Err(e) => return Err(e.into()),
            }
        }
        for group in add {
            match self.okta.assign_to_group(&group.id, &user.id).await {
                Ok(()) => report
                    .actions
                    .push(Action::GroupAssigned(group.name.clone())),
                Err(e) if refused(&e) => report
                    .actions
                    .push(Action::GroupSkippedDeactivated(group.name.clone())),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// How [`Provisioner::find_user`] found a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FoundBy {
    /// By login: the account may belong to someone else (see [`check_owned`]).
    Login,
    /// By `employeeNumber`: the account is the employee's by definition.
    EmployeeNumber,
}

/// Membership changes with the groups' names, for the report.
struct MembershipChanges {
    remove: Vec<ResolvedGroup>,
    add: Vec<ResolvedGroup>,
}

/// The contract's ownership rule (`plan::owned_by`) as an error naming both ids.
fn check_owned(user: &OktaUser, employee_id: &str) -> Result<(), ProvisionError> {
    let number = user.profile.get("employeeNumber").and_then(Value::as_str);
    if plan::owned_by(number, employee_id) {
        return Ok(());
    }
    let login = user
        .profile
        .get("login")
        .and_then(Value::as_str)
        .unwrap_or(&user.id);
    Err(ProvisionError::NotOwned {
        login: printable(login),
        okta_employee_number: printable(number.unwrap_or_default()),
        event_employee_id: printable(employee_id),
    })
}

/// The Okta profile HR's record describes (contract section 2): `login` = `email`,
/// names, `employeeNumber`, and the optional attributes of Okta's base profile.
pub fn okta_profile(record: &EmployeeRecord) -> Map<String, Value> {
    let mut profile = Map::new();
    let mut put = |key: &str, value: &str| {
        profile.insert(key.to_owned(), Value::String(value.to_owned()));
    };
    put("login", record.email.as_str());
    put("email", record.email.as_str());
    put("firstName", &record.first_name);
    put("lastName", &record.last_name);
    put("employeeNumber", record.id.as_str());
    if let Some(department) = &record.department {
        put("department", department);
    }
    if let Some(title) = &record.title {
        put("title", title);
    }
    if let Some(manager) = &record.manager_email {
        // HR identifies the manager by email; Okta's base profile has `managerId` (an
        // identifier) and `manager` (a display name). The email serves as both.
        put("managerId", manager.as_str());
        put("manager", manager.as_str());
    }
    profile
}

/// The fields of `wanted` whose value differs from `current`; logins and emails compare
/// case-insensitively, as Okta does.
pub fn profile_changes(
    current: &Map<String, Value>,
    wanted: &Map<String, Value>,
) -> Map<String, Value> {
    wanted
        .iter()
        .filter(|(key, value)| {
            let now = current.get(key.as_str());
            match (key.as_str(), now.and_then(Value::as_str), value.as_str()) {
                ("login" | "email", Some(a), Some(b)) => !a.eq_ignore_ascii_case(b),
                _ => now != Some(value),
            }
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_differing_profile_fields_are_sent() {
        let current = json!({"login": "ADA@example.com", "email": "ada@example.com", "firstName": "Ada", "lastName": "Byron", "title": "Eng"});
        let wanted = json!({"login": "ada@example.com", "email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace"});
        let changes = profile_changes(
            current.as_object().expect("object"),
            wanted.as_object().expect("object"),
        );
        assert_eq!(Value::Object(changes), json!({"lastName": "Lovelace"}));
    }
}
