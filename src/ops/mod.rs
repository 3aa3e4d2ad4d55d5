//! The operator's commands: the dead-letter queue, the holding queue, the mapping
//! check, reconciliation with HR's roster, and the audit events they publish. The two
//! queue commands share one walk of their queue ([`walker`]) and differ only in what
//! they select and copy.

pub mod audit;
pub mod dlq;
pub mod held;
pub mod mapping_check;
pub mod reconcile;
pub mod walker;
