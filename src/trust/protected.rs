//! Protected accounts: Okta groups (`PROTECTED_GROUPS`, by name or id) and logins
//! (`PROTECTED_LOGINS`) whose members no HR event may change, adopt or disable. Such an
//! event fails as `conflict` (dead-lettered, never retried), with a WARN line.
//!
//! Why a cache: asking Okta for a user's groups on every event would add a call to every
//! leaver (who must stay within three: find, revoke sessions, deactivate) and spend the
//! same rate-limit bucket hires use. The groups' membership is read in the background
//! every `PROTECTED_REFRESH_SECS` instead, and checked in memory.
//!
//! Fail safe: until the first refresh has succeeded, nothing is known about who is
//! protected, so no event is provisioned (the worker waits, `/readyz` says why). A later
//! refresh that fails keeps the last membership read; a protected group that no longer
//! exists is an error, never an empty group.

use super::TrustMetrics;
use crate::domain::event::printable;
use crate::okta::{OktaClient, OktaError};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the protected groups are read by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// The longest wait between attempts while the first read has not succeeded yet.
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(5);

/// What the administrator protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedSettings {
    /// Okta group names or ids (`00g…`).
    pub groups: Vec<String>,
    /// Logins, lower-case.
    pub logins: BTreeSet<String>,
    /// How often the groups' membership is read again.
    pub refresh: Duration,
}

impl Default for ProtectedSettings {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            logins: BTreeSet::new(),
            refresh: DEFAULT_REFRESH,
        }
    }
}

/// Why the protected groups could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtectedError {
    #[error("cannot read the protected groups from Okta")]
    Okta(#[from] OktaError),
    #[error("protected group {0:?} (PROTECTED_GROUPS) does not exist in Okta")]
    MissingGroup(String),
}

/// The members of the protected groups, as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    user_ids: HashSet<String>,
    logins: HashSet<String>,
}

impl Members {
    /// Members from (id, login) pairs; logins compared case-insensitively.
    pub fn new<'a>(users: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Self {
        let mut members = Self::default();
        for (id, login) in users {
            members.user_ids.insert(id.to_owned());
            if let Some(login) = login {
                members.logins.insert(login.to_lowercase());
            }
        }
        members
    }

    /// How many accounts are protected by group.
    pub fn len(&self) -> usize {
        self.user_ids.len()
    }

    /// Whether no account is protected by group.
    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty()
    }
}

/// Whether an account is protected (pure): its login is listed, or it is a member of a
/// protected group (by id, or by login for an account the event names but Okta has not
/// been asked about).
pub fn is_protected(
    logins: &BTreeSet<String>,
    members: &Members,
    user_id: Option<&str>,
    login: Option<&str>,
) -> bool {
    let login = login.map(str::to_lowercase);
    login
        .as_ref()
        .is_some_and(|l| logins.contains(l) || members.logins.contains(l))
        || user_id.is_some_and(|id| members.user_ids.contains(id))
}

/// The answer to "may an event touch this account?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not protected.
    Allowed,
    /// Protected: refuse as `conflict`.
    Protected,
    /// The protected groups have not been read yet: wait, change nothing.
    NotLoaded,
}

struct Inner {
    settings: ProtectedSettings,
    members: RwLock<Option<Arc<Members>>>,
    loaded: watch::Sender<bool>,
    metrics: TrustMetrics,
}

