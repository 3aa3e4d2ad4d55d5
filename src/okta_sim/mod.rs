//! Fake Okta (being written).
