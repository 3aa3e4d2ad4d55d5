//! The operator's commands: the dead-letter queue, the holding queue, the mapping
//! check, and the audit events they publish. The two queue commands share one walk of
//! their queue ([`walker`]) and differ only in what they select and copy.

pub mod audit;
pub mod dlq;
pub mod held;
pub mod mapping_check;
pub mod walker;
