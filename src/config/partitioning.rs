//! Partitioned mode: events spread over `PARTITIONS` single-active-consumer queues by
//! employee, every replica consuming all of them (see ARCHITECTURE.md).

use super::{invalid, read, ConfigError};
use crate::domain::partition::{index_from_host_name, ReplicaSlot};
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize)]
struct RawPartitionEnv {
    partitions: Option<u16>,
    replicas: Option<u16>,
    replica_index: Option<u16>,
    partition_standby_delay_ms: Option<u64>,
    hostname: Option<String>,
}

/// Partitioned mode: events spread over `partitions` single-active-consumer queues by
/// employee, every replica consuming all of them (see ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioning {
    /// Number of partition queues (`PARTITIONS`), at least 1.
    pub partitions: u16,
    /// This replica's place among its peers (`REPLICA_INDEX`, `REPLICAS`).
    pub slot: ReplicaSlot,
    /// How long a replica waits before subscribing, as a standby, to the partitions it
    /// does not prefer (`PARTITION_STANDBY_DELAY_MS`).
    pub standby_delay: Duration,
}

/// The most partitions accepted; each is a quorum queue with a consumer per replica.
pub const MAX_PARTITIONS: u16 = 256;

/// `PARTITIONS`, `REPLICAS`, `REPLICA_INDEX` (else derived from `HOSTNAME`) and
/// `PARTITION_STANDBY_DELAY_MS`. The replica variables mean nothing without `PARTITIONS`
/// and are refused alone, so a half-done scale-out configuration is noticed.
pub(super) fn from_vars(vars: &[(String, String)]) -> Result<Option<Partitioning>, ConfigError> {
    let raw: RawPartitionEnv = read(vars)?;
    let Some(partitions) = raw.partitions else {
        for (variable, set) in [
            ("REPLICAS", raw.replicas.is_some()),
            ("REPLICA_INDEX", raw.replica_index.is_some()),
            (
                "PARTITION_STANDBY_DELAY_MS",
                raw.partition_standby_delay_ms.is_some(),
            ),
        ] {
            if set {
                return Err(invalid(
                    variable,
                    "is set, but PARTITIONS is not; it only applies in partitioned mode",
                ));
            }
        }
        return Ok(None);
    };
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(invalid(
            "PARTITIONS",
            format!("must be between 1 and {MAX_PARTITIONS}"),
        ));
    }
    let replicas = raw.replicas.unwrap_or(1);
    if replicas == 0 {
        return Err(invalid("REPLICAS", "must be at least 1"));
    }
    let index = match (raw.replica_index, raw.hostname.as_deref()) {
        (Some(index), _) if index >= replicas => {
            return Err(invalid(
                "REPLICA_INDEX",
                format!("must be below REPLICAS ({replicas})"),
            ))
        }
        (Some(index), _) => index,
        (None, Some(host)) => index_from_host_name(host, replicas),
        (None, None) => 0,
    };
    Ok(Some(Partitioning {
        partitions,
        slot: ReplicaSlot { index, replicas },
        standby_delay: Duration::from_millis(raw.partition_standby_delay_ms.unwrap_or(3_000)),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{error, vars, OKTA};
    use super::super::Settings;
    use super::*;

    #[test]
    fn partitioned_mode_is_off_by_default_and_read_with_its_replica_slot() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(settings.partitioning, None);

        let mut pairs = OKTA.to_vec();
        pairs.extend([
            ("PARTITIONS", "6"),
            ("REPLICAS", "3"),
            ("REPLICA_INDEX", "2"),
        ]);
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        let partitioning = settings.partitioning.expect("partitioned");
        assert_eq!(partitioning.partitions, 6);
        assert_eq!(
            partitioning.slot,
            ReplicaSlot {
                index: 2,
                replicas: 3
            }
        );
        assert_eq!(partitioning.standby_delay, Duration::from_secs(3));

        let mut pairs = OKTA.to_vec();
        pairs.extend([
            ("PARTITIONS", "4"),
            ("REPLICAS", "2"),
            ("HOSTNAME", "iam-provisioner-1"),
        ]);
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert_eq!(settings.partitioning.expect("partitioned").slot.index, 1);
    }

    #[test]
    fn partitioning_mistakes_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("PARTITIONS", "0")], "PARTITIONS"),
            (&[("PARTITIONS", "1000")], "PARTITIONS"),
            (&[("PARTITIONS", "many")], "PARTITIONS"),
            (&[("PARTITIONS", "4"), ("REPLICAS", "0")], "REPLICAS"),
            (
                &[
                    ("PARTITIONS", "4"),
                    ("REPLICAS", "3"),
                    ("REPLICA_INDEX", "3"),
                ],
                "REPLICA_INDEX",
            ),
            (&[("REPLICAS", "3")], "REPLICAS"),
            (&[("REPLICA_INDEX", "1")], "REPLICA_INDEX"),
        ];
        for (extra, variable) in cases {
            let mut pairs = OKTA.to_vec();
            pairs.extend_from_slice(extra);
            let message = error(&pairs, false);
            assert!(message.contains(variable), "{extra:?} → {message}");
        }
    }
}
