//! HR events: parsing an incoming message into a domain event that cannot be invalid.
//!
//! Parsing is pure: it reads a routing key, a content type and a body, and either returns
//! an [`HrEvent`] or a [`ValidationError`] whose message names the offending field, so an
//! operator reading the dead-letter queue knows what to tell the publisher.

use serde_json::{Map, Value};
use std::fmt;
use time::{Date, OffsetDateTime};

/// The three event types of the contract; the routing key of the message is the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `employee.added`: a hire (or rehire).
    Added,
    /// `employee.updated`: a transfer or a profile change.
    Updated,
    /// `employee.removed`: a leaver.
    Removed,
}

impl EventType {
    /// All event types, for topology bindings and metrics.
    pub const ALL: [EventType; 3] = [EventType::Added, EventType::Updated, EventType::Removed];

    /// The routing key / `event_type` string of the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "employee.added",
            EventType::Updated => "employee.updated",
            EventType::Removed => "employee.removed",
        }
    }

    /// Parses a routing key; `None` for anything the contract does not name.
    pub fn from_routing_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == key)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message cannot be processed at all. Always permanent: it is dead-lettered at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(String);

impl ValidationError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// A refusal decided outside parsing (an untrusted publisher, a foreign email
    /// domain: see `crate::trust`); `message` must already be printable.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(message)
    }
}

/// The idempotency and correlation key of an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(String);

impl EventId {
    /// The id as published.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The HR system's id of an employee; written to Okta as `profile.employeeNumber`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmployeeId(String);

impl EmployeeId {
    /// Validates an employee id: non-empty, no control characters, at most 100 characters.
    ///
    /// # Errors
    /// A [`ValidationError`] naming `field`.
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ValidationError::new(format!("`{field}` must not be empty")));
        }
        reject_control_chars(field, value)?;
        if value.chars().count() > 100 {
            return Err(ValidationError::new(format!(
                "`{field}` is longer than 100 characters"
            )));
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as HR sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, which is also the Okta login. Case is kept as HR sent it; Okta
/// compares logins case-insensitively, and so does [`Email::ordering_key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Validates an email as Okta's login rules need it: `local@domain`, 5 to 100
    /// characters, no spaces or control characters.
    ///
    /// # Errors
    /// A [`ValidationError`] naming `field`.
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        let value = value.trim();
        reject_control_chars(field, value)?;
        reject_invisible_chars(field, value)?;
        // One spelling per address: a composed and a decomposed `é` are the same login to
        // a person, so they must be the same login (and ordering key) here.
        let normalised = icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(value);
        let value = normalised.as_ref();
        let length = value.chars().count();
        if !(5..=100).contains(&length) {
            return Err(ValidationError::new(format!(
                "`{field}` must be 5 to 100 characters long (Okta's login limits), got {length}"
            )));
        }
        let valid_shape = match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !value.chars().any(char::is_whitespace)
            }
            None => false,
        };
        if !valid_shape {
            return Err(ValidationError::new(format!(
                "`{field}` is not an email address"
            )));
        }
        Ok(Self(value.to_owned()))
    }

    /// The address as HR sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded address, for comparisons and per-employee ordering.
    pub fn ordering_key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// Everything HR says about an employee in `employee.added` / `employee.updated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmployeeRecord {
    pub id: EmployeeId,
    pub email: Email,
    pub first_name: String,
    pub last_name: String,
    /// HR group names, deduplicated, in the order HR gave them.
    pub groups: Vec<String>,
    pub department: Option<String>,
    pub title: Option<String>,
    pub manager_email: Option<Email>,
    pub start_date: Option<Date>,
}

/// Who leaves, in `employee.removed`: at least one of the two is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaverRef {
    pub id: Option<EmployeeId>,
    pub email: Option<Email>,
}

/// What the event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    Added(EmployeeRecord),
    Updated(EmployeeRecord),
    Removed {
        leaver: LeaverRef,
        /// When the termination takes effect; `None` means now.
        effective_at: Option<OffsetDateTime>,
    },
}

/// A validated HR event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HrEvent {
    pub event_id: EventId,
    pub occurred_at: OffsetDateTime,
    pub body: EventBody,
}

