//! What happens to one delivery once the AMQP adapter has decoded it: wait for the
//! employee's turn, decide, provision in Okta, and say how the delivery settles.
//!
//! Nothing here knows the wire format; the adapter in `crate::amqp` decodes before and
//! settles after.

pub mod circuit;
pub mod decisions;
pub mod deferral;
pub mod envelope;
pub mod guard;
pub mod lanes;
pub mod provisioner;
pub mod retry;
pub mod sequencer;
pub mod settlement;
pub mod worker;
