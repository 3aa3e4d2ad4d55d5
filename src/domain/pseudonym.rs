//! Pseudonyms of personal values: a truncated SHA-256, the same for the same value. The
//! partition key header uses one instead of the employee's id or email (it stays with the
//! message in every queue); `crate::telemetry::pii` uses them in log lines under
//! `LOG_PII=minimal`. A pure function, so the domain can use it without telemetry.

/// The pseudonym of `value`: `h:` and the first 16 hex digits (64 bits) of SHA-256 over a
/// domain-separated input. 64 bits make accidental collisions between employees
/// negligible for any workforce, and the prefix makes a pseudonym recognisable in a log.
pub fn pseudonym(value: &str) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(b"iam-provisioner/pii/v1\0");
    context.update(value.as_bytes());
    let digest = context.finish();
    let mut out = String::with_capacity(18);
    out.push_str("h:");
    for byte in &digest.as_ref()[..8] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}
