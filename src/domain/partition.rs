//! Partitioned mode, the decisions without the broker: which hash key a message carries
//! to the consistent-hash exchange, and which partitions a replica prefers to own.
//!
//! The hash key must put every event of one employee in one partition, because
//! single-active-consumer keeps order only within a queue. HR's employee id is the one
//! field that is stable for the life of an employee (an email can change with a name) and
//! present in every hire and update, so it is the key. A removal may carry only the email
//! (the contract allows it); it is keyed by the case-folded email then, and is ordered
//! only with events keyed the same way (docs/scaling.md says so). A message with neither
//! (unreadable, or missing both) is keyed by its event id or message id, so that it lands
//! in some partition where the worker dead-letters it by the contract's validation rules,
//! exactly as in unpartitioned mode.

use serde::Deserialize;

/// What a message is hashed by; [`HashKey::header_value`] is what the exchange sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `employee.id`, the normal case.
    EmployeeId(String),
    /// The case-folded `employee.email` of an event without an id (a removal by email).
    Email(String),
    /// No employee could be read: the event id, message id, or nothing at all.
    Unkeyed(Option<String>),
}

impl HashKey {
    /// The header value the consistent-hash exchange hashes: a pseudonym (truncated
    /// SHA-256) of [`HashKey::plain_value`], not the id or email itself, because the header
    /// stays with the message in every partition queue, dead-letter copy and management-UI
    /// view. The same key always gives the same value, so routing is as stable as before.
    pub fn header_value(&self) -> String {
        super::pseudonym::pseudonym(&self.plain_value())
    }

    /// The key in clear, prefixed, so an id can never collide with an email or an event id
    /// by accident. Never put on the wire: see [`HashKey::header_value`].
    pub fn plain_value(&self) -> String {
        match self {
            HashKey::EmployeeId(id) => format!("id:{id}"),
            HashKey::Email(email) => format!("email:{email}"),
            HashKey::Unkeyed(Some(id)) => format!("event:{id}"),
            HashKey::Unkeyed(None) => "unkeyed".to_owned(),
        }
    }

    /// A label for logs and metrics (fixed set).
    pub fn kind(&self) -> &'static str {
        match self {
            HashKey::EmployeeId(_) => "employee_id",
            HashKey::Email(_) => "email",
            HashKey::Unkeyed(_) => "unkeyed",
        }
    }
}

/// The part of the contract's JSON the intake reads; everything else is ignored here and
/// judged by the worker.
#[derive(Deserialize)]
struct Probe {
    event_id: Option<serde_json::Value>,
    employee: Option<ProbeEmployee>,
}

#[derive(Deserialize)]
struct ProbeEmployee {
    id: Option<serde_json::Value>,
    email: Option<serde_json::Value>,
}

/// Longest key value taken from a message; longer ones are treated as unreadable (the
/// worker refuses them anyway) so a header never grows with hostile input.
const MAX_KEY_CHARS: usize = 255;

fn usable(value: Option<&serde_json::Value>) -> Option<String> {
    let text = value?.as_str()?.trim();
    let ok = !text.is_empty()
        && text.chars().count() <= MAX_KEY_CHARS
        && !text.chars().any(char::is_control);
    ok.then(|| text.to_owned())
}

/// The hash key of a message body. `message_id` is the AMQP property, used when the body
/// has no readable event id. Bodies over `max_body_bytes` are not parsed.
pub fn hash_key(body: &[u8], message_id: Option<&str>, max_body_bytes: usize) -> HashKey {
    let fallback = || {
        HashKey::Unkeyed(
            message_id
                .map(str::trim)
                .filter(|m| !m.is_empty() && m.chars().count() <= MAX_KEY_CHARS)
                .map(str::to_owned),
        )
    };
    if body.len() > max_body_bytes {
        return fallback();
    }
    let Ok(probe) = serde_json::from_slice::<Probe>(body) else {
        return fallback();
    };
    if let Some(employee) = &probe.employee {
        if let Some(id) = usable(employee.id.as_ref()) {
            return HashKey::EmployeeId(id);
        }
        if let Some(email) = usable(employee.email.as_ref()) {
            return HashKey::Email(email.to_lowercase());
        }
    }
    match usable(probe.event_id.as_ref()) {
        Some(event_id) => HashKey::Unkeyed(Some(event_id)),
        None => fallback(),
    }
}