impl HrEvent {
    /// The event's type, from its body.
    pub fn event_type(&self) -> EventType {
        match self.body {
            EventBody::Added(_) => EventType::Added,
            EventBody::Updated(_) => EventType::Updated,
            EventBody::Removed { .. } => EventType::Removed,
        }
    }

    /// The employee id, when the event carries one.
    pub fn employee_id(&self) -> Option<&EmployeeId> {
        match &self.body {
            EventBody::Added(r) | EventBody::Updated(r) => Some(&r.id),
            EventBody::Removed { leaver, .. } => leaver.id.as_ref(),
        }
    }

    /// The email, when the event carries one.
    pub fn email(&self) -> Option<&Email> {
        match &self.body {
            EventBody::Added(r) | EventBody::Updated(r) => Some(&r.email),
            EventBody::Removed { leaver, .. } => leaver.email.as_ref(),
        }
    }

    /// The keys that identify this employee for ordering: two events that share any key
    /// are processed one after the other, in delivery order.
    pub fn ordering_keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(2);
        if let Some(id) = self.employee_id() {
            keys.push(format!("id:{}", id.as_str()));
        }
        if let Some(email) = self.email() {
            keys.push(format!("email:{}", email.ordering_key()));
        }
        keys
    }
}

/// What the transport tells us about a message, without any broker types.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    pub routing_key: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// Best-effort facts about a message that failed validation, for its `failed` outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationContext {
    pub event_id: Option<String>,
    pub employee_id: Option<String>,
    pub email: Option<String>,
}

/// The largest body accepted unless `MAX_MESSAGE_BYTES` says otherwise: an HR event is
/// a few hundred bytes, and a bound keeps a hostile or broken publisher from making the
/// service parse (and hold) megabytes per delivery.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 65_536;

/// Most HR groups one event may name; far above any real employee's.
const MAX_GROUPS: usize = 100;

/// Parses a message into an [`HrEvent`], with bodies up to
/// [`DEFAULT_MAX_MESSAGE_BYTES`].
///
/// # Errors
/// As [`parse_message_bounded`].
pub fn parse_message(
    message: RawMessage<'_>,
) -> Result<HrEvent, (ValidationError, ValidationContext)> {
    parse_message_bounded(message, DEFAULT_MAX_MESSAGE_BYTES)
}

/// Parses a message into an [`HrEvent`]; a body over `max_body_bytes` is refused before
/// any of it is read.
///
/// # Errors
/// A [`ValidationError`] (with whatever could still be read, for the outcome) when the
/// body is too large, the routing key is not an event type, the content type is not
/// JSON, the body is not UTF-8 JSON, or a required field is missing or malformed.
pub fn parse_message_bounded(
    message: RawMessage<'_>,
    max_body_bytes: usize,
) -> Result<HrEvent, (ValidationError, ValidationContext)> {
    if message.body.len() > max_body_bytes {
        return Err((
            ValidationError::new(format!(
                "body is {} bytes, more than the {max_body_bytes} allowed (MAX_MESSAGE_BYTES)",
                message.body.len()
            )),
            ValidationContext::default(),
        ));
    }
    let mut context = ValidationContext::default();
    let parsed = parse_inner(message, &mut context);
    parsed.map_err(|error| (error, context))
}

