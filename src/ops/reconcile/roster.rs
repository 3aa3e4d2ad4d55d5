//! HR's roster: the full list of current employees, read as a stream.
//!
//! A roster is JSON Lines (one `employee` object per line) or one JSON array of such
//! objects. Either way it is read element by element, never whole: each element is
//! validated exactly as the `employee` of an `employee.added` event is, and kept as
//! its own compact JSON text (one allocation), which is parsed again when the drift
//! is computed or an event is built. A bad element is reported with its line number.
//!
//! Reading is pure over a [`BufRead`]: no file, no terminal, so the tests feed bytes.

use crate::domain::event::{parse_employee_record, printable, EmployeeRecord, ValidationError};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::BufRead;

/// The largest roster element accepted, in bytes: an employee is a few hundred bytes,
/// and the bound keeps one broken (or hostile) line from taking the memory of a run.
pub const MAX_ELEMENT_BYTES: usize = 65_536;

/// One roster employee, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    /// Where the element starts (1-based line number).
    pub line: u64,
    /// The element's JSON text, compacted; it was valid when read.
    pub json: Box<str>,
}

impl RosterEntry {
    /// The employee object of this entry.
    pub fn object(&self) -> Map<String, Value> {
        serde_json::from_str(&self.json).unwrap_or_default()
    }

    /// The validated record (it was valid when read, so this fails only if the
    /// validation itself changed between two calls: never within a run).
    ///
    /// # Errors
    /// The record's [`ValidationError`].
    pub fn record(&self) -> Result<EmployeeRecord, ValidationError> {
        parse_employee_record(&self.object())
    }
}

/// A roster element that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line where the element starts.
    pub line: u64,
    pub message: String,
    /// The employee id, when one could still be read: that employee is then kept out of
    /// the orphans (the roster does name them, only badly).
    pub employee_id: Option<String>,
}

/// The roster as read.
#[derive(Debug, Default)]
pub struct Roster {
    /// Employee id → entry.
    pub employees: HashMap<Box<str>, RosterEntry>,
    pub bad: Vec<BadLine>,
    /// Elements seen (good and bad).
    pub elements: u64,
}

/// Why the roster could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("cannot read the roster")]
    Io(#[from] std::io::Error),
    #[error("the roster is not a JSON array: {0}")]
    Array(String),
    #[error("the roster has more than {max} bad lines (RECONCILE_MAX_BAD_LINES); nothing was compared or fixed. First ones: {}", summary(.bad))]
    TooManyBadLines { max: usize, bad: Vec<BadLine> },
}

