//! The `search=` / `filter=` expression language of Okta's list endpoints.
//!
//! Okta follows SCIM filtering: `profile.login eq "a@b.c" and (status eq "ACTIVE" or
//! id sw "00u")`. The fake must parse it the way Okta does, because a client that
//! forgets to escape a `"` inside a value produces a *different* expression, and the
//! tests need to see that widen nothing. Parsing is pure: text in, [`Expr`] out; the
//! caller supplies attribute values when evaluating.

use serde_json::Value;

/// A comparison operator. Okta spells them in any case (`eq`, `EQ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    StartsWith,
    Contains,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Present,
}

/// A literal on the right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Number(f64),
    Bool(bool),
    Null,
}

/// A parsed search expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Compare {
        attribute: String,
        op: Op,
        value: Literal,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Why an expression was refused; Okta answers every case with `E0000031`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid search criteria: {0}")]
pub struct SearchError(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Str(String),
    Word(String),
}

fn tokenize(input: &str) -> Result<Vec<Token>, SearchError> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(SearchError("unterminated string".into())),
                        Some('"') => break,
                        // Only these escapes exist; anything else is a malformed value,
                        // never silently taken literally.
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '/')) => value.push(e),
                            other => {
                                return Err(SearchError(format!("bad escape {other:?}")));
                            }
                        },
                        Some(other) => value.push(other),
                    }
                }
                tokens.push(Token::Str(value));
            }
            _ => {
                let mut word = String::new();
                while let Some(&w) = chars.peek() {
                    if w.is_whitespace() || matches!(w, '(' | ')' | '"') {
                        break;
                    }
                    word.push(w);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

/// Parses a search or filter expression.
///
/// # Errors
/// Any syntax Okta would refuse: unbalanced parentheses or quotes, unknown
/// operators (including `ne`, which Okta does not support), missing values, stray tokens.
pub fn parse(input: &str) -> Result<Expr, SearchError> {
    let tokens = tokenize(input)?;
    let mut parser = Parser { tokens, pos: 0 };
    let expr = parser.or_expr()?;
    match parser.tokens.get(parser.pos) {
        None => Ok(expr),
        Some(t) => Err(SearchError(format!("unexpected {t:?}"))),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
    }

    fn or_expr(&mut self) -> Result<Expr, SearchError> {
        let mut left = self.and_expr()?;
        while self.peek_keyword("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and_expr()?));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, SearchError> {
        let mut left = self.primary()?;
        while self.peek_keyword("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Expr, SearchError> {
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or_expr()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err(SearchError("missing )".into())),
                }
            }
            Some(Token::Word(attribute)) if is_attribute_path(&attribute) => {
                let op = match self.next() {
                    Some(Token::Word(op)) => parse_op(&op)?,
                    other => return Err(SearchError(format!("expected operator, got {other:?}"))),
                };
                let value = if op == Op::Present {
                    Literal::Null
                } else {
                    match self.next() {
                        Some(Token::Str(s)) => Literal::Str(s),
                        Some(Token::Word(w)) => parse_bare_literal(&w)?,
                        other => return Err(SearchError(format!("expected value, got {other:?}"))),
                    }
                };
                Ok(Expr::Compare {
                    attribute,
                    op,
                    value,
                })
            }
            other => Err(SearchError(format!("expected attribute, got {other:?}"))),
        }
    }
}

fn is_attribute_path(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        && !word.ends_with('.')
        && !["and", "or"].iter().any(|k| word.eq_ignore_ascii_case(k))
}

fn parse_op(op: &str) -> Result<Op, SearchError> {
    Ok(match op.to_ascii_lowercase().as_str() {
        "eq" => Op::Eq,
        "sw" => Op::StartsWith,
        "co" => Op::Contains,
        "gt" => Op::Greater,
        "ge" => Op::GreaterOrEqual,
        "lt" => Op::Less,
        "le" => Op::LessOrEqual,
        "pr" => Op::Present,
        _ => return Err(SearchError(format!("unsupported operator {op}"))),
    })
}

fn parse_bare_literal(word: &str) -> Result<Literal, SearchError> {
    match word.to_ascii_lowercase().as_str() {
        "true" => Ok(Literal::Bool(true)),
        "false" => Ok(Literal::Bool(false)),
        "null" => Ok(Literal::Null),
        _ => word
            .parse::<f64>()
            .map(Literal::Number)
            .map_err(|_| SearchError(format!("unquoted value {word}"))),
    }
}

impl Expr {
    /// Whether a record matches; `lookup` returns the record's value for an attribute
    /// path such as `profile.login` or `status` (`None` when it has none).
    /// String comparisons ignore case, as Okta's do.
    pub fn matches(&self, lookup: &dyn Fn(&str) -> Option<Value>) -> bool {
        match self {
            Expr::And(a, b) => a.matches(lookup) && b.matches(lookup),
            Expr::Or(a, b) => a.matches(lookup) || b.matches(lookup),
            Expr::Compare {
                attribute,
                op,
                value,
            } => match lookup(attribute) {
                None | Some(Value::Null) => *op != Op::Present && *value == Literal::Null,
                Some(_) if *op == Op::Present => true,
                // An array attribute matches when any element does.
                Some(Value::Array(items)) => items.iter().any(|item| compare(item, *op, value)),
                Some(actual) => compare(&actual, *op, value),
            },
        }
    }

    /// Whether every comparison is allowed by `permitted(attribute, op)`: the `filter`
    /// parameter accepts only a few attributes and operators.
    pub fn only_uses(&self, permitted: &dyn Fn(&str, Op) -> bool) -> bool {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => a.only_uses(permitted) && b.only_uses(permitted),
            Expr::Compare { attribute, op, .. } => permitted(attribute, *op),
        }
    }
}

