//! Logging set-up: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks `json` or
//! `text` (text by default). Logs go to standard error, leaving standard output to
//! commands that print results.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once, at start-up.
///
/// # Errors
/// A message naming `LOG_FORMAT` or `RUST_LOG` when either is invalid.
pub fn init() -> Result<(), String> {
    init_with_default_filter("info")
}

/// Like [`init`], with another filter when `RUST_LOG` is unset: commands whose output is
/// their result (the dead-letter commands) keep library chatter off standard error.
///
/// # Errors
/// A message naming `LOG_FORMAT` or `RUST_LOG` when either is invalid.
pub fn init_with_default_filter(default_filter: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::new(default_filter),
    };
    let format = std::env::var("LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format.trim().to_ascii_lowercase().as_str() {
        "json" => builder.json().with_current_span(true).try_init(),
        "" | "text" => builder.try_init(),
        other => {
            return Err(format!(
                "LOG_FORMAT: unknown format {other:?} (use json or text)"
            ))
        }
    };
    installed.map_err(|e| format!("cannot install the logger: {e}"))
}

/// An error and its causes, `outer: inner: innermost`, for a log field: error types keep
/// their causes as sources rather than in their message, so a plain `%error` would show
/// only the outermost.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_shows_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(super::error_chain(&error), "outer: inner");
    }
}
