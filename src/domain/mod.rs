//! The domain core: what an HR event means and what should happen in Okta because of it.
//!
//! Nothing in here knows about AMQP or HTTP. Adapters turn wire data into these types
//! (`event::parse_message`) and carry the decisions (`plan`) out against Okta.

pub mod event;
pub mod mapping;
pub mod outcome;
pub mod partition;
pub mod plan;
pub mod pseudonym;
pub mod schedule;
