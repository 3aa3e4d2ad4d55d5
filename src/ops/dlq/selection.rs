//! Which dead letters an operator's command applies to: filters, all of which must
//! match, and a limit. Shared by `dlq list`, `replay` and `dlq purge`, so a dry run
//! selects exactly what the real run will.
//!
//! Pure, so that "each filter selects exactly its messages" is a unit test.

use super::record::DeadLetter;
use time::OffsetDateTime;

/// Conditions on a dead letter; `None` means "any". A message matches when every given
/// condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The original routing key (event type), exactly.
    pub routing_key: Option<String>,
    /// The employee id, exactly.
    pub employee_id: Option<String>,
    /// The error kind (`validation`, `mapping`, `okta`, `transient`, `broker:rejected`…),
    /// ignoring ASCII case.
    pub error_kind: Option<String>,
    /// Okta's error code (`E0000006`…), ignoring ASCII case.
    pub okta_code: Option<String>,
    /// The event id, exactly.
    pub event_id: Option<String>,
    /// Failed strictly before this time. A message without a failure time never matches.
    pub failed_before: Option<OffsetDateTime>,
    /// Failed at or after this time, so that `--failed-after T` and `--failed-before T`
    /// split the queue in two. A message without a failure time never matches.
    pub failed_after: Option<OffsetDateTime>,
}

impl Filter {
    /// Whether `message` meets every condition.
    pub fn matches(&self, message: &DeadLetter) -> bool {
        fn exactly(wanted: &Option<String>, actual: &Option<String>) -> bool {
            wanted
                .as_ref()
                .is_none_or(|w| actual.as_ref().is_some_and(|a| a == w))
        }
        fn ignoring_case(wanted: &Option<String>, actual: &Option<String>) -> bool {
            wanted
                .as_ref()
                .is_none_or(|w| actual.as_ref().is_some_and(|a| a.eq_ignore_ascii_case(w)))
        }
        let routing_key_ok = self
            .routing_key
            .as_ref()
            .is_none_or(|k| *k == message.routing_key);
        let before_ok = self
            .failed_before
            .is_none_or(|limit| message.failed_at.is_some_and(|at| at < limit));
        let after_ok = self
            .failed_after
            .is_none_or(|limit| message.failed_at.is_some_and(|at| at >= limit));
        routing_key_ok
            && exactly(&self.employee_id, &message.employee_id)
            && ignoring_case(&self.error_kind, &message.error_kind)
            && ignoring_case(&self.okta_code, &message.okta_error_code)
            && exactly(&self.event_id, &message.event_id)
            && before_ok
            && after_ok
    }

    /// Whether no condition is given (everything matches).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Filters and a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub filter: Filter,
    /// At most this many messages: the first ones that match, in queue order.
    pub limit: Option<u64>,
}

/// Walks the queue with a [`Selection`], counting what it took.
#[derive(Debug)]
pub struct Selector {
    selection: Selection,
    taken: u64,
}

impl Selector {
    /// Starts a walk.
    pub fn new(selection: Selection) -> Self {
        Self {
            selection,
            taken: 0,
        }
    }

    /// Whether `message`, the next one in queue order, is selected.
    pub fn offer(&mut self, message: &DeadLetter) -> bool {
        if self.is_full() || !self.selection.filter.matches(message) {
            return false;
        }
        self.taken += 1;
        true
    }

    /// Whether the limit is reached: nothing further can be selected, so the walk may
    /// stop.
    pub fn is_full(&self) -> bool {
        self.selection
            .limit
            .is_some_and(|limit| self.taken >= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn message(position: u64) -> DeadLetter {
        DeadLetter {
            position,
            routing_key: "employee.added".into(),
            event_id: Some(format!("evt-{position}")),
            employee_id: Some(format!("E-{position}")),
            error_kind: Some("mapping".into()),
            okta_error_code: None,
            okta_request_id: None,
            attempts: Some(1),
            failed_at: Some(datetime!(2026-11-28 09:00 UTC)),
            error_message: Some("mapped Okta group Finance does not exist".into()),
            replay_count: 0,
        }
    }

    /// A small queue with one message standing out for each filter.
    fn queue() -> Vec<DeadLetter> {
        let mut q: Vec<DeadLetter> = (1..=6).map(message).collect();
        q[1].routing_key = "employee.removed".into();
        q[2].error_kind = Some("okta".into());
        q[2].okta_error_code = Some("E0000006".into());
        q[3].failed_at = Some(datetime!(2026-11-27 09:00 UTC));
        q[4].failed_at = None;
        q[5].employee_id = None;
        q
    }

    fn positions(filter: Filter) -> Vec<u64> {
        let mut selector = Selector::new(Selection {
            filter,
            limit: None,
        });
        queue()
            .iter()
            .filter(|m| selector.offer(m))
            .map(|m| m.position)
            .collect()
    }

    #[test]
    fn no_filter_selects_everything() {
        assert!(Filter::default().is_empty());
        assert_eq!(positions(Filter::default()), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn each_filter_selects_exactly_its_messages() {
        let at = datetime!(2026-11-28 00:00 UTC);
        let cases = [
            (
                Filter {
                    routing_key: Some("employee.removed".into()),
                    ..Filter::default()
                },
                vec![2],
            ),
            (
                Filter {
                    employee_id: Some("E-4".into()),
                    ..Filter::default()
                },
                vec![4],
            ),
            (
                Filter {
                    error_kind: Some("OKTA".into()),
                    ..Filter::default()
                },
                vec![3],
            ),
            (
                Filter {
                    okta_code: Some("e0000006".into()),
                    ..Filter::default()
                },
                vec![3],
            ),
            (
                Filter {
                    event_id: Some("evt-5".into()),
                    ..Filter::default()
                },
                vec![5],
            ),
            (
                Filter {
                    failed_before: Some(at),
                    ..Filter::default()
                },
                vec![4],
            ),
            (
                Filter {
                    failed_after: Some(at),
                    ..Filter::default()
                },
                vec![1, 2, 3, 6],
            ),
        ];
        for (filter, expected) in cases {
            assert!(!filter.is_empty());
            assert_eq!(positions(filter.clone()), expected, "{filter:?}");
        }
    }

    #[test]
    fn filters_combine_with_and() {
        let filter = Filter {
            error_kind: Some("mapping".into()),
            routing_key: Some("employee.added".into()),
            failed_after: Some(datetime!(2026-11-28 00:00 UTC)),
            ..Filter::default()
        };
        assert_eq!(positions(filter), vec![1, 6]);
    }

    #[test]
    fn a_case_difference_in_an_id_does_not_match() {
        let filter = Filter {
            employee_id: Some("e-4".into()),
            ..Filter::default()
        };
        assert_eq!(positions(filter), Vec::<u64>::new());
    }

    #[test]
    fn the_limit_takes_the_first_matching_messages_in_queue_order() {
        let mut selector = Selector::new(Selection {
            filter: Filter {
                error_kind: Some("mapping".into()),
                ..Filter::default()
            },
            limit: Some(2),
        });
        let taken: Vec<u64> = queue()
            .iter()
            .filter(|m| selector.offer(m))
            .map(|m| m.position)
            .collect();
        assert_eq!(taken, vec![1, 2]);
        assert!(selector.is_full());

        let zero = Selector::new(Selection {
            filter: Filter::default(),
            limit: Some(0),
        });
        assert!(zero.is_full(), "--limit 0 selects nothing");
    }
}
