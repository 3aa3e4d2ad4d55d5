//! The admin's group mapping: HR group names → Okta groups.
//!
//! A target is an Okta group id (`00g…`) or an Okta group name; a value is one target or
//! a list of them; the key `"*"` names groups for every employee. The mapping is parsed
//! once, checked completely, and then only read; resolving names to ids is the Okta
//! adapter's job (`okta::groups`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The key whose targets apply to every employee.
pub const EVERYONE: &str = "*";

/// One Okta group named by the mapping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupTarget {
    /// An Okta group id, e.g. `00g1abcdEFGH2345ijkl`.
    Id(String),
    /// An Okta group name, matched exactly.
    Name(String),
}

impl GroupTarget {
    /// Reads a mapping value: Okta ids are `00g` followed by alphanumerics (20 in all);
    /// anything else is a group name.
    pub fn parse(value: &str) -> Self {
        if looks_like_group_id(value) {
            GroupTarget::Id(value.to_owned())
        } else {
            GroupTarget::Name(value.to_owned())
        }
    }
}

impl fmt::Display for GroupTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupTarget::Id(id) => write!(f, "id {id}"),
            GroupTarget::Name(name) => write!(f, "\"{name}\""),
        }
    }
}

fn looks_like_group_id(value: &str) -> bool {
    value.len() == 20
        && value.starts_with("00g")
        && value.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Why a mapping cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read mapping file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping file {path} has an unknown extension (use .json, .yaml, .yml or .toml)")]
    UnknownFormat { path: String },
    #[error("mapping is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("mapping entry `{key}`: {problem}")]
    Entry { key: String, problem: String },
}

/// One mapping value as written by the admin.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawTargets {
    One(String),
    Many(Vec<String>),
}

/// The parsed, checked mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMapping {
    entries: BTreeMap<String, Vec<GroupTarget>>,
}

/// The Okta groups an employee's HR groups map to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedGroups {
    /// Targets, deduplicated, in mapping order (`"*"` first).
    pub targets: Vec<GroupTarget>,
    /// HR groups that no mapping entry names; reported, not an error.
    pub unmapped: Vec<String>,
}

impl GroupMapping {
    /// Parses an inline JSON mapping (`GROUP_MAPPING`).
    ///
    /// # Errors
    /// [`MappingError::Syntax`] or [`MappingError::Entry`].
    pub fn from_json(text: &str) -> Result<Self, MappingError> {
        let raw: BTreeMap<String, RawTargets> =
            serde_json::from_str(text).map_err(|e| MappingError::Syntax {
                format: "JSON",
                message: e.to_string(),
            })?;
        Self::from_raw(raw)
    }

    /// Reads a mapping file, its format chosen by extension: `.json`, `.yaml`/`.yml`, `.toml`.
    ///
    /// # Errors
    /// Any [`MappingError`].
    pub fn from_file(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_file_text(path, &text)
    }

