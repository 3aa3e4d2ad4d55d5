//! Where the group mapping comes from: inline (`GROUP_MAPPING`) or a file
//! (`GROUP_MAPPING_FILE`, checked for changes every `GROUP_MAPPING_POLL_MS`).
//!
//! An inline mapping is parsed with the rest of the configuration. A file is only named
//! here and read once, asynchronously, by [`MappingSettings::load`] at start-up (the same
//! read checks its format); after that `crate::app::mapping_reload` reads it again only
//! to pick up edits.

use super::{invalid, read, ConfigError};
use crate::domain::mapping::{GroupMapping, MappingError};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Deserialize)]
struct RawMappingEnv {
    group_mapping: Option<String>,
    group_mapping_file: Option<PathBuf>,
    group_mapping_poll_ms: Option<u64>,
}

/// Where the mapping is.
#[derive(Debug, Clone, Default)]
pub enum MappingSource {
    /// Neither variable is set.
    #[default]
    Unset,
    /// `GROUP_MAPPING`, already parsed.
    Inline(GroupMapping),
    /// `GROUP_MAPPING_FILE`, read by [`MappingSettings::load`].
    File(PathBuf),
}

/// The mapping's source and how a file is watched.
#[derive(Debug, Clone, Default)]
pub struct MappingSettings {
    pub source: MappingSource,
    /// `GROUP_MAPPING_POLL_MS`: how often `GROUP_MAPPING_FILE` is checked for changes;
    /// `None`: only on SIGHUP.
    pub poll: Option<Duration>,
}

impl MappingSettings {
    pub(super) fn from_vars(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let raw: RawMappingEnv = read(vars)?;
        let source = match (raw.group_mapping, raw.group_mapping_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "GROUP_MAPPING",
                    "set either GROUP_MAPPING or GROUP_MAPPING_FILE, not both",
                ))
            }
            (Some(inline), None) => {
                MappingSource::Inline(GroupMapping::from_json(&inline).map_err(|source| {
                    ConfigError::Mapping {
                        variable: "GROUP_MAPPING",
                        source,
                    }
                })?)
            }
            (None, Some(path)) => MappingSource::File(path),
            (None, None) => MappingSource::Unset,
        };
        let poll = match raw.group_mapping_poll_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => Some(Duration::from_secs(30)),
        };
        Ok(Self { source, poll })
    }

    /// The mapping file, when the mapping comes from one (it is then watched for edits).
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            MappingSource::File(path) => Some(path),
            _ => None,
        }
    }

    /// The mapping in force at start-up: the inline one, or the file's, read here once
    /// (asynchronously) and checked; `None` when no mapping is configured.
    ///
    /// # Errors
    /// [`ConfigError::Mapping`] naming `GROUP_MAPPING_FILE` when the file cannot be read
    /// or is not a valid mapping.
    pub async fn load(&self) -> Result<Option<GroupMapping>, ConfigError> {
        match &self.source {
            MappingSource::Unset => Ok(None),
            MappingSource::Inline(mapping) => Ok(Some(mapping.clone())),
            MappingSource::File(path) => {
                let file_error = |source| ConfigError::Mapping {
                    variable: "GROUP_MAPPING_FILE",
                    source,
                };
                let text = tokio::fs::read_to_string(path).await.map_err(|source| {
                    file_error(MappingError::Read {
                        path: path.display().to_string(),
                        source,
                    })
                })?;
                GroupMapping::from_file_text(path, &text)
                    .map(Some)
                    .map_err(file_error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{error, temp_file, vars, OKTA};
    use super::super::Settings;
    use super::*;

    #[test]
    fn both_mapping_sources_at_once_are_refused() {
        let mut pairs = OKTA.to_vec();
        pairs.push(("GROUP_MAPPING", "{}"));
        pairs.push(("GROUP_MAPPING_FILE", "/tmp/x.json"));
        assert!(error(&pairs, false).contains("GROUP_MAPPING"));
    }

    fn settings(extra: &[(&str, &str)]) -> MappingSettings {
        let mut pairs = OKTA.to_vec();
        pairs.extend_from_slice(extra);
        Settings::from_vars(vars(&pairs), false)
            .expect("valid")
            .mapping
    }

    #[tokio::test]
    async fn a_mapping_file_is_read_and_checked_when_loaded() {
        let file = temp_file(r#"{"Sales": "Sales-App-Access"}"#);
        let json = file.with_extension("json");
        std::fs::rename(&file, &json).expect("rename");
        let path = json.display().to_string();
        let mapping = settings(&[("GROUP_MAPPING_FILE", &path)]);
        assert_eq!(mapping.file(), Some(json.as_path()));
        let loaded = mapping.load().await.expect("valid").expect("a mapping");
        assert_eq!(loaded.entries().count(), 1);

        std::fs::write(&json, "{oops").expect("rewrite");
        let message = mapping.load().await.expect_err("invalid").to_string();
        assert!(message.starts_with("GROUP_MAPPING_FILE"), "{message}");
        let _ = std::fs::remove_file(&json);

        let missing = settings(&[("GROUP_MAPPING_FILE", "/nonexistent/map.json")]);
        let message = missing.load().await.expect_err("missing").to_string();
        assert!(message.starts_with("GROUP_MAPPING_FILE"), "{message}");
        let unknown = settings(&[("GROUP_MAPPING_FILE", "/etc/hostname")]);
        assert!(unknown.load().await.is_err());
    }

    #[tokio::test]
    async fn an_inline_mapping_is_parsed_with_the_configuration_and_polling_can_be_off() {
        let mapping = settings(&[("GROUP_MAPPING", r#"{"*": "All-Staff"}"#)]);
        assert_eq!(mapping.file(), None);
        assert!(mapping.load().await.expect("valid").is_some());
        assert_eq!(mapping.poll, Some(Duration::from_secs(30)));
        assert_eq!(settings(&[("GROUP_MAPPING_POLL_MS", "0")]).poll, None);
        assert!(settings(&[]).load().await.expect("valid").is_none());
    }
}