fn parse_inner(
    message: RawMessage<'_>,
    context: &mut ValidationContext,
) -> Result<HrEvent, ValidationError> {
    if let Some(content_type) = message.content_type {
        if !is_json_content_type(content_type) {
            return Err(ValidationError::new(format!(
                "content type `{}` is not application/json",
                printable(content_type)
            )));
        }
    }
    // `from_utf8` refuses overlong encodings, surrogates and truncated sequences too.
    let text = std::str::from_utf8(message.body).map_err(|e| {
        ValidationError::new(format!(
            "body is not UTF-8 (invalid, overlong or truncated byte sequence at offset {})",
            e.valid_up_to()
        ))
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ValidationError::new(format!("body is not valid JSON: {e}")))?;
    let root = value
        .as_object()
        .ok_or_else(|| ValidationError::new("body is not a JSON object"))?;

    // Gather what we can for the outcome before any check can fail.
    context.event_id = root
        .get("event_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(employee) = root.get("employee").and_then(Value::as_object) {
        context.employee_id = employee
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        context.email = employee
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }

    let event_type = EventType::from_routing_key(message.routing_key).ok_or_else(|| {
        ValidationError::new(format!(
            "routing key `{}` is not an event type (expected employee.added, employee.updated or employee.removed)",
            printable(message.routing_key)
        ))
    })?;

    let event_id = required_str(root, "event_id", "event_id")?;
    reject_control_chars("event_id", event_id)?;
    if event_id.chars().count() > 255 {
        return Err(ValidationError::new(
            "`event_id` is longer than 255 characters",
        ));
    }
    let event_id = EventId(event_id.to_owned());
    let occurred_at = required_timestamp(root, "occurred_at")?;
    let employee = match root.get("employee") {
        Some(Value::Object(employee)) => employee,
        Some(_) => return Err(ValidationError::new("`employee` must be an object")),
        None => return Err(ValidationError::new("missing required field `employee`")),
    };

    let body = match event_type {
        EventType::Added => EventBody::Added(parse_record(employee)?),
        EventType::Updated => EventBody::Updated(parse_record(employee)?),
        EventType::Removed => {
            let id = optional_str(employee, "id", "employee.id")?
                .map(|v| EmployeeId::parse("employee.id", v))
                .transpose()?;
            let email = optional_str(employee, "email", "employee.email")?
                .map(|v| Email::parse("employee.email", v))
                .transpose()?;
            if id.is_none() && email.is_none() {
                return Err(ValidationError::new(
                    "`employee` needs at least one of `employee.id` and `employee.email`",
                ));
            }
            let effective_at = match root.get("effective_at") {
                None | Some(Value::Null) => None,
                Some(_) => Some(required_timestamp(root, "effective_at")?),
            };
            EventBody::Removed {
                leaver: LeaverRef { id, email },
                effective_at,
            }
        }
    };
    Ok(HrEvent {
        event_id,
        occurred_at,
        body,
    })
}

/// Parses an `employee` object exactly as `employee.added` does (same fields, same
/// rules, same messages): for HR's full roster, which reconciliation reads line by line.
///
/// # Errors
/// A [`ValidationError`] naming the first field that is missing or malformed.
pub fn parse_employee_record(
    employee: &Map<String, Value>,
) -> Result<EmployeeRecord, ValidationError> {
    parse_record(employee)
}

fn parse_record(employee: &Map<String, Value>) -> Result<EmployeeRecord, ValidationError> {
    let id = EmployeeId::parse("employee.id", required_str(employee, "id", "employee.id")?)?;
    let email = Email::parse(
        "employee.email",
        required_str(employee, "email", "employee.email")?,
    )?;
    let first_name = person_name(
        "employee.first_name",
        required_str(employee, "first_name", "employee.first_name")?,
    )?;
    let last_name = person_name(
        "employee.last_name",
        required_str(employee, "last_name", "employee.last_name")?,
    )?;
    let groups = match employee.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() > MAX_GROUPS => {
            return Err(ValidationError::new(format!(
                "`employee.groups` names {} groups, more than {MAX_GROUPS}",
                items.len()
            )))
        }
        Some(Value::Array(items)) => {
            let mut groups: Vec<String> = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let name = item.as_str().ok_or_else(|| {
                    ValidationError::new(format!("`employee.groups[{index}]` must be a string"))
                })?;
                reject_control_chars("employee.groups", name)?;
                if name.chars().count() > 255 {
                    return Err(ValidationError::new(format!(
                        "`employee.groups[{index}]` is longer than 255 characters"
                    )));
                }
                if !groups.iter().any(|g| g == name) {
                    groups.push(name.to_owned());
                }
            }
            groups
        }
        Some(_) => {
            return Err(ValidationError::new(
                "`employee.groups` must be an array of strings",
            ))
        }
    };
    let department = optional_text(employee, "department", "employee.department")?;
    let title = optional_text(employee, "title", "employee.title")?;
    let manager_email = optional_str(employee, "manager_email", "employee.manager_email")?
        .filter(|v| !v.trim().is_empty())
        .map(|v| Email::parse("employee.manager_email", v))
        .transpose()?;
    let start_date = optional_str(employee, "start_date", "employee.start_date")?
        .map(|v| {
            Date::parse(v, time::macros::format_description!("[year]-[month]-[day]")).map_err(
                |_| {
                    ValidationError::new(format!(
                        "`employee.start_date` is not a date (YYYY-MM-DD): `{}`",
                        printable(v)
                    ))
                },
            )
        })
        .transpose()?;
    Ok(EmployeeRecord {
        id,
        email,
        first_name,
        last_name,
        groups,
        department,
        title,
        manager_email,
        start_date,
    })
}

fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a str, ValidationError> {
    match object.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ValidationError::new(format!("`{field}` must not be empty"))),
        None | Some(Value::Null) => Err(ValidationError::new(format!(
            "missing required field `{field}`"
        ))),
        Some(_) => Err(ValidationError::new(format!("`{field}` must be a string"))),
    }
}

fn optional_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, ValidationError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ValidationError::new(format!("`{field}` must be a string"))),
    }
}

fn optional_text(
    object: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, ValidationError> {
    let Some(value) = optional_str(object, key, field)? else {
        return Ok(None);
    };
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    reject_control_chars(field, value)?;
    if value.chars().count() > 255 {
        return Err(ValidationError::new(format!(
            "`{field}` is longer than 255 characters"
        )));
    }
    Ok(Some(value.to_owned()))
}

fn person_name(field: &str, value: &str) -> Result<String, ValidationError> {
    let value = value.trim();
    reject_control_chars(field, value)?;
    let length = value.chars().count();
    if !(1..=50).contains(&length) {
        return Err(ValidationError::new(format!(
            "`{field}` must be 1 to 50 characters long (Okta's limits), got {length}"
        )));
    }
    Ok(value.to_owned())
}

fn required_timestamp(
    object: &Map<String, Value>,
    key: &str,
) -> Result<OffsetDateTime, ValidationError> {
    let text = required_str(object, key, key)?;
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
        ValidationError::new(format!(
            "`{key}` is not an RFC 3339 timestamp: `{}`",
            printable(text)
        ))
    })
}