fn summary(bad: &[BadLine]) -> String {
    bad.iter()
        .take(5)
        .map(|b| format!("line {}: {}", b.line, b.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads a whole roster from `input`, stopping as soon as more than `max_bad` elements
/// are bad. `on_progress` is called every 10,000 elements with the count so far.
///
/// # Errors
/// [`RosterError`]: unreadable input, a broken array, or too many bad elements.
pub fn read_roster(
    mut input: impl BufRead,
    max_bad: usize,
    mut on_progress: impl FnMut(u64),
) -> Result<Roster, RosterError> {
    let mut roster = Roster::default();
    let mut reader = ElementReader::new(&mut input)?;
    while let Some(element) = reader.next_element()? {
        roster.elements += 1;
        if roster.elements % 10_000 == 0 {
            on_progress(roster.elements);
        }
        match accept(&element.text, element.too_long) {
            Ok((id, json)) => {
                if let Some(first) = roster.employees.get(id.as_str()) {
                    roster.bad.push(BadLine {
                        line: element.line,
                        message: format!(
                            "employee id {} appears again (first on line {})",
                            printable(&id),
                            first.line
                        ),
                        employee_id: Some(id),
                    });
                } else {
                    roster.employees.insert(
                        id.into_boxed_str(),
                        RosterEntry {
                            line: element.line,
                            json,
                        },
                    );
                }
            }
            Err((message, employee_id)) => roster.bad.push(BadLine {
                line: element.line,
                message,
                employee_id,
            }),
        }
        if roster.bad.len() > max_bad {
            return Err(RosterError::TooManyBadLines {
                max: max_bad,
                bad: std::mem::take(&mut roster.bad),
            });
        }
    }
    Ok(roster)
}

/// Validates one element; on success its employee id and compact JSON.
fn accept(text: &[u8], too_long: bool) -> Result<(String, Box<str>), (String, Option<String>)> {
    if too_long {
        return Err((
            format!("longer than {MAX_ELEMENT_BYTES} bytes; not read"),
            None,
        ));
    }
    let text = std::str::from_utf8(text)
        .map_err(|e| (format!("not UTF-8 (at byte {})", e.valid_up_to()), None))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| (format!("not valid JSON: {e}"), None))?;
    let Value::Object(object) = value else {
        return Err(("not a JSON object".to_owned(), None));
    };
    let readable_id = object
        .get("id")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    let record = parse_employee_record(&object).map_err(|e| (e.to_string(), readable_id))?;
    let json = serde_json::to_string(&object)
        .map_err(|e| (format!("cannot be written back as JSON: {e}"), None))?;
    Ok((record.id.as_str().to_owned(), json.into_boxed_str()))
}

/// One element's bytes and where it starts.
struct Element {
    line: u64,
    text: Vec<u8>,
    /// Longer than [`MAX_ELEMENT_BYTES`]: the text was cut and is not to be parsed.
    too_long: bool,
}

/// Splits the input into elements: lines of JSON Lines, or the top-level values of an
/// array. Which one is decided by the first non-blank byte (`[`: an array).
struct ElementReader<'a, R: BufRead> {
    input: &'a mut R,
    array: bool,
    /// The line the reader is on (1-based).
    line: u64,
    /// The array's closing `]` was read.
    done: bool,
}

impl<'a, R: BufRead> ElementReader<'a, R> {
    fn new(input: &'a mut R) -> Result<Self, RosterError> {
        let mut reader = Self {
            input,
            array: false,
            line: 1,
            done: false,
        };
        // Skip leading blank space (and a UTF-8 byte order mark) to see the format.
        loop {
            let buffer = reader.input.fill_buf()?;
            let Some(&first) = buffer.first() else {
                break;
            };
            if buffer.starts_with(&[0xEF, 0xBB, 0xBF]) {
                reader.input.consume(3);
                continue;
            }
            if first.is_ascii_whitespace() {
                if first == b'\n' {
                    reader.line += 1;
                }
                reader.input.consume(1);
                continue;
            }
            if first == b'[' {
                reader.array = true;
                reader.input.consume(1);
            }
            break;
        }
        Ok(reader)
    }

    fn next_element(&mut self) -> Result<Option<Element>, RosterError> {
        if self.array {
            self.next_array_element()
        } else {
            self.next_line()
        }
    }

    /// The next non-blank line.
    fn next_line(&mut self) -> Result<Option<Element>, RosterError> {
        loop {
            let line = self.line;
            let mut text = Vec::new();
            let mut too_long = false;
            let mut ended = false;
            let mut read_any = false;
            loop {
                let buffer = self.input.fill_buf()?;
                if buffer.is_empty() {
                    break;
                }
                read_any = true;
                let (chunk, found) = match buffer.iter().position(|&b| b == b'\n') {
                    Some(at) => (&buffer[..at], true),
                    None => (buffer, false),
                };
                if text.len() + chunk.len() > MAX_ELEMENT_BYTES {
                    too_long = true;
                } else {
                    text.extend_from_slice(chunk);
                }
                let used = chunk.len() + usize::from(found);
                self.input.consume(used);
                if found {
                    ended = true;
                    self.line += 1;
                    break;
                }
            }
            if !read_any && !ended {
                return Ok(None);
            }
            if too_long || text.iter().any(|b| !b.is_ascii_whitespace()) {
                return Ok(Some(Element {
                    line,
                    text,
                    too_long,
                }));
            }
        }
    }

    /// The next top-level value of the array, its bytes found by tracking strings and
    /// nesting (the value itself is parsed later, like a line).
    fn next_array_element(&mut self) -> Result<Option<Element>, RosterError> {
        if self.done {
            return self.expect_end();
        }
        let mut text = Vec::new();
        let mut too_long = false;
        let mut depth = 0u32;
        let mut in_string = false;
        let mut escaped = false;
        let mut start_line = None;
        loop {
            let buffer = self.input.fill_buf()?;
            if buffer.is_empty() {
                return Err(RosterError::Array(format!(
                    "it ends at line {} without its closing `]`",
                    self.line
                )));
            }
            let mut used = 0;
            let mut finished = false;
            for &byte in buffer {
                used += 1;
                if byte == b'\n' {
                    self.line += 1;
                }
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if byte == b'\\' {
                        escaped = true;
                    } else if byte == b'"' {
                        in_string = false;
                    }
                } else {
                    match byte {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' if depth > 0 => depth -= 1,
                        b']' => {
                            // The array's own end.
                            self.done = true;
                            finished = true;
                            break;
                        }
                        b',' if depth == 0 => {
                            finished = true;
                            break;
                        }
                        _ => {}
                    }
                }
                if start_line.is_none() && !byte.is_ascii_whitespace() {
                    start_line = Some(self.line);
                }
                if start_line.is_some() {
                    if text.len() >= MAX_ELEMENT_BYTES {
                        too_long = true;
                    } else {
                        text.push(byte);
                    }
                }
            }
            self.input.consume(used);
            if finished {
                break;
            }
        }
        match start_line {
            Some(line) => Ok(Some(Element {
                line,
                text,
                too_long,
            })),
            // `[]`, or a stray comma: nothing between the separators.
            None if self.done => self.expect_end(),
            None => Err(RosterError::Array(format!(
                "an empty element before line {}",
                self.line
            ))),
        }
    }

    /// After the closing `]`: only blank space may follow.
    fn expect_end(&mut self) -> Result<Option<Element>, RosterError> {
        loop {
            let buffer = self.input.fill_buf()?;
            let Some(&byte) = buffer.first() else {
                return Ok(None);
            };
            if !byte.is_ascii_whitespace() {
                return Err(RosterError::Array(format!(
                    "text after its closing `]` at line {}",
                    self.line
                )));
            }
            if byte == b'\n' {
                self.line += 1;
            }
            self.input.consume(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, max_bad: usize) -> Result<Roster, RosterError> {
        read_roster(text.as_bytes(), max_bad, |_| {})
    }

    const ADA: &str = r#"{"id": "E-1", "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "groups": ["Engineering"]}"#;
    const GRACE: &str = r#"{"id": "E-2", "email": "grace@example.com", "first_name": "Grace", "last_name": "Hopper"}"#;

    #[test]
    fn json_lines_are_read_one_employee_per_line() {
        let roster = read(&format!("{ADA}\n\n{GRACE}\n"), 0).expect("valid");
        assert_eq!(roster.employees.len(), 2);
        assert_eq!(roster.employees["E-1"].line, 1);
        assert_eq!(roster.employees["E-2"].line, 3);
        let record = roster.employees["E-1"].record().expect("still valid");
        assert_eq!(record.groups, vec!["Engineering".to_owned()]);
    }

    #[test]
    fn an_array_is_read_element_by_element_with_line_numbers() {
        let text = format!("[\n  {ADA},\n  {GRACE}\n]\n");
        let roster = read(&text, 0).expect("valid");
        assert_eq!(roster.employees.len(), 2);
        assert_eq!(roster.employees["E-1"].line, 2);
        assert_eq!(roster.employees["E-2"].line, 3);
        let empty = read("  [ ]  ", 0).expect("an empty array");
        assert!(empty.employees.is_empty());
        let nested = r#"[{"id": "E-3", "email": "x]y@example.com", "first_name": "A, \"B\"", "last_name": "[C]", "groups": ["G]", "H"]}]"#;
        let roster = read(nested, 0).expect("brackets and commas in strings");
        assert_eq!(roster.employees.len(), 1);
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number_and_the_field() {
        let bad = r#"{"id": "E-9", "email": "not-an-email", "first_name": "X", "last_name": "Y"}"#;
        let roster = read(&format!("{ADA}\n{bad}\n{GRACE}\n"), 1).expect("within the limit");
        assert_eq!(roster.employees.len(), 2);
        assert_eq!(roster.bad.len(), 1);
        assert_eq!(roster.bad[0].line, 2);
        assert!(
            roster.bad[0].message.contains("employee.email"),
            "{}",
            roster.bad[0].message
        );
        assert_eq!(roster.bad[0].employee_id.as_deref(), Some("E-9"));
        let Err(RosterError::TooManyBadLines { bad, .. }) =
            read(&format!("{ADA}\n{bad}\n{GRACE}\n"), 0)
        else {
            panic!("over the limit stops the run");
        };
        assert_eq!(bad[0].line, 2);
    }

    #[test]
    fn broken_json_duplicates_and_oversized_lines_are_bad_lines() {
        let long = format!(
            r#"{{"id": "E-5", "email": "a@example.com", "first_name": "{}", "last_name": "Y"}}"#,
            "x".repeat(MAX_ELEMENT_BYTES)
        );
        let text = format!("{ADA}\n{{not json\n{ADA}\n{long}\n[1]\n");
        let roster = read(&text, 10).expect("within the limit");
        let lines: Vec<u64> = roster.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(roster.bad[1]
            .message
            .contains("appears again (first on line 1)"));
        assert!(roster.bad[2].message.contains("longer than"));
        assert!(roster.bad[3].message.contains("not a JSON object"));
    }

    #[test]
    fn an_unterminated_array_is_an_error() {
        assert!(matches!(
            read(&format!("[{ADA},"), 0),
            Err(RosterError::Array(_))
        ));
        assert!(matches!(
            read(&format!("[{ADA}] x"), 0),
            Err(RosterError::Array(_))
        ));
    }
}
