//! Dead-letter operations for on-call: inspect (`dlq list`), move back to processing
//! (`replay`) and delete (`dlq purge`) the messages the service gave up on.
//!
//! The dead-letter queue is where a failed HR event waits for a person — a leaver whose
//! access must still be removed may be among them — so these commands must never lose
//! one. They browse the queue by taking messages without acknowledging them: a message
//! leaves the queue only when acknowledged, and replay acknowledges only after the
//! broker confirmed the re-published copy. See [`ops`] for the details.
//!
//! [`selection`] (what the operator asked for), [`record`] (what a dead letter says about
//! itself, and its replayed copy) and [`report`] (what is printed) are pure; [`ops`] does
//! the broker work; [`cli`] is the command line.

pub mod cli;
pub mod ops;
pub mod record;
pub mod report;
pub mod selection;
