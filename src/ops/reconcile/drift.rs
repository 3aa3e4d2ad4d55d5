//! The drift between what HR's roster says and what Okta holds, per employee.
//!
//! Pure: plain values in, findings out, no Okta and no broker, so every rule below is a
//! unit test. What counts as drift follows what the service itself does for an event:
//! the wanted profile is `provisioner::okta_profile` of the roster's record and is
//! compared with `provisioner::profile_changes`; the wanted groups are the mapping's
//! targets for the roster's HR groups, compared only among mapped groups (the service
//! never touches others).

use crate::domain::event::EventType;
use crate::domain::plan::AccountStatus;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Index of a mapped Okta group in the run's resolved list.
pub type GroupIx = u16;

/// The kinds of finding, in the order a report shows them: a missed leaver first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// An enabled Okta user in scope whom the roster does not have: a missed leaver.
    Orphan,
    /// In the roster, no Okta user.
    Missing,
    /// In the roster, the Okta user deactivated or suspended.
    Disabled,
    /// Mapped-group membership differs from what the roster's groups map to.
    Groups,
    /// Profile fields the service writes differ.
    Profile,
    /// An Okta user in a mapped group with no `employeeNumber`.
    Unmatched,
}

impl DriftKind {
    /// Every kind, in report order.
    pub const ALL: [DriftKind; 6] = [
        DriftKind::Orphan,
        DriftKind::Missing,
        DriftKind::Disabled,
        DriftKind::Groups,
        DriftKind::Profile,
        DriftKind::Unmatched,
    ];

    /// The kind's name in reports, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Orphan => "orphan",
            DriftKind::Missing => "missing",
            DriftKind::Disabled => "disabled",
            DriftKind::Groups => "groups",
            DriftKind::Profile => "profile",
            DriftKind::Unmatched => "unmatched",
        }
    }
}

/// What the roster wants for one employee, in Okta's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted {
    /// The profile the service would write (`provisioner::okta_profile`).
    pub profile: Map<String, Value>,
    /// The mapped groups the employee's HR groups map to.
    pub groups: BTreeSet<GroupIx>,
}

/// What Okta holds for one user.
#[derive(Debug, Clone, Copy)]
pub struct OktaAccount<'a> {
    pub status: &'a AccountStatus,
    /// The profile fields the service writes, as Okta has them.
    pub profile: &'a Map<String, Value>,
    /// The mapped groups the user is a member of.
    pub groups: &'a BTreeSet<GroupIx>,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Orphan {
        status: String,
    },
    Missing,
    Disabled {
        status: String,
    },
    Groups {
        /// Mapped groups the user is in and should not be.
        extra: Vec<GroupIx>,
        /// Mapped groups the user should be in and is not.
        missing: Vec<GroupIx>,
    },
    /// The names of the differing profile fields (values are not repeated: a report is
    /// read by more people than the directory).
    Profile {
        fields: Vec<String>,
    },
    Unmatched,
}

impl Finding {
    /// The finding's kind.
    pub fn kind(&self) -> DriftKind {
        match self {
            Finding::Orphan { .. } => DriftKind::Orphan,
            Finding::Missing => DriftKind::Missing,
            Finding::Disabled { .. } => DriftKind::Disabled,
            Finding::Groups { .. } => DriftKind::Groups,
            Finding::Profile { .. } => DriftKind::Profile,
            Finding::Unmatched => DriftKind::Unmatched,
        }
    }
}

/// Whether an account can be used to sign in: everything but deactivated and suspended
/// (a status this service does not know counts as enabled, as it does for a leaver).
pub fn is_enabled(status: &AccountStatus) -> bool {
    !matches!(
        status,
        AccountStatus::Deprovisioned | AccountStatus::Suspended
    )
}