/// Where a replica stands among its peers, for spreading partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSlot {
    /// This replica's index, `0..replicas`.
    pub index: u16,
    /// How many replicas the deployment runs.
    pub replicas: u16,
}

/// The partitions `slot` subscribes to at once: `p` with `p % replicas == index`. The
/// others it subscribes to later, as a standby, so that with every replica up each owns
/// its own share, and a dead replica's share fails over to the standbys.
pub fn preferred_partitions(partitions: u16, slot: ReplicaSlot) -> Vec<u16> {
    let replicas = slot.replicas.max(1);
    (0..partitions)
        .filter(|p| p % replicas == slot.index % replicas)
        .collect()
}

/// A replica index from a host name, for when `REPLICA_INDEX` is not set: the ordinal a
/// Kubernetes StatefulSet gives (`iam-provisioner-2` → 2), else a stable hash (FNV-1a) of
/// the name. Either is taken modulo `replicas`.
pub fn index_from_host_name(host_name: &str, replicas: u16) -> u16 {
    let replicas = u64::from(replicas.max(1));
    let ordinal = host_name
        .rsplit_once('-')
        .and_then(|(_, suffix)| suffix.parse::<u64>().ok());
    let value = ordinal.unwrap_or_else(|| {
        host_name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    });
    // The remainder is below `replicas`, itself a u16.
    u16::try_from(value % replicas).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 65_536;

    #[test]
    fn the_employee_id_is_the_key_whatever_else_the_body_holds() {
        let body =
            br#"{"event_id":"e1","occurred_at":"x","employee":{"id":" E-1 ","email":"A@x.co"}}"#;
        assert_eq!(
            hash_key(body, Some("m"), MAX),
            HashKey::EmployeeId("E-1".into())
        );
        assert_eq!(hash_key(body, None, MAX).plain_value(), "id:E-1");
    }

    #[test]
    fn the_header_carries_a_stable_hash_never_the_id_or_email() {
        let by_id = br#"{"event_id":"e1","employee":{"id":"E-1","email":"ada@x.co"}}"#;
        let again = br#"{"event_id":"e2","employee":{"id":"E-1","email":"new@x.co"}}"#;
        let header = hash_key(by_id, None, MAX).header_value();
        assert_eq!(header, hash_key(again, None, MAX).header_value());
        assert!(!header.contains("E-1"), "{header}");
        let by_email = br#"{"event_id":"e3","employee":{"email":"Ada@X.co"}}"#;
        let header = hash_key(by_email, None, MAX).header_value();
        assert!(!header.to_lowercase().contains("ada"), "{header}");
        assert_ne!(header, hash_key(by_id, None, MAX).header_value());
    }

    #[test]
    fn a_removal_by_email_is_keyed_by_the_case_folded_email() {
        let body = br#"{"event_id":"e1","employee":{"email":"Ada@Example.com"}}"#;
        assert_eq!(
            hash_key(body, None, MAX),
            HashKey::Email("ada@example.com".into())
        );
    }

    #[test]
    fn unreadable_messages_are_keyed_by_event_or_message_id() {
        assert_eq!(
            hash_key(b"not json", Some("m-1"), MAX),
            HashKey::Unkeyed(Some("m-1".into()))
        );
        assert_eq!(
            hash_key(br#"{"event_id":"e-9","employee":{}}"#, Some("m"), MAX),
            HashKey::Unkeyed(Some("e-9".into()))
        );
        assert_eq!(
            hash_key(br#"{"employee":{"id":42}}"#, None, MAX),
            HashKey::Unkeyed(None)
        );
        assert_eq!(hash_key(b"[]", None, MAX).plain_value(), "unkeyed");
        let long_id = format!(r#"{{"employee":{{"id":"{}"}}}}"#, "x".repeat(300));
        assert_eq!(
            hash_key(long_id.as_bytes(), None, MAX),
            HashKey::Unkeyed(None)
        );
    }

    #[test]
    fn a_blank_or_overlong_message_id_is_no_key() {
        for message_id in ["", "   ", &"m".repeat(256)] {
            assert_eq!(
                hash_key(b"not json", Some(message_id), MAX),
                HashKey::Unkeyed(None),
                "{message_id:?}"
            );
        }
        let longest = "m".repeat(255);
        assert_eq!(
            hash_key(b"not json", Some(&longest), MAX),
            HashKey::Unkeyed(Some(longest.clone()))
        );
    }

    #[test]
    fn key_kinds_are_fixed_labels() {
        assert_eq!(HashKey::EmployeeId("E-1".into()).kind(), "employee_id");
        assert_eq!(HashKey::Email("a@x.co".into()).kind(), "email");
        assert_eq!(HashKey::Unkeyed(Some("e".into())).kind(), "unkeyed");
        assert_eq!(HashKey::Unkeyed(None).kind(), "unkeyed");
        assert_eq!(
            HashKey::Email("a@x.co".into()).plain_value(),
            "email:a@x.co"
        );
        assert_eq!(HashKey::Unkeyed(Some("e".into())).plain_value(), "event:e");
    }

    #[test]
    fn host_names_without_an_ordinal_hash_with_fnv_1a() {
        // FNV-1a 64's published test vectors: "a" → 0xaf63dc4c8601ec8c, "foobar" →
        // 0x85944171f73967e8; the index is the hash modulo the replicas.
        assert_eq!(
            index_from_host_name("a", u16::MAX),
            u16::try_from(0xaf63_dc4c_8601_ec8c_u64 % 65_535).expect("fits")
        );
        assert_eq!(
            index_from_host_name("foobar", 1000),
            u16::try_from(0x8594_4171_f739_67e8_u64 % 1000).expect("fits")
        );
    }

    #[test]
    fn an_oversized_body_is_not_parsed() {
        let body = br#"{"employee":{"id":"E-1"}}"#;
        assert_eq!(
            hash_key(body, Some("m"), 4),
            HashKey::Unkeyed(Some("m".into()))
        );
        assert_eq!(
            hash_key(body, Some("m"), body.len()),
            HashKey::EmployeeId("E-1".into()),
            "a body at the limit is read"
        );
    }

    #[test]
    fn every_partition_is_preferred_by_exactly_one_replica() {
        for replicas in 1..6u16 {
            for partitions in 1..20u16 {
                let mut owners = vec![0; usize::from(partitions)];
                for index in 0..replicas {
                    for p in preferred_partitions(partitions, ReplicaSlot { index, replicas }) {
                        owners[usize::from(p)] += 1;
                    }
                }
                assert!(owners.iter().all(|&n| n == 1), "{replicas} {partitions}");
            }
        }
        assert_eq!(
            preferred_partitions(
                6,
                ReplicaSlot {
                    index: 1,
                    replicas: 3
                }
            ),
            vec![1, 4]
        );
    }

    #[test]
    fn statefulset_ordinals_give_the_index_and_other_names_a_stable_hash() {
        assert_eq!(index_from_host_name("iam-provisioner-2", 3), 2);
        assert_eq!(index_from_host_name("iam-provisioner-4", 3), 1);
        let a = index_from_host_name("iam-provisioner-7d9f-x2kqp", 3);
        assert_eq!(a, index_from_host_name("iam-provisioner-7d9f-x2kqp", 3));
        assert!(a < 3);
        assert_eq!(index_from_host_name("anything", 1), 0);
    }
}
