//! The operator's commands: the dead-letter queue, the holding queue, the mapping
//! check, and the audit events they publish.

pub mod audit;
pub mod dlq;
pub mod held;
pub mod mapping_check;