/// Okta's name of a status, for reports.
pub fn status_name(status: &AccountStatus) -> String {
    match status {
        AccountStatus::Staged => "STAGED".into(),
        AccountStatus::Provisioned => "PROVISIONED".into(),
        AccountStatus::Active => "ACTIVE".into(),
        AccountStatus::Recovery => "RECOVERY".into(),
        AccountStatus::PasswordExpired => "PASSWORD_EXPIRED".into(),
        AccountStatus::LockedOut => "LOCKED_OUT".into(),
        AccountStatus::Suspended => "SUSPENDED".into(),
        AccountStatus::Deprovisioned => "DEPROVISIONED".into(),
        AccountStatus::Other(other) => other.clone(),
    }
}

/// The findings for an employee the roster has, given the Okta user with that
/// employee number (if any).
pub fn compare_employee(wanted: &Wanted, okta: Option<OktaAccount<'_>>) -> Vec<Finding> {
    let Some(okta) = okta else {
        return vec![Finding::Missing];
    };
    let mut findings = Vec::new();
    if !is_enabled(okta.status) {
        findings.push(Finding::Disabled {
            status: status_name(okta.status),
        });
    }
    let extra: Vec<GroupIx> = okta.groups.difference(&wanted.groups).copied().collect();
    let missing: Vec<GroupIx> = wanted.groups.difference(okta.groups).copied().collect();
    if !extra.is_empty() || !missing.is_empty() {
        findings.push(Finding::Groups { extra, missing });
    }
    let changes = crate::pipeline::provisioner::profile_changes(okta.profile, &wanted.profile);
    if !changes.is_empty() {
        findings.push(Finding::Profile {
            fields: changes.keys().cloned().collect(),
        });
    }
    findings
}

/// The finding for an Okta user in scope (with an employee number) whom the roster does
/// not have: an orphan when enabled; a disabled one is a leaver done right.
pub fn compare_unlisted(status: &AccountStatus) -> Option<Finding> {
    is_enabled(status).then(|| Finding::Orphan {
        status: status_name(status),
    })
}

/// Which corrective event repairs an employee's findings, if any: a removal for an
/// orphan; a hire (which adopts, reactivates and sets groups and profile) for a missing
/// or disabled employee; an update for group or profile drift. With `only_groups`,
/// only group drift is repaired. An unmatched user has no HR identity to act for.
pub fn fix_for(kinds: &[DriftKind], only_groups: bool) -> Option<EventType> {
    let has = |kind| kinds.contains(&kind);
    if only_groups {
        return has(DriftKind::Groups).then_some(EventType::Updated);
    }
    if has(DriftKind::Orphan) {
        Some(EventType::Removed)
    } else if has(DriftKind::Missing) || has(DriftKind::Disabled) {
        Some(EventType::Added)
    } else if has(DriftKind::Groups) || has(DriftKind::Profile) {
        Some(EventType::Updated)
    } else {
        None
    }
}

