//! The group directory: resolves the mapping's targets (names or ids) to Okta groups,
//! and caches them so that a hire costs one Okta call, not one per group.
//!
//! Names are resolved by exact name. Each target has its own cell, so that under
//! concurrency one target costs one Okta lookup (the others wait for it). Entries
//! expire after a TTL so renamed or recreated groups are picked up. Misses and errors
//! are not cached: an admin who creates a missing group can replay at once.

use super::client::{OktaClient, OktaGroup};
use super::error::OktaError;
use crate::domain::mapping::GroupTarget;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// An Okta group the service may assign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedGroup {
    pub id: String,
    pub name: String,
}

/// Why a mapping target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GroupLookupError {
    #[error("mapped Okta group {0} does not exist in Okta")]
    Missing(GroupTarget),
    #[error("mapped Okta group {target} is of type {group_type}; only OKTA_GROUP groups accept memberships")]
    NotAssignable {
        target: GroupTarget,
        group_type: String,
    },
    #[error("mapped Okta group {target} is ambiguous: {count} OKTA_GROUP groups have that name")]
    Ambiguous { target: GroupTarget, count: usize },
    /// Okta's search compares names ignoring case, the mapping exactly: say what was
    /// found, so that the admin fixes the spelling rather than creating a second group.
    #[error(
        "mapped Okta group {target} does not exist in Okta: found '{found}', which differs in case"
    )]
    DiffersInCase { target: GroupTarget, found: String },
    #[error(transparent)]
    Okta(#[from] OktaError),
}

/// Cache counters, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Lookups made again because a resolved entry had outlived its TTL.
    pub refreshes: u64,
}

struct Slot {
    created: Instant,
    cell: OnceCell<ResolvedGroup>,
}

/// Resolves and caches mapping targets.
pub struct GroupDirectory {
    okta: OktaClient,
    ttl: Duration,
    slots: Mutex<HashMap<GroupTarget, Arc<Slot>>>,
    stats: Arc<Mutex<CacheStats>>,
}

/// Reads a directory's [`CacheStats`] without holding the directory: what `/metrics`
/// needs of the cache, and nothing more.
#[derive(Clone)]
pub struct CacheStatsReader(Arc<Mutex<CacheStats>>);

impl CacheStatsReader {
    /// Hits, misses and refreshes so far.
    pub fn get(&self) -> CacheStats {
        self.0.lock().map(|s| *s).unwrap_or_default()
    }
}

impl GroupDirectory {
    /// A directory whose entries live `ttl`.
    pub fn new(okta: OktaClient, ttl: Duration) -> Self {
        Self {
            okta,
            ttl,
            slots: Mutex::new(HashMap::new()),
            stats: Arc::new(Mutex::new(CacheStats::default())),
        }
    }

    /// Hits, misses and refreshes so far.
    pub fn stats(&self) -> CacheStats {
        self.stats_reader().get()
    }

    /// A handle that reads the counters as they grow.
    pub fn stats_reader(&self) -> CacheStatsReader {
        CacheStatsReader(Arc::clone(&self.stats))
    }

    fn slot(&self, target: &GroupTarget) -> Arc<Slot> {
        let mut slots = match self.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fresh = |slot: &Arc<Slot>| slot.created.elapsed() < self.ttl;
        match slots.get(target) {
            Some(slot) if fresh(slot) => Arc::clone(slot),
            stale => {
                if stale.is_some_and(|slot| slot.cell.initialized()) {
                    if let Ok(mut stats) = self.stats.lock() {
                        stats.refreshes += 1;
                    }
                }
                let slot = Arc::new(Slot {
                    created: Instant::now(),
                    cell: OnceCell::new(),
                });
                slots.insert(target.clone(), Arc::clone(&slot));
                slot
            }
        }
    }

    /// Resolves one target to an assignable Okta group.
    ///
    /// # Errors
    /// [`GroupLookupError`]: missing, not an `OKTA_GROUP`, ambiguous, or Okta failed.
    pub async fn resolve(&self, target: &GroupTarget) -> Result<ResolvedGroup, GroupLookupError> {
        let slot = self.slot(target);
        if let Some(group) = slot.cell.get() {
            self.count(true);
            return Ok(group.clone());
        }
        let group = slot
            .cell
            .get_or_try_init(|| async {
                self.count(false);
                self.lookup(target).await
            })
            .await?;
        Ok(group.clone())
    }

    fn count(&self, hit: bool) {
        if let Ok(mut stats) = self.stats.lock() {
            if hit {
                stats.hits += 1;
            } else {
                stats.misses += 1;
            }
        }
    }