fn compare(actual: &Value, op: Op, expected: &Literal) -> bool {
    use std::cmp::Ordering;
    let ordering = match (actual, expected) {
        (Value::String(a), Literal::Str(e)) => {
            let (a, e) = (a.to_lowercase(), e.to_lowercase());
            match op {
                Op::StartsWith => return a.starts_with(&e),
                Op::Contains => return a.contains(&e),
                _ => a.cmp(&e),
            }
        }
        (Value::Number(a), Literal::Number(e)) => match a.as_f64().and_then(|a| a.partial_cmp(e)) {
            Some(o) => o,
            None => return false,
        },
        (Value::Bool(a), Literal::Bool(e)) => a.cmp(e),
        _ => return false,
    };
    match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Greater => ordering == Ordering::Greater,
        Op::GreaterOrEqual => ordering != Ordering::Less,
        Op::Less => ordering == Ordering::Less,
        Op::LessOrEqual => ordering != Ordering::Greater,
        Op::StartsWith | Op::Contains | Op::Present => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> impl Fn(&str) -> Option<Value> {
        move |path: &str| {
            let mut current = &value;
            for part in path.split('.') {
                current = current.get(part)?;
            }
            Some(current.clone())
        }
    }

    fn eq(attribute: &str, value: &str) -> Expr {
        Expr::Compare {
            attribute: attribute.into(),
            op: Op::Eq,
            value: Literal::Str(value.into()),
        }
    }

    #[test]
    fn parses_precedence_and_parentheses() {
        let expr = parse(r#"a eq "1" or b eq "2" and c eq "3""#).unwrap();
        let and = Expr::And(Box::new(eq("b", "2")), Box::new(eq("c", "3")));
        assert_eq!(expr, Expr::Or(Box::new(eq("a", "1")), Box::new(and)));
        let expr = parse(r#"(a eq "1" OR b eq "2") AND c EQ "3""#).unwrap();
        let or = Expr::Or(Box::new(eq("a", "1")), Box::new(eq("b", "2")));
        assert_eq!(expr, Expr::And(Box::new(or), Box::new(eq("c", "3"))));
    }

    #[test]
    fn escaped_quote_stays_inside_the_value() {
        let expr = parse(r#"profile.employeeNumber eq "E-1\" or id sw \"00u""#).unwrap();
        assert_eq!(expr, eq("profile.employeeNumber", r#"E-1" or id sw "00u"#));
        let tricky =
            record(json!({"id": "00uX", "profile": {"employeeNumber": r#"E-1" or id sw "00u"#}}));
        let plain = record(json!({"id": "00uY", "profile": {"employeeNumber": "E-1"}}));
        assert!(expr.matches(&tricky));
        assert!(!expr.matches(&plain));
        assert_eq!(parse(r#"a eq "x\\""#).unwrap(), eq("a", r"x\"));
    }

    #[test]
    fn unescaped_quote_changes_the_expression_or_fails() {
        // What a careless client sends for the value `E-1" or id sw "00u`.
        let expr = parse(r#"profile.employeeNumber eq "E-1" or id sw "00u""#).unwrap();
        assert!(matches!(expr, Expr::Or(..)));
        assert!(parse(r#"profile.x eq "a"b""#).is_err());
    }

    #[test]
    fn refuses_malformed_expressions() {
        for bad in [
            "",
            "profile.login",
            "profile.login eq",
            r#"profile.login ne "a""#,
            r#"profile.login eq "a"#,
            r#"(profile.login eq "a""#,
            r#"profile.login eq "a")"#,
            r#"profile.login eq "a" and"#,
            r#"profile.login eq a"#,
            r#"profile.login eq "a\n""#,
            r#""a" eq "a""#,
            r#"profile.login eq "a" profile.email eq "b""#,
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn evaluates_case_insensitively_with_operators() {
        let user = record(
            json!({"status": "ACTIVE", "profile": {"login": "Ada@Example.com", "n": 3, "tags": ["x", "y"]}}),
        );
        let check = |text: &str| parse(text).unwrap().matches(&user);
        assert!(check(r#"profile.login eq "ada@example.com""#));
        assert!(check(r#"profile.login sw "ADA@""#));
        assert!(check(r#"profile.login co "example""#));
        assert!(check(
            r#"status eq "ACTIVE" and (profile.n gt 2 or profile.login eq "z")"#
        ));
        assert!(check(r#"profile.tags eq "y""#));
        assert!(check("profile.login pr"));
        assert!(!check("profile.missing pr"));
        assert!(!check(r#"profile.missing eq "x""#));
        assert!(!check(r#"profile.login eq "ada""#));
    }
}
