//! Pure decisions: which lifecycle steps and membership changes bring an Okta user to
//! what HR says. The provisioner reads Okta, asks these functions, and carries out the
//! answer; so every rule of the contract's section 3 is unit-tested here without I/O.

use std::fmt;
use time::OffsetDateTime;

/// An account's lifecycle state, as Okta names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountStatus {
    Staged,
    Provisioned,
    Active,
    Recovery,
    PasswordExpired,
    LockedOut,
    Suspended,
    Deprovisioned,
    /// A status this service does not know; treated as enabled, so a leaver is disabled.
    Other(String),
}

impl AccountStatus {
    /// Reads Okta's status string.
    pub fn parse(value: &str) -> Self {
        match value {
            "STAGED" => Self::Staged,
            "PROVISIONED" => Self::Provisioned,
            "ACTIVE" => Self::Active,
            "RECOVERY" => Self::Recovery,
            "PASSWORD_EXPIRED" => Self::PasswordExpired,
            "LOCKED_OUT" => Self::LockedOut,
            "SUSPENDED" => Self::Suspended,
            "DEPROVISIONED" => Self::Deprovisioned,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// What `employee.removed` does to the account (`OFFBOARDING_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffboardingMode {
    /// Deactivate the user (Okta status `DEPROVISIONED`); memberships are kept by Okta.
    #[default]
    Deactivate,
    /// Suspend the user; Okta suspends only `ACTIVE` users, so others are deactivated.
    Suspend,
    /// Deactivate, then delete the user.
    Delete,
}

impl OffboardingMode {
    /// Parses the configuration value.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "deactivate" => Some(Self::Deactivate),
            "suspend" => Some(Self::Suspend),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// One call that changes an account's lifecycle state or access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleStep {
    Activate,
    Unsuspend,
    RevokeSessions,
    Suspend,
    Deactivate,
    Delete,
}

/// What a hire does to an existing account so that it is enabled again.
pub fn rehire_step(status: &AccountStatus) -> Option<LifecycleStep> {
    match status {
        AccountStatus::Staged | AccountStatus::Deprovisioned => Some(LifecycleStep::Activate),
        AccountStatus::Suspended => Some(LifecycleStep::Unsuspend),
        _ => None,
    }
}

/// What a staged hire's activation does when its start date comes. A `STAGED` account
/// was never enabled, so it is activated (a removal meanwhile would have deactivated
/// it). A deactivated or suspended account (a rehire) is re-enabled only if its status
/// has not changed since the hire was announced: any later change — a removal, an
/// admin — wins, and when Okta does not say when it changed, nothing is done.
pub fn activation_step(
    status: &AccountStatus,
    status_changed: Option<OffsetDateTime>,
    hire_occurred_at: OffsetDateTime,
) -> Option<LifecycleStep> {
    match status {
        AccountStatus::Staged => Some(LifecycleStep::Activate),
        AccountStatus::Deprovisioned | AccountStatus::Suspended
            if status_changed.is_some_and(|changed| changed <= hire_occurred_at) =>
        {
            rehire_step(status)
        }
        _ => None,
    }
}

/// The steps that take an account from `status` to the mode's target state; empty when
/// it is already there. Sessions are ended first so that access stops before the
/// (slower, possibly failing) status change.
pub fn offboarding_steps(status: &AccountStatus, mode: OffboardingMode) -> Vec<LifecycleStep> {
    use LifecycleStep::*;
    match (mode, status) {
        (OffboardingMode::Deactivate, AccountStatus::Deprovisioned) => vec![],
        (OffboardingMode::Deactivate, _) => vec![RevokeSessions, Deactivate],
        (OffboardingMode::Suspend, AccountStatus::Suspended | AccountStatus::Deprovisioned) => {
            vec![]
        }
        (OffboardingMode::Suspend, AccountStatus::Active) => vec![RevokeSessions, Suspend],
        // Okta refuses to suspend anyone not ACTIVE; a leaver must not stay able to
        // activate or recover the account, so disable it the only other way.
        (OffboardingMode::Suspend, _) => vec![RevokeSessions, Deactivate],
        (OffboardingMode::Delete, AccountStatus::Deprovisioned) => vec![Delete],
        (OffboardingMode::Delete, _) => vec![RevokeSessions, Deactivate, Delete],
    }
}

/// Membership changes for the groups this service manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipPlan<G> {
    pub add: Vec<G>,
    pub remove: Vec<G>,
}

impl<G> MembershipPlan<G> {
    /// True when membership is already as it should be.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Makes the user's membership of `managed` groups exactly `desired`: adds what is
/// missing, removes managed groups not desired, and never touches a group outside
/// `managed` (those belong to other admins and group rules).
pub fn plan_membership<G: PartialEq + Clone>(
    current: &[G],
    desired: &[G],
    managed: &[G],
) -> MembershipPlan<G> {
    let add = desired
        .iter()
        .filter(|g| !current.contains(g))
        .cloned()
        .collect();
    let remove = current
        .iter()
        .filter(|g| managed.contains(g) && !desired.contains(g))
        .cloned()
        .collect();
    MembershipPlan { add, remove }
}

/// The contract's stale-replay rule: a hire or update replayed from the dead-letter queue
/// that is older than the account's last status change changes nothing, so that access
/// removed since stays removed.
pub fn is_stale_replay(
    replay_count: u32,
    occurred_at: OffsetDateTime,
    status_changed: Option<OffsetDateTime>,
) -> bool {
    replay_count > 0 && status_changed.is_some_and(|changed| occurred_at < changed)
}

/// The contract's ownership rule ("Trust"): an existing Okta user may be adopted or
/// changed by an event only when its `employeeNumber` is empty or is the event's
/// employee id. Anything else is someone else's account (an admin, another employee),
/// whatever its login says. Compared exactly: HR ids are identifiers, not names.
pub fn owned_by(okta_employee_number: Option<&str>, employee_id: &str) -> bool {
    match okta_employee_number.map(str::trim) {
        None | Some("") => true,
        Some(number) => number == employee_id,
    }
}

/// What was done (or found already done) for an event; rendered into the outcome's
/// `actions`, e.g. `group.assigned:Engineering-Core`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    UserCreated,
    UserActivated,
    UserReactivated,
    UserUnsuspended,
    ProfileUpdated,
    GroupAssigned(String),
    GroupRemoved(String),
    SessionsRevoked,
    UserSuspended,
    UserDeactivated,
    UserDeleted,
    SkippedStale,
    /// A staged hire will be activated at this time (RFC 3339).
    ActivationScheduled(String),
    /// A future-dated termination will be carried out at this time (RFC 3339).
    RemovalScheduled(String),
    /// The offboarding guard held the removal for an operator.
    RemovalHeld,
    /// Okta refused to edit a deactivated user's profile (the org's default); the next
    /// rehire writes it, after activating the user.
    ProfileSkippedDeactivated,
    /// Okta refused to add a deactivated user to this group (the org's default); the
    /// next rehire adds it, after activating the user.
    GroupSkippedDeactivated(String),
    /// A removal by employee id alone found nobody, and the search has been checked
    /// again until it may be trusted: nobody has that id.
    UserNotFound,
    /// A removal by employee id alone found nobody yet (Okta's search lags writes); it
    /// is checked again at this time (RFC 3339).
    RecheckScheduled(String),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::UserCreated => f.write_str("user.created"),
            Action::UserActivated => f.write_str("user.activated"),
            Action::UserReactivated => f.write_str("user.reactivated"),
            Action::UserUnsuspended => f.write_str("user.unsuspended"),
            Action::ProfileUpdated => f.write_str("profile.updated"),
            Action::GroupAssigned(name) => write!(f, "group.assigned:{name}"),
            Action::GroupRemoved(name) => write!(f, "group.removed:{name}"),
            Action::SessionsRevoked => f.write_str("sessions.revoked"),
            Action::UserSuspended => f.write_str("user.suspended"),
            Action::UserDeactivated => f.write_str("user.deactivated"),
            Action::UserDeleted => f.write_str("user.deleted"),
            Action::SkippedStale => f.write_str("skipped.stale"),
            Action::ActivationScheduled(at) => write!(f, "activation.scheduled:{at}"),
            Action::RemovalScheduled(at) => write!(f, "removal.scheduled:{at}"),
            Action::RemovalHeld => f.write_str("removal.held"),
            Action::ProfileSkippedDeactivated => f.write_str("profile.skipped:deactivated"),
            Action::GroupSkippedDeactivated(name) => {
                write!(f, "group.skipped:deactivated:{name}")
            }
            Action::UserNotFound => f.write_str("user.not_found"),
            Action::RecheckScheduled(at) => write!(f, "removal.recheck_scheduled:{at}"),
        }
    }
}