/// Refuses control characters (C0, DEL, C1: they forge log lines and break headers)
/// and the invisible characters that make text display other than it reads: bidi
/// embeddings, overrides and isolates, and the Unicode line and paragraph separators.
fn reject_control_chars(field: &str, value: &str) -> Result<(), ValidationError> {
    let is_deceptive = |c: char| {
        c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
    };
    if let Some(c) = value.chars().find(|&c| is_deceptive(c)) {
        return Err(ValidationError::new(format!(
            "`{field}` contains control characters (U+{:04X})",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Refuses zero-width and other invisible format characters (Unicode category `Cf`:
/// U+200B…U+200D, U+2060, U+FEFF, soft hyphen, tag characters…) and variation selectors:
/// an address containing one looks like another account's login to a person approving
/// or auditing it, while Okta treats it as a different login.
fn reject_invisible_chars(field: &str, value: &str) -> Result<(), ValidationError> {
    use icu_properties::props::GeneralCategory;
    use icu_properties::CodePointMapData;
    let category = CodePointMapData::<GeneralCategory>::new();
    let invisible = |c: char| {
        category.get(c) == GeneralCategory::Format
            || matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{034F}')
    };
    if let Some(c) = value.chars().find(|&c| invisible(c)) {
        return Err(ValidationError::new(format!(
            "`{field}` contains an invisible character (U+{:04X})",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Makes a value from the message safe to put in an error message, a log line or an
/// AMQP short string: control characters (and quotes and backslashes) escaped, at most
/// 120 characters of the input and 240 bytes of output.
pub fn printable(value: &str) -> String {
    const LIMIT_CHARS: usize = 120;
    const LIMIT_BYTES: usize = 240;
    // Called several times per delivery (log fields, span attributes), usually on short
    // plain ASCII, which is returned as it is.
    let plain = |b: u8| b == b' ' || (b.is_ascii_graphic() && !matches!(b, b'\\' | b'\'' | b'"'));
    if value.len() <= LIMIT_CHARS && value.bytes().all(plain) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len().min(LIMIT_BYTES) + '…'.len_utf8());
    for (index, c) in value.chars().enumerate() {
        // Plain ASCII, the usual case, is itself (and cheap to tell); the rest as
        // `char::escape_debug` has it: an escape is ASCII, one byte per char, an
        // unescaped char is itself.
        let plain = c == ' ' || (c.is_ascii_graphic() && !matches!(c, '\\' | '\'' | '"'));
        let escaped = (!plain).then(|| c.escape_debug());
        let bytes = match &escaped {
            Some(escape) if escape.len() > 1 => escape.len(),
            _ => c.len_utf8(),
        };
        if index == LIMIT_CHARS || out.len() + bytes > LIMIT_BYTES {
            out.push('…');
            return out;
        }
        match escaped {
            Some(escape) => out.extend(escape),
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw<'a>(routing_key: &'a str, body: &'a str) -> RawMessage<'a> {
        RawMessage {
            routing_key,
            content_type: Some("application/json"),
            body: body.as_bytes(),
        }
    }

    fn error_of(message: RawMessage<'_>) -> String {
        match parse_message(message) {
            Ok(event) => panic!("expected a validation error, got {event:?}"),
            Err((error, _)) => error.to_string(),
        }
    }

    const HIRE: &str = r#"{"event_id":"ev-1","occurred_at":"2026-11-28T09:00:00Z","employee":{"id":"E-1001","email":"Ada.Lovelace@example.com","first_name":"Ada","last_name":"Lovelace","groups":["Engineering","Sales","Engineering"],"department":"R&D","manager_email":"grace@example.com","start_date":"2026-12-01","unknown":1},"extra":true}"#;

    #[test]
    fn parses_a_hire_with_optional_fields_and_ignores_unknown_ones() {
        let event = parse_message(raw("employee.added", HIRE)).expect("valid");
        assert_eq!(event.event_id.as_str(), "ev-1");
        let EventBody::Added(record) = &event.body else {
            panic!("not a hire")
        };
        assert_eq!(record.groups, vec!["Engineering", "Sales"]);
        assert_eq!(record.department.as_deref(), Some("R&D"));
        assert_eq!(record.title, None);
        assert_eq!(
            record.manager_email.as_ref().map(Email::as_str),
            Some("grace@example.com")
        );
        assert_eq!(record.start_date, Some(time::macros::date!(2026 - 12 - 01)));
        assert_eq!(
            event.ordering_keys(),
            vec!["id:E-1001", "email:ada.lovelace@example.com"]
        );
    }

    #[test]
    fn groups_default_to_empty() {
        let body = r#"{"event_id":"e","occurred_at":"2026-11-28T09:00:00+01:00","employee":{"id":"E","email":"a@b.co","first_name":"A","last_name":"B"}}"#;
        let event = parse_message(raw("employee.updated", body)).expect("valid");
        let EventBody::Updated(record) = event.body else {
            panic!("not an update")
        };
        assert!(record.groups.is_empty());
    }

    #[test]
    fn removal_needs_id_or_email_and_reads_effective_at() {
        let by_id = r#"{"event_id":"e","occurred_at":"2026-11-28T09:00:00Z","effective_at":"2026-12-01T17:00:00Z","employee":{"id":"E-9"}}"#;
        let event = parse_message(raw("employee.removed", by_id)).expect("valid");
        let EventBody::Removed {
            leaver,
            effective_at,
        } = &event.body
        else {
            panic!("not a removal")
        };
        assert_eq!(leaver.email, None);
        assert!(effective_at.is_some());
        assert_eq!(event.ordering_keys(), vec!["id:E-9"]);

        let neither = r#"{"event_id":"e","occurred_at":"2026-11-28T09:00:00Z","employee":{}}"#;
        assert!(error_of(raw("employee.removed", neither)).contains("at least one of"));
    }

    #[test]
    fn each_missing_required_field_is_named() {
        for field in ["id", "email", "first_name", "last_name"] {
            let mut value: Value = serde_json::from_str(HIRE).expect("json");
            value["employee"]
                .as_object_mut()
                .expect("object")
                .remove(field);
            let body = value.to_string();
            let message = error_of(raw("employee.added", &body));
            assert_eq!(
                message,
                format!("missing required field `employee.{field}`")
            );
        }
        for field in ["event_id", "occurred_at", "employee"] {
            let mut value: Value = serde_json::from_str(HIRE).expect("json");
            value.as_object_mut().expect("object").remove(field);
            let body = value.to_string();
            assert_eq!(
                error_of(raw("employee.added", &body)),
                format!("missing required field `{field}`")
            );
        }
    }

    #[test]
    fn transport_level_problems_are_reported() {
        assert!(error_of(raw("employee.fired", HIRE)).contains("routing key `employee.fired`"));
        assert!(error_of(raw("employee.added", "{not json")).contains("not valid JSON"));
        assert!(error_of(raw("employee.added", "[1]")).contains("not a JSON object"));
        let latin1 = RawMessage {
            routing_key: "employee.added",
            content_type: None,
            body: b"{\"a\":\"\xe9\"}",
        };
        assert!(error_of(latin1).contains("not UTF-8"));
        let xml = RawMessage {
            routing_key: "employee.added",
            content_type: Some("application/xml"),
            body: HIRE.as_bytes(),
        };
        assert!(error_of(xml).contains("application/xml"));
    }

    #[test]
    fn absent_or_parameterised_json_content_type_is_accepted() {
        for content_type in [
            None,
            Some("application/json; charset=utf-8"),
            Some("Application/JSON"),
        ] {
            let message = RawMessage {
                routing_key: "employee.added",
                content_type,
                body: HIRE.as_bytes(),
            };
            assert!(parse_message(message).is_ok(), "{content_type:?}");
        }
    }

    #[test]
    fn malformed_values_are_rejected_with_the_field_name() {
        let cases = [
            (
                r#""occurred_at":"yesterday""#,
                "`occurred_at` is not an RFC 3339",
            ),
            (r#""event_id":"""#, "`event_id` must not be empty"),
            (r#""event_id":42"#, "`event_id` must be a string"),
        ];
        for (replacement, expected) in cases {
            let key = replacement.split(':').next().expect("key");
            let mut value: Value = serde_json::from_str(HIRE).expect("json");
            let patch: Value =
                serde_json::from_str(&format!("{{{replacement}}}")).expect("patch json");
            let key = key.trim_matches('"');
            value[key] = patch[key].clone();
            let body = value.to_string();
            assert!(
                error_of(raw("employee.added", &body)).contains(expected),
                "{replacement}"
            );
        }
    }

    #[test]
    fn validation_context_keeps_what_could_be_read() {
        let body = r#"{"event_id":"ev-7","employee":{"id":"E-7","email":"x@y.z"}}"#;
        let Err((_, context)) = parse_message(raw("employee.added", body)) else {
            panic!("should fail")
        };
        assert_eq!(context.event_id.as_deref(), Some("ev-7"));
        assert_eq!(context.employee_id.as_deref(), Some("E-7"));
    }

    #[test]
    fn email_and_names_follow_okta_limits() {
        assert!(Email::parse("f", "a@b").is_err());
        assert!(Email::parse("f", "no-at-sign.example.com").is_err());
        assert!(Email::parse("f", "two@@example.com").is_err());
        assert!(Email::parse("f", "sp ace@example.com").is_err());
        assert!(Email::parse("f", &format!("{}@example.com", "a".repeat(95))).is_err());
    }

    #[test]
    fn emails_are_nfc_normalised() {
        let decomposed = Email::parse("f", "rene\u{0301}@example.com").expect("valid");
        let composed = Email::parse("f", "ren\u{00E9}@example.com").expect("valid");
        assert_eq!(decomposed.as_str(), "ren\u{00E9}@example.com");
        assert_eq!(decomposed, composed);
        assert_eq!(decomposed.ordering_key(), composed.ordering_key());
    }

    #[test]
    fn emails_with_invisible_characters_are_refused() {
        for invisible in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{E0041}',
            '\u{FE0F}',
            '\u{3164}',
            '\u{034F}',
        ] {
            let value = format!("ad{invisible}min@example.com");
            let error = Email::parse("employee.email", &value).expect_err("refused");
            assert!(
                error.to_string().contains("invisible character"),
                "{invisible:?}: {error}"
            );
            assert!(error.to_string().contains("employee.email"));
        }
        // Letters of any script stay allowed.
        assert!(Email::parse("f", "\u{0417}\u{043E}\u{044F}@example.com").is_ok());
        assert!(person_name("f", &"x".repeat(51)).is_err());
        assert!(person_name("f", "line\nbreak").is_err());
    }

    #[test]
    fn printable_escapes_control_characters_and_bounds_length() {
        assert_eq!(printable("a\nb\u{1b}"), "a\\nb\\u{1b}");
        assert_eq!(printable("é\"ü→"), "é\\\"ü→");
        // The same as escaping and bounding char by char, the plain definition.
        let by_char = |value: &str| {
            let mut out = String::new();
            for (index, c) in value.chars().enumerate() {
                let escaped: String = c.escape_debug().collect();
                if index == 120 || out.len() + escaped.len() > 240 {
                    out.push('…');
                    return out;
                }
                out.push_str(&escaped);
            }
            out
        };
        let every_ascii: String = (0u8..128).map(char::from).collect();
        for value in [
            every_ascii.as_str(),
            &every_ascii[..40],
            "Ünïcödé \u{301}é\u{200b}x 😀",
            &"é\u{7f}".repeat(90),
            // The byte bound falls inside an escape, and inside a two-byte letter.
            &format!("a{}", "\u{1}".repeat(100)),
            &format!("{}{}", "\u{1}".repeat(47), "é".repeat(5)),
        ] {
            assert_eq!(printable(value), by_char(value), "{value:?}");
        }
        let wide = printable(&"é".repeat(200));
        assert!(wide.len() <= 243 && wide.ends_with('…'), "{wide}");
        assert_eq!(printable(&"x".repeat(500)).chars().count(), 121);
        assert_eq!(printable(&"x".repeat(120)), "x".repeat(120));
        // Escaping multiplies the length; an AMQP short string holds 255 bytes.
        let escaped = printable(&"\u{1}".repeat(255));
        assert!(escaped.len() <= 243, "{}", escaped.len());
        assert!(escaped.ends_with('…'));
    }

    #[test]
    fn each_length_limit_admits_its_longest_value_and_refuses_one_more() {
        let hire = |patch: &dyn Fn(&mut Value)| {
            let mut body: Value = serde_json::from_str(HIRE).expect("json");
            patch(&mut body);
            parse_message(raw("employee.added", &body.to_string()))
                .map_err(|(error, _)| error.to_string())
        };
        let id = |n: usize| move |b: &mut Value| b["employee"]["id"] = json!("1".repeat(n));
        assert!(hire(&id(100)).is_ok());
        assert_eq!(
            hire(&id(101)).expect_err("too long"),
            "`employee.id` is longer than 100 characters"
        );
        let event_id = |n: usize| move |b: &mut Value| b["event_id"] = json!("e".repeat(n));
        assert!(hire(&event_id(255)).is_ok());
        assert!(hire(&event_id(256)).is_err());
        let groups = |n: usize| {
            move |b: &mut Value| {
                b["employee"]["groups"] = json!((0..n).map(|i| format!("g{i}")).collect::<Vec<_>>())
            }
        };
        assert!(hire(&groups(100)).is_ok());
        assert!(hire(&groups(101)).is_err());
        let group_name =
            |n: usize| move |b: &mut Value| b["employee"]["groups"] = json!(["g".repeat(n)]);
        assert!(hire(&group_name(255)).is_ok());
        assert!(hire(&group_name(256)).is_err());
        for field in ["department", "title"] {
            let text = |n: usize| move |b: &mut Value| b["employee"][field] = json!("t".repeat(n));
            let event = hire(&text(255)).expect("255 characters");
            let EventBody::Added(record) = event.body else {
                panic!("not a hire")
            };
            let value = if field == "title" {
                record.title
            } else {
                record.department
            };
            assert_eq!(value.map(|v| v.len()), Some(255));
            assert_eq!(
                hire(&text(256)).expect_err("too long"),
                format!("`employee.{field}` is longer than 255 characters")
            );
        }
    }

    #[test]
    fn a_blank_manager_email_is_absent_not_invalid() {
        let mut body: Value = serde_json::from_str(HIRE).expect("json");
        body["employee"]["manager_email"] = json!("  ");
        let event = parse_message(raw("employee.added", &body.to_string())).expect("valid");
        let EventBody::Added(record) = event.body else {
            panic!("not a hire")
        };
        assert_eq!(record.manager_email, None);
    }

    #[test]
    fn printable_escapes_quotes_and_backslashes_in_plain_ascii() {
        assert_eq!(printable(r#"say "hi""#), r#"say \"hi\""#);
        assert_eq!(printable("it's"), r"it\'s");
        assert_eq!(printable(r"C:\temp"), r"C:\\temp");
        assert_eq!(printable("\""), "\\\"");
        assert_eq!(printable("\\"), "\\\\");
        assert_eq!(printable("plain text"), "plain text");
    }

    #[test]
    fn event_types_read_and_name_their_routing_keys() {
        for event_type in EventType::ALL {
            assert_eq!(
                EventType::from_routing_key(event_type.as_str()),
                Some(event_type)
            );
            assert_eq!(event_type.to_string(), event_type.as_str());
        }
        assert_eq!(EventType::Added.as_str(), "employee.added");
        assert_eq!(EventType::Updated.as_str(), "employee.updated");
        assert_eq!(EventType::Removed.as_str(), "employee.removed");
        assert_eq!(EventType::from_routing_key("employee.*"), None);
    }

    #[test]
    fn a_body_over_the_limit_is_refused_unread() {
        let body = format!("{{\"pad\":\"{}\"}}", " ".repeat(2000));
        let message = RawMessage {
            routing_key: "employee.added",
            content_type: None,
            body: body.as_bytes(),
        };
        let Err((error, context)) = parse_message_bounded(message, 1024) else {
            panic!("over the limit")
        };
        assert_eq!(
            error.to_string(),
            format!(
                "body is {} bytes, more than the 1024 allowed (MAX_MESSAGE_BYTES)",
                body.len()
            )
        );
        assert_eq!(context, ValidationContext::default());
        // At the limit, the body is read (and here fails for what it is).
        let Err((error, _)) = parse_message_bounded(
            RawMessage {
                body: &body.as_bytes()[..1024],
                ..message
            },
            1024,
        ) else {
            panic!("a truncated body is not JSON")
        };
        assert!(error.to_string().contains("not valid JSON"), "{error}");
    }

    #[test]
    fn overlong_and_broken_utf8_is_refused_with_its_offset() {
        // `/` as an overlong two-byte sequence, a lone surrogate, a truncated sequence.
        for (body, offset) in [
            (&b"{\"a\":\"\xc0\xaf\"}"[..], 6),
            (&b"{\"a\":\"\xed\xa0\x80\"}"[..], 6),
            (&b"{\"a\":\"\xe2\x82"[..], 6),
        ] {
            let message = RawMessage {
                routing_key: "employee.added",
                content_type: None,
                body,
            };
            let error = error_of(message);
            assert!(error.contains("not UTF-8"), "{error}");
            assert!(error.contains(&format!("offset {offset}")), "{error}");
        }
    }

    #[test]
    fn hostile_field_values_are_refused_naming_the_field() {
        let patch = |field: &str, value: Value| {
            let mut body: Value = serde_json::from_str(HIRE).expect("json");
            body["employee"][field] = value;
            error_of(raw("employee.added", &body.to_string()))
        };
        assert!(patch("first_name", json!("Ada\u{202E}evil"))
            .contains("`employee.first_name` contains control characters (U+202E)"));
        assert!(patch("last_name", json!("x\u{2028}y")).contains("U+2028"));
        assert!(patch("id", json!("E-1\u{0}"))
            .contains("`employee.id` contains control characters (U+0000)"));
        assert!(patch("email", json!("a\u{85}@example.com")).contains("U+0085"));
        assert!(patch("last_name", json!("")).contains("`employee.last_name` must not be empty"));
        assert!(patch("groups", json!(vec!["g"; 101])).contains("more than 100"));
        assert!(patch("groups", json!(["x".repeat(256)])).contains("longer than 255"));
        let mut body: Value = serde_json::from_str(HIRE).expect("json");
        body["event_id"] = json!("e".repeat(256));
        assert!(error_of(raw("employee.added", &body.to_string())).contains("`event_id` is longer"));
    }
}