    async fn lookup(&self, target: &GroupTarget) -> Result<ResolvedGroup, GroupLookupError> {
        let group = match target {
            GroupTarget::Id(id) => self
                .okta
                .get_group(id)
                .await?
                .ok_or_else(|| GroupLookupError::Missing(target.clone()))?,
            GroupTarget::Name(name) => {
                let found = self.okta.find_groups_by_name(name).await?;
                let found_ignoring_case = found
                    .iter()
                    .find(|g| {
                        g.profile.name != *name
                            && g.profile.name.to_lowercase() == name.to_lowercase()
                    })
                    .map(|g| g.profile.name.clone());
                // Okta's search ignores case (and a fake or a proxy might match prefixes):
                // only the exact name becomes a membership.
                let same_name: Vec<OktaGroup> = found
                    .into_iter()
                    .filter(|g| g.profile.name == *name)
                    .collect();
                let okta_groups: Vec<&OktaGroup> = same_name
                    .iter()
                    .filter(|g| g.group_type == "OKTA_GROUP")
                    .collect();
                match (okta_groups.as_slice(), same_name.first()) {
                    ([one], _) => (*one).clone(),
                    ([], None) => {
                        return Err(match found_ignoring_case {
                            Some(found) => GroupLookupError::DiffersInCase {
                                target: target.clone(),
                                found,
                            },
                            None => GroupLookupError::Missing(target.clone()),
                        })
                    }
                    ([], Some(other)) => other.clone(),
                    (many, _) => {
                        return Err(GroupLookupError::Ambiguous {
                            target: target.clone(),
                            count: many.len(),
                        })
                    }
                }
            }
        };
        if group.group_type != "OKTA_GROUP" {
            return Err(GroupLookupError::NotAssignable {
                target: target.clone(),
                group_type: group.group_type,
            });
        }
        Ok(ResolvedGroup {
            id: group.id,
            name: group.profile.name,
        })
    }
}

// These tests resolve groups against the fake Okta, so they need its feature.
#[cfg(all(test, feature = "okta-sim"))]
mod tests {
    use super::*;
    use crate::okta::OktaClientSettings;
    use crate::okta_sim::{GroupType, OktaSim, SimConfig};
    use crate::secret::Secret;

    async fn directory(ttl: Duration) -> (OktaSim, GroupDirectory) {
        let sim = OktaSim::start(SimConfig::default())
            .await
            .expect("fake Okta starts");
        sim.create_group("Sales-App-Access", GroupType::OktaGroup);
        let client = OktaClient::new(
            reqwest::Url::parse(&sim.base_url()).expect("url"),
            &Secret::new(sim.api_token()),
            OktaClientSettings::default(),
        )
        .expect("client");
        (sim, GroupDirectory::new(client, ttl))
    }

    #[tokio::test]
    async fn a_fresh_entry_is_a_hit_and_an_expired_one_a_refresh() {
        let target = GroupTarget::Name("Sales-App-Access".into());

        let (_sim, cached) = directory(Duration::from_secs(300)).await;
        cached.resolve(&target).await.expect("resolves");
        cached.resolve(&target).await.expect("resolves");
        assert_eq!(
            cached.stats(),
            CacheStats {
                hits: 1,
                misses: 1,
                refreshes: 0
            }
        );

        let (_sim, expiring) = directory(Duration::ZERO).await;
        expiring.resolve(&target).await.expect("resolves");
        expiring.resolve(&target).await.expect("resolves");
        assert_eq!(
            expiring.stats(),
            CacheStats {
                hits: 0,
                misses: 2,
                refreshes: 1
            }
        );
    }

    #[tokio::test]
    async fn a_group_found_only_in_another_case_is_named_in_the_error() {
        let (_sim, directory) = directory(Duration::from_secs(300)).await;
        let target = GroupTarget::Name("sales-app-access".into());
        let error = directory
            .resolve(&target)
            .await
            .expect_err("not the exact name");
        assert!(
            error
                .to_string()
                .contains("found 'Sales-App-Access', which differs in case"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_missing_group_is_not_a_refresh_when_looked_up_again() {
        let (_sim, directory) = directory(Duration::ZERO).await;
        let target = GroupTarget::Name("Nobody-Made-This".into());
        assert!(directory.resolve(&target).await.is_err());
        assert!(directory.resolve(&target).await.is_err());
        assert_eq!(directory.stats().refreshes, 0, "nothing was cached");
        assert_eq!(directory.stats().misses, 2);
    }
}
