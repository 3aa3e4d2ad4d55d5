//! A strict reader of the OpenMetrics text format, enough to check that `/metrics` is
//! what Prometheus accepts and to read values back: metadata before samples, every
//! family described (`# HELP`, `# TYPE`), sample names that fit their family's type,
//! escaped label values, histograms whose buckets add up, and `# EOF` last.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family with its metadata and samples.
#[derive(Debug, Clone, Default)]
pub struct MetricFamily {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub families: Vec<MetricFamily>,
}

impl Exposition {
    /// Every sample name (`…_total`, `…_bucket`, …).
    pub fn sample_names(&self) -> Vec<&str> {
        self.families
            .iter()
            .flat_map(|f| f.samples.iter().map(|s| s.name.as_str()))
            .collect()
    }

    /// The value of the sample `name` whose labels include every pair of `labels`;
    /// `None` when there is none. Panics when several match (the test asked vaguely).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name}{labels:?} matches {} samples",
            matching.len()
        );
        matching.first().map(|s| s.value)
    }

    /// Every (label name, label value) pair in the exposition.
    pub fn label_pairs(&self) -> Vec<(&str, &str, &str)> {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .flat_map(|s| {
                s.labels
                    .iter()
                    .map(move |(k, v)| (s.name.as_str(), k.as_str(), v.as_str()))
            })
            .collect()
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|e| format!("bad value {text:?}: {e}")),
    }
}

/// The suffixes a sample of a family of `kind` may carry.
fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "gaugehistogram" => &["_bucket", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parses `{a="x",b="y"} 1` from after the metric name.
fn parse_labels(rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = rest.strip_prefix('{') else {
        return Ok((labels, rest));
    };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

/// Parses and checks an OpenMetrics text exposition.
///
/// # Errors
/// A message naming the line that breaks the format.
pub fn parse(text: &str) -> Result<Exposition, String> {
    if !text.ends_with("# EOF\n") && !text.ends_with("# EOF") {
        return Err("the exposition does not end with # EOF".into());
    }
    let mut exposition = Exposition::default();
    let mut seen = std::collections::HashSet::new();
    let mut eof = false;
    for (number, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", number + 1);
        if eof {
            return Err(at("content after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            let name = parts
                .next()
                .ok_or_else(|| at("metadata without a name".into()))?;
            let rest = parts.next().unwrap_or_default();
            if !is_metric_name(name) {
                return Err(at(format!("bad family name {name:?}")));
            }
            let starts_family = exposition.families.last().is_none_or(|f| f.name != name);
            if starts_family {
                if !seen.insert(name.to_owned()) {
                    return Err(at(format!("family {name} appears twice")));
                }
                exposition.families.push(MetricFamily {
                    name: name.to_owned(),
                    kind: "unknown".into(),
                    ..MetricFamily::default()
                });
            }
            let family = exposition.families.last_mut().expect("just pushed");
            if !family.samples.is_empty() {
                return Err(at("metadata after samples".into()));
            }
            match keyword {
                "HELP" => family.help = Some(rest.to_owned()),
                "TYPE" => {
                    if !matches!(
                        rest,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "gaugehistogram"
                            | "stateset"
                            | "info"
                            | "summary"
                            | "unknown"
                    ) {
                        return Err(at(format!("unknown type {rest:?}")));
                    }
                    family.kind = rest.to_owned();
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{rest}")) {
                        return Err(at("a family with a unit must end with it".into()));
                    }
                    family.unit = Some(rest.to_owned());
                }
                other => return Err(at(format!("unknown metadata {other:?}"))),
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            return Err(at("not a sample, not metadata".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(at)?;
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(at)?;
        if let Some(timestamp) = fields.next() {
            parse_value(timestamp).map_err(at)?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = exposition
            .families
            .last_mut()
            .ok_or_else(|| at("a sample before any # TYPE".into()))?;
        let suffix_ok = allowed_suffixes(&family.kind)
            .iter()
            .any(|suffix| name == format!("{}{suffix}", family.name));
        if !suffix_ok {
            return Err(at(format!(
                "sample {name} does not belong to the {} family {}",
                family.kind, family.name
            )));
        }
        family.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !eof {
        return Err("no # EOF line".into());
    }
    for family in &exposition.families {
        if family.help.is_none() {
            return Err(format!("family {} has no # HELP", family.name));
        }
        if family.kind == "unknown" {
            return Err(format!("family {} has no # TYPE", family.name));
        }
        if family.kind == "counter" && family.samples.iter().any(|s| s.value < 0.0) {
            return Err(format!("counter {} is negative", family.name));
        }
        if family.kind == "histogram" {
            check_histogram(family)?;
        }
    }
    Ok(exposition)
}

/// A series' labels but `le`.
type LabelKey = Vec<(String, String)>;

/// Buckets ascend in `le`, counts never fall, the last bucket is `+Inf` and equals
/// `_count`, for every label set of the family.
fn check_histogram(family: &MetricFamily) -> Result<(), String> {
    let mut series: BTreeMap<LabelKey, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<LabelKey, f64> = BTreeMap::new();
    for sample in &family.samples {
        let key: LabelKey = sample
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if sample.name.ends_with("_bucket") {
            let le = sample
                .labels
                .get("le")
                .ok_or_else(|| format!("{}: a bucket without le", family.name))?;
            series
                .entry(key)
                .or_default()
                .push((parse_value(le)?, sample.value));
        } else if sample.name.ends_with("_count") {
            counts.insert(key, sample.value);
        }
    }
    for (key, buckets) in &series {
        let ascending = buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        let last = buckets.last().copied().unwrap_or((0.0, 0.0));
        if !ascending || last.0 != f64::INFINITY || counts.get(key) != Some(&last.1) {
            return Err(format!("{}{key:?}: inconsistent buckets", family.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_well_formed_exposition() {
        let text = "# HELP a_seconds Time.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
                    a_seconds_sum{x=\"1\"} 0.5\na_seconds_count{x=\"1\"} 2\n\
                    a_seconds_bucket{le=\"0.1\",x=\"1\"} 1\na_seconds_bucket{le=\"+Inf\",x=\"1\"} 2\n\
                    # HELP b Things.\n# TYPE b counter\nb_total{k=\"q\\\"uote\"} 3\n# EOF\n";
        let exposition = parse(text).expect("valid");
        assert_eq!(exposition.value("b_total", &[("k", "q\"uote")]), Some(3.0));
        assert_eq!(exposition.value("a_seconds_count", &[]), Some(2.0));
    }

    #[test]
    fn rejects_what_prometheus_would() {
        for bad in [
            "# TYPE b counter\nb_total 1\n# EOF\n",              // no HELP
            "# HELP b x\n# TYPE b counter\nb 1\n# EOF\n",        // counter without _total
            "# HELP b x\n# TYPE b counter\nb_total 1\n",          // no EOF
            "# HELP b x\n# TYPE b gauge\nb{a=\"1} 1\n# EOF\n",    // unterminated label
            "# HELP b x\n# TYPE b gauge\nb 1\n# EOF\nb 2\n",      // after EOF
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