/// The share of the users in scope that would be orphans; a share above the limit
/// means the roster is more likely truncated than the company halved.
pub fn orphan_share(orphans: u64, users_in_scope: u64) -> f64 {
    if users_in_scope == 0 {
        0.0
    } else {
        orphans as f64 / users_in_scope as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn groups(ixs: &[GroupIx]) -> BTreeSet<GroupIx> {
        ixs.iter().copied().collect()
    }

    fn ada() -> Map<String, Value> {
        profile(json!({
            "login": "ada@example.com", "email": "ada@example.com",
            "firstName": "Ada", "lastName": "Lovelace", "employeeNumber": "E-1",
        }))
    }

    #[test]
    fn an_employee_okta_does_not_have_is_missing() {
        let wanted = Wanted::default();
        assert_eq!(compare_employee(&wanted, None), vec![Finding::Missing]);
    }

    #[test]
    fn an_employee_in_step_has_no_findings() {
        let wanted = Wanted {
            profile: ada(),
            groups: groups(&[0, 2]),
        };
        let status = AccountStatus::Active;
        let mut okta_profile = ada();
        // Okta compares logins ignoring case, and so does the service.
        okta_profile.insert("login".into(), json!("ADA@example.com"));
        let okta = OktaAccount {
            status: &status,
            profile: &okta_profile,
            groups: &groups(&[0, 2]),
        };
        assert!(compare_employee(&wanted, Some(okta)).is_empty());
    }

    #[test]
    fn deactivated_and_suspended_employees_are_disabled() {
        let wanted = Wanted {
            profile: ada(),
            groups: BTreeSet::new(),
        };
        for status in [AccountStatus::Deprovisioned, AccountStatus::Suspended] {
            let okta = OktaAccount {
                status: &status,
                profile: &ada(),
                groups: &BTreeSet::new(),
            };
            assert_eq!(
                compare_employee(&wanted, Some(okta)),
                vec![Finding::Disabled {
                    status: status_name(&status)
                }]
            );
        }
        for status in [
            AccountStatus::Active,
            AccountStatus::Provisioned,
            AccountStatus::Staged,
        ] {
            assert!(is_enabled(&status));
        }
    }

    #[test]
    fn extra_and_missing_mapped_groups_are_group_drift() {
        let wanted = Wanted {
            profile: ada(),
            groups: groups(&[0, 1]),
        };
        let status = AccountStatus::Active;
        let okta = OktaAccount {
            status: &status,
            profile: &ada(),
            groups: &groups(&[1, 3]),
        };
        assert_eq!(
            compare_employee(&wanted, Some(okta)),
            vec![Finding::Groups {
                extra: vec![3],
                missing: vec![0]
            }]
        );
    }

    #[test]
    fn only_the_fields_the_service_writes_are_profile_drift() {
        let mut wanted_profile = ada();
        wanted_profile.insert("title".into(), json!("Engineer"));
        let wanted = Wanted {
            profile: wanted_profile,
            groups: BTreeSet::new(),
        };
        let mut okta_profile = ada();
        okta_profile.insert("lastName".into(), json!("Byron"));
        let status = AccountStatus::Active;
        let okta = OktaAccount {
            status: &status,
            profile: &okta_profile,
            groups: &BTreeSet::new(),
        };
        assert_eq!(
            compare_employee(&wanted, Some(okta)),
            vec![Finding::Profile {
                fields: vec!["lastName".into(), "title".into()]
            }]
        );
    }

    #[test]
    fn an_enabled_user_the_roster_lacks_is_an_orphan_a_disabled_one_is_not() {
        assert_eq!(
            compare_unlisted(&AccountStatus::Active),
            Some(Finding::Orphan {
                status: "ACTIVE".into()
            })
        );
        assert_eq!(compare_unlisted(&AccountStatus::Deprovisioned), None);
        assert_eq!(compare_unlisted(&AccountStatus::Suspended), None);
    }

    #[test]
    fn each_finding_has_its_repair() {
        use DriftKind::*;
        assert_eq!(fix_for(&[Orphan], false), Some(EventType::Removed));
        assert_eq!(fix_for(&[Missing], false), Some(EventType::Added));
        assert_eq!(fix_for(&[Disabled, Groups], false), Some(EventType::Added));
        assert_eq!(fix_for(&[Profile], false), Some(EventType::Updated));
        assert_eq!(fix_for(&[Groups, Profile], false), Some(EventType::Updated));
        assert_eq!(fix_for(&[Unmatched], false), None);
        assert_eq!(fix_for(&[], false), None);
    }

    #[test]
    fn only_groups_repairs_group_drift_and_nothing_else() {
        use DriftKind::*;
        assert_eq!(fix_for(&[Groups, Profile], true), Some(EventType::Updated));
        for kinds in [
            &[Orphan][..],
            &[Missing],
            &[Disabled],
            &[Profile],
            &[Unmatched],
        ] {
            assert_eq!(fix_for(kinds, true), None, "{kinds:?}");
        }
    }

    #[test]
    fn the_orphan_share_is_of_the_users_in_scope() {
        assert_eq!(orphan_share(0, 0), 0.0);
        assert!((orphan_share(5, 100) - 0.05).abs() < 1e-9);
        assert!(orphan_share(60, 100) > 0.1);
    }
}