    /// Parses the content of the mapping file at `path` (read by the caller, so the
    /// service can read it asynchronously), its format chosen by the path's extension.
    ///
    /// # Errors
    /// [`MappingError::UnknownFormat`], [`MappingError::Syntax`] or
    /// [`MappingError::Entry`].
    pub fn from_file_text(path: &Path, text: &str) -> Result<Self, MappingError> {
        let shown = path.display().to_string();
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("json") => Self::from_json(text),
            Some("yaml" | "yml") => {
                let raw: BTreeMap<String, RawTargets> =
                    serde_norway::from_str(text).map_err(|e| MappingError::Syntax {
                        format: "YAML",
                        message: e.to_string(),
                    })?;
                Self::from_raw(raw)
            }
            Some("toml") => {
                let raw: BTreeMap<String, RawTargets> =
                    toml::from_str(text).map_err(|e| MappingError::Syntax {
                        format: "TOML",
                        message: e.to_string(),
                    })?;
                Self::from_raw(raw)
            }
            _ => Err(MappingError::UnknownFormat { path: shown }),
        }
    }

    fn from_raw(raw: BTreeMap<String, RawTargets>) -> Result<Self, MappingError> {
        let mut entries = BTreeMap::new();
        for (key, value) in raw {
            if key.trim().is_empty() {
                return Err(MappingError::Entry {
                    key,
                    problem: "the HR group name is empty".into(),
                });
            }
            let values = match value {
                RawTargets::One(one) => vec![one],
                RawTargets::Many(many) => many,
            };
            if values.is_empty() {
                return Err(MappingError::Entry {
                    key,
                    problem: "names no Okta group (remove the entry if that is meant)".into(),
                });
            }
            let mut targets: Vec<GroupTarget> = Vec::with_capacity(values.len());
            for value in values {
                if value.trim().is_empty() || value.chars().any(char::is_control) {
                    return Err(MappingError::Entry {
                        key,
                        problem: "an Okta group name is empty or has control characters".into(),
                    });
                }
                let target = GroupTarget::parse(&value);
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            entries.insert(key, targets);
        }
        Ok(Self { entries })
    }

    /// Builds a mapping from pairs; for tests and the built-in demo mapping.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [&'a str])>) -> Self {
        let entries = pairs
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    v.iter().map(|t| GroupTarget::parse(t)).collect(),
                )
            })
            .collect();
        Self { entries }
    }

    /// True when the mapping names no group at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, for `mapping check` and logs.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[GroupTarget])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Every target the mapping names: the groups this service manages. Groups outside
    /// this set are never touched.
    pub fn all_targets(&self) -> Vec<GroupTarget> {
        let mut all: Vec<GroupTarget> = self.entries.values().flatten().cloned().collect();
        all.sort();
        all.dedup();
        all
    }

    /// The Okta groups for an employee in `hr_groups`, plus the HR groups with no entry.
    pub fn resolve(&self, hr_groups: &[String]) -> ResolvedGroups {
        let mut resolved = ResolvedGroups::default();
        let push = |targets: &[GroupTarget], resolved: &mut ResolvedGroups| {
            for target in targets {
                if !resolved.targets.contains(target) {
                    resolved.targets.push(target.clone());
                }
            }
        };
        if let Some(everyone) = self.entries.get(EVERYONE) {
            push(everyone, &mut resolved);
        }
        for group in hr_groups {
            match self.entries.get(group) {
                Some(targets) if group != EVERYONE => push(targets, &mut resolved),
                _ => {
                    if !resolved.unmapped.contains(group) {
                        resolved.unmapped.push(group.clone());
                    }
                }
            }
        }
        resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_target_or_a_list_and_ids_are_recognised() {
        let mapping = GroupMapping::from_json(
            r#"{"Engineering": ["Engineering-Core", "GitHub-Users"], "Sales": "00g1abcdEFGH2345ijkl"}"#,
        )
        .expect("valid");
        let resolved = mapping.resolve(&groups(&["Sales", "Engineering"]));
        assert_eq!(
            resolved.targets,
            vec![
                GroupTarget::Id("00g1abcdEFGH2345ijkl".into()),
                GroupTarget::Name("Engineering-Core".into()),
                GroupTarget::Name("GitHub-Users".into()),
            ]
        );
        assert!(resolved.unmapped.is_empty());
    }

    #[test]
    fn everyone_key_applies_to_all_and_unmapped_are_reported() {
        let mapping =
            GroupMapping::from_json(r#"{"*": "All-Staff", "Sales": ["Sales-App", "All-Staff"]}"#)
                .expect("valid");
        let resolved = mapping.resolve(&groups(&["Interns", "Sales", "Interns"]));
        assert_eq!(
            resolved.targets,
            vec![
                GroupTarget::Name("All-Staff".into()),
                GroupTarget::Name("Sales-App".into())
            ]
        );
        assert_eq!(resolved.unmapped, vec!["Interns"]);
        assert_eq!(
            mapping.resolve(&[]).targets,
            vec![GroupTarget::Name("All-Staff".into())]
        );
    }

    #[test]
    fn hr_group_names_match_exactly() {
        let mapping = GroupMapping::from_json(r#"{"Sales": "Sales-App"}"#).expect("valid");
        assert_eq!(mapping.resolve(&groups(&["sales"])).unmapped, vec!["sales"]);
    }

    #[test]
    fn an_hr_group_literally_named_star_is_not_everyone() {
        let mapping = GroupMapping::from_json(r#"{"*": "All-Staff"}"#).expect("valid");
        assert_eq!(mapping.resolve(&groups(&["*"])).unmapped, vec!["*"]);
    }

    #[test]
    fn the_managed_groups_are_every_target_once() {
        let mapping = GroupMapping::from_json(
            r#"{"*": "All-Staff", "Sales": ["Sales-App", "All-Staff"], "Eng": "00g1abcdEFGH2345ijkl"}"#,
        )
        .expect("valid");
        assert!(!mapping.is_empty());
        assert_eq!(
            mapping.all_targets(),
            vec![
                GroupTarget::Id("00g1abcdEFGH2345ijkl".into()),
                GroupTarget::Name("All-Staff".into()),
                GroupTarget::Name("Sales-App".into()),
            ]
        );
        let entries: Vec<(&str, Vec<String>)> = mapping
            .entries()
            .map(|(key, targets)| (key, targets.iter().map(|t| t.to_string()).collect()))
            .collect();
        assert_eq!(
            entries,
            vec![
                ("*", vec![r#""All-Staff""#.to_owned()]),
                ("Eng", vec!["id 00g1abcdEFGH2345ijkl".to_owned()]),
                (
                    "Sales",
                    vec![r#""Sales-App""#.to_owned(), r#""All-Staff""#.to_owned()]
                ),
            ]
        );
        let empty = GroupMapping::from_json("{}").expect("valid");
        assert!(empty.is_empty());
        assert!(empty.all_targets().is_empty());
    }

    #[test]
    fn pairs_build_the_same_mapping_as_its_json() {
        let from_pairs = GroupMapping::from_pairs([
            ("Sales", &["Sales-App"][..]),
            ("Eng", &["Eng-Core", "00g1abcdEFGH2345ijkl"][..]),
        ]);
        let from_json = GroupMapping::from_json(
            r#"{"Sales": "Sales-App", "Eng": ["Eng-Core", "00g1abcdEFGH2345ijkl"]}"#,
        )
        .expect("valid");
        assert_eq!(from_pairs, from_json);
    }

    #[test]
    fn group_id_detection_is_strict() {
        assert_eq!(
            GroupTarget::parse("00gshort"),
            GroupTarget::Name("00gshort".into())
        );
        assert_eq!(
            GroupTarget::parse("00g1abcdEFGH2345ijk-"),
            GroupTarget::Name("00g1abcdEFGH2345ijk-".into())
        );
    }

    #[test]
    fn bad_mappings_are_refused_with_the_entry_named() {
        let err = GroupMapping::from_json(r#"{"Sales": []}"#).expect_err("empty list");
        assert!(err.to_string().contains("`Sales`"), "{err}");
        let err = GroupMapping::from_json(r#"{"Sales": ""}"#).expect_err("empty name");
        assert!(err.to_string().contains("`Sales`"), "{err}");
        let err = GroupMapping::from_json(r#"{"Sales": 5}"#).expect_err("number");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert!(GroupMapping::from_json("[]").is_err());
    }

    #[test]
    fn files_are_read_by_extension() {
        let dir = std::env::temp_dir().join(format!("mapping-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cases = [
            (
                "m.yaml",
                "Sales: Sales-App\nEngineering:\n  - Eng-Core\n  - GitHub\n",
            ),
            (
                "m.toml",
                "Sales = \"Sales-App\"\nEngineering = [\"Eng-Core\", \"GitHub\"]\n",
            ),
            (
                "m.json",
                r#"{"Sales":"Sales-App","Engineering":["Eng-Core","GitHub"]}"#,
            ),
        ];
        let mut parsed = Vec::new();
        for (name, text) in cases {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            parsed.push(GroupMapping::from_file(&path).expect(name));
        }
        assert_eq!(parsed[0], parsed[1]);
        assert_eq!(parsed[1], parsed[2]);
        let unknown = dir.join("m.ini");
        std::fs::write(&unknown, "x").expect("write");
        assert!(matches!(
            GroupMapping::from_file(&unknown),
            Err(MappingError::UnknownFormat { .. })
        ));
        assert!(matches!(
            GroupMapping::from_file(&dir.join("missing.json")),
            Err(MappingError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