/// Why an event runs now; only hires tell these apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Purpose {
    /// The event is due: do what it says.
    #[default]
    Now,
    /// A hire whose start date is ahead: create (or adopt) the user without enabling it;
    /// it is activated at `activate_at`.
    Stage { activate_at: time::OffsetDateTime },
    /// A staged hire's start date has come: activate the user if it still waits.
    Activate,
}

/// What an event did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub okta_user_id: Option<String>,
    pub actions: Vec<Action>,
    pub unmapped_groups: Vec<String>,
    /// A removal by employee id alone (no email) found nobody. Okta's search lags
    /// writes, so that is not yet proof that nobody has the id: it is checked again for a
    /// while before it is declared done (`crate::pipeline::decisions::recheck`).
    pub nobody_by_employee_id: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use LifecycleStep::*;

    #[test]
    fn rehire_reenables_only_disabled_accounts() {
        assert_eq!(rehire_step(&AccountStatus::Deprovisioned), Some(Activate));
        assert_eq!(rehire_step(&AccountStatus::Staged), Some(Activate));
        assert_eq!(rehire_step(&AccountStatus::Suspended), Some(Unsuspend));
        for enabled in [
            AccountStatus::Active,
            AccountStatus::Provisioned,
            AccountStatus::LockedOut,
            AccountStatus::Recovery,
        ] {
            assert_eq!(rehire_step(&enabled), None, "{enabled:?}");
        }
    }

    #[test]
    fn offboarding_reaches_each_modes_target_state() {
        let active = AccountStatus::Active;
        assert_eq!(
            offboarding_steps(&active, OffboardingMode::Deactivate),
            vec![RevokeSessions, Deactivate]
        );
        assert_eq!(
            offboarding_steps(&active, OffboardingMode::Suspend),
            vec![RevokeSessions, Suspend]
        );
        assert_eq!(
            offboarding_steps(&active, OffboardingMode::Delete),
            vec![RevokeSessions, Deactivate, Delete]
        );
    }

    #[test]
    fn offboarding_an_account_already_in_the_target_state_does_nothing() {
        let gone = AccountStatus::Deprovisioned;
        assert!(offboarding_steps(&gone, OffboardingMode::Deactivate).is_empty());
        assert!(offboarding_steps(&gone, OffboardingMode::Suspend).is_empty());
        assert!(offboarding_steps(&AccountStatus::Suspended, OffboardingMode::Suspend).is_empty());
        assert_eq!(
            offboarding_steps(&gone, OffboardingMode::Delete),
            vec![Delete]
        );
    }

    #[test]
    fn suspend_mode_deactivates_what_okta_cannot_suspend() {
        assert_eq!(
            offboarding_steps(&AccountStatus::Provisioned, OffboardingMode::Suspend),
            vec![RevokeSessions, Deactivate]
        );
    }

    #[test]
    fn membership_touches_only_managed_groups() {
        let current = ["Sales", "Unmanaged", "Old-Job"];
        let desired = ["Engineering", "Sales"];
        let managed = ["Sales", "Engineering", "Old-Job"];
        let plan = plan_membership(&current, &desired, &managed);
        assert_eq!(plan.add, vec!["Engineering"]);
        assert_eq!(plan.remove, vec!["Old-Job"]);
        assert!(plan_membership(&desired, &desired, &managed).is_empty());
        assert!(!plan.is_empty());
        let only_add = plan_membership(&[], &["Sales"], &managed);
        assert!(!only_add.is_empty(), "{only_add:?}");
        let only_remove = plan_membership(&["Old-Job"], &[], &managed);
        assert!(!only_remove.is_empty(), "{only_remove:?}");
    }

    #[test]
    fn only_replays_older_than_the_last_status_change_are_stale() {
        let occurred = datetime!(2026-11-28 09:00 UTC);
        let later = Some(datetime!(2026-11-30 17:00 UTC));
        let earlier = Some(datetime!(2026-11-01 00:00 UTC));
        assert!(is_stale_replay(1, occurred, later));
        assert!(!is_stale_replay(0, occurred, later), "not a replay");
        assert!(!is_stale_replay(2, occurred, earlier));
        assert!(!is_stale_replay(1, occurred, None));
        assert!(
            !is_stale_replay(1, occurred, Some(occurred)),
            "a change at the same instant is not later than the event"
        );
    }

    #[test]
    fn actions_render_as_the_contract_shows() {
        assert_eq!(
            Action::GroupAssigned("Engineering-Core".into()).to_string(),
            "group.assigned:Engineering-Core"
        );
        assert_eq!(Action::SkippedStale.to_string(), "skipped.stale");
    }

    #[test]
    fn a_scheduled_activation_enables_only_accounts_nothing_changed_since_the_hire() {
        let hire = datetime!(2026-11-28 09:00 UTC);
        let before = Some(datetime!(2026-11-01 00:00 UTC));
        let after = Some(datetime!(2026-11-29 00:00 UTC));
        assert_eq!(
            activation_step(&AccountStatus::Staged, after, hire),
            Some(Activate)
        );
        assert_eq!(
            activation_step(&AccountStatus::Deprovisioned, before, hire),
            Some(Activate)
        );
        assert_eq!(
            activation_step(&AccountStatus::Suspended, before, hire),
            Some(Unsuspend)
        );
        assert_eq!(
            activation_step(&AccountStatus::Deprovisioned, after, hire),
            None,
            "removed after the hire was announced"
        );
        assert_eq!(
            activation_step(&AccountStatus::Deprovisioned, None, hire),
            None
        );
        assert_eq!(activation_step(&AccountStatus::Active, before, hire), None);
    }

    #[test]
    fn scheduling_actions_render_with_their_time() {
        assert_eq!(
            Action::RemovalScheduled("2026-12-01T00:00:00Z".into()).to_string(),
            "removal.scheduled:2026-12-01T00:00:00Z"
        );
        assert_eq!(Action::RemovalHeld.to_string(), "removal.held");
    }

    #[test]
    fn only_an_empty_or_equal_employee_number_may_be_adopted() {
        assert!(owned_by(None, "E-1"));
        assert!(owned_by(Some(""), "E-1"));
        assert!(owned_by(Some("  "), "E-1"));
        assert!(owned_by(Some("E-1"), "E-1"));
        assert!(!owned_by(Some("ADM-1"), "E-999"));
        assert!(!owned_by(Some("e-1"), "E-1"), "ids compare exactly");
    }

    #[test]
    fn skips_and_rechecks_render_as_documented() {
        assert_eq!(
            Action::ProfileSkippedDeactivated.to_string(),
            "profile.skipped:deactivated"
        );
        assert_eq!(
            Action::GroupSkippedDeactivated("Sales".into()).to_string(),
            "group.skipped:deactivated:Sales"
        );
        assert_eq!(Action::UserNotFound.to_string(), "user.not_found");
        assert_eq!(
            Action::RecheckScheduled("2026-12-01T00:00:02Z".into()).to_string(),
            "removal.recheck_scheduled:2026-12-01T00:00:02Z"
        );
    }

    #[test]
    fn offboarding_mode_parses_case_insensitively() {
        assert_eq!(
            OffboardingMode::parse("Suspend"),
            Some(OffboardingMode::Suspend)
        );
        assert_eq!(
            OffboardingMode::parse(" deactivate "),
            Some(OffboardingMode::Deactivate)
        );
        assert_eq!(
            OffboardingMode::parse("DELETE"),
            Some(OffboardingMode::Delete)
        );
        assert_eq!(OffboardingMode::parse("archive"), None);
    }
}