/// The protected accounts, shared by the worker, the provisioner and the refresher.
#[derive(Clone)]
pub struct ProtectedAccounts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProtectedAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectedAccounts")
            .field("groups", &self.inner.settings.groups)
            .field("logins", &self.inner.settings.logins.len())
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl ProtectedAccounts {
    /// The accounts `settings` protects; loaded at once when no group is named.
    pub fn new(settings: ProtectedSettings, metrics: TrustMetrics) -> Self {
        let no_groups = settings.groups.is_empty();
        let (loaded, _) = watch::channel(no_groups);
        Self {
            inner: Arc::new(Inner {
                members: RwLock::new(no_groups.then(|| Arc::new(Members::default()))),
                settings,
                loaded,
                metrics,
            }),
        }
    }

    /// Whether any group is named (and must be read before events run).
    pub fn has_groups(&self) -> bool {
        !self.inner.settings.groups.is_empty()
    }

    /// Whether the protected groups' membership is known.
    pub fn is_loaded(&self) -> bool {
        *self.inner.loaded.borrow()
    }

    /// Waits until the membership is known.
    pub async fn wait_loaded(&self) {
        let mut loaded = self.inner.loaded.subscribe();
        let _ = loaded.wait_for(|l| *l).await;
    }

    fn members(&self) -> Option<Arc<Members>> {
        match self.inner.members.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether an event may touch the account `user_id` / `login` (either may be
    /// unknown yet). A refusal is logged (WARN) and counted here, where it is decided.
    pub fn verdict(&self, event_id: &str, user_id: Option<&str>, login: Option<&str>) -> Verdict {
        // A listed login needs no Okta read to be refused.
        let listed = login.is_some_and(|l| self.inner.settings.logins.contains(&l.to_lowercase()));
        let protected = if listed {
            true
        } else {
            let Some(members) = self.members() else {
                return Verdict::NotLoaded;
            };
            is_protected(&self.inner.settings.logins, &members, user_id, login)
        };
        if !protected {
            return Verdict::Allowed;
        }
        self.inner.metrics.refused("protected_account");
        tracing::warn!(
            event_id = printable(event_id),
            okta_user_id = user_id,
            login = login.map(printable),
            "event refused: the account is protected (PROTECTED_GROUPS / PROTECTED_LOGINS)"
        );
        Verdict::Protected
    }

    /// Reads every protected group's members once and puts them in force.
    ///
    /// # Errors
    /// [`ProtectedError`]; the membership in force is then unchanged.
    pub async fn refresh(&self, okta: &OktaClient) -> Result<usize, ProtectedError> {
        let mut users = Vec::new();
        for group in &self.inner.settings.groups {
            let ids: Vec<String> = if looks_like_group_id(group) {
                okta.get_group(group)
                    .await?
                    .map(|g| g.id)
                    .into_iter()
                    .collect()
            } else {
                okta.find_groups_by_name(group)
                    .await?
                    .into_iter()
                    .filter(|g| g.profile.name == *group)
                    .map(|g| g.id)
                    .collect()
            };
            if ids.is_empty() {
                return Err(ProtectedError::MissingGroup(printable(group)));
            }
            for id in ids {
                users.extend(okta.list_group_users(&id).await?);
            }
        }
        let members = Members::new(users.iter().map(|u| {
            (
                u.id.as_str(),
                u.profile.get("login").and_then(serde_json::Value::as_str),
            )
        }));
        let count = members.len();
        match self.inner.members.write() {
            Ok(mut slot) => *slot = Some(Arc::new(members)),
            Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(members)),
        }
        self.inner.loaded.send_replace(true);
        Ok(count)
    }

    /// Refreshes until `stop`: at once, then every `PROTECTED_REFRESH_SECS` (sooner
    /// while the first read has not succeeded).
    pub async fn run_refresh(self, okta: OktaClient, stop: CancellationToken) {
        if !self.has_groups() {
            return;
        }
        loop {
            let wait = match self.refresh(&okta).await {
                Ok(count) => {
                    tracing::debug!(protected_accounts = count, "protected groups read");
                    self.inner.settings.refresh
                }
                Err(e) => {
                    self.inner.metrics.protected_refresh_failed();
                    let loaded = self.is_loaded();
                    tracing::error!(
                        error = crate::telemetry::error_chain(&e),
                        keeping_last = loaded,
                        "cannot read the protected groups; {}",
                        if loaded {
                            "the last membership read stays in force"
                        } else {
                            "no event is processed until they are read"
                        }
                    );
                    if loaded {
                        self.inner.settings.refresh
                    } else {
                        self.inner.settings.refresh.min(FIRST_LOAD_RETRY)
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Okta group ids start with `00g` and are 20 characters of letters and digits.
fn looks_like_group_id(value: &str) -> bool {
    value.len() == 20
        && value.starts_with("00g")
        && value.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|l| l.to_lowercase()).collect()
    }

    #[test]
    fn listed_logins_and_group_members_are_protected() {
        let members = Members::new([("00uadmin", Some("Root@Example.com")), ("00unologin", None)]);
        let listed = logins(&["super@example.com"]);
        assert!(is_protected(
            &listed,
            &members,
            None,
            Some("SUPER@example.com")
        ));
        assert!(is_protected(&listed, &members, Some("00uadmin"), None));
        assert!(is_protected(
            &listed,
            &members,
            Some("00unologin"),
            Some("x@example.com")
        ));
        assert!(is_protected(
            &listed,
            &members,
            None,
            Some("root@example.com")
        ));
        assert!(!is_protected(
            &listed,
            &members,
            Some("00uother"),
            Some("ada@example.com")
        ));
        assert!(!is_protected(&listed, &members, None, None));
    }

    #[test]
    fn nothing_is_allowed_before_the_groups_are_read_but_listed_logins_are_refused_at_once() {
        let accounts = ProtectedAccounts::new(
            ProtectedSettings {
                groups: vec!["Admins".into()],
                logins: logins(&["root@example.com"]),
                refresh: DEFAULT_REFRESH,
            },
            TrustMetrics::new(),
        );
        assert!(!accounts.is_loaded());
        assert_eq!(
            accounts.verdict("e", Some("00u1"), Some("ada@example.com")),
            Verdict::NotLoaded
        );
        assert_eq!(
            accounts.verdict("e", None, Some("ROOT@example.com")),
            Verdict::Protected
        );
    }

    #[test]
    fn without_groups_the_accounts_are_known_at_once() {
        let accounts = ProtectedAccounts::new(ProtectedSettings::default(), TrustMetrics::new());
        assert!(accounts.is_loaded());
        assert_eq!(
            accounts.verdict("e", Some("00u1"), Some("ada@example.com")),
            Verdict::Allowed
        );
    }

    #[test]
    fn group_ids_are_told_from_names() {
        assert!(looks_like_group_id("00g1abcdefghijklmnop"));
        assert!(!looks_like_group_id("Okta Administrators"));
        assert!(!looks_like_group_id("00g-short"));
    }
}
