//! Pieces of Okta's query language that must be exactly right: quoting a value inside a
//! `search` expression, and following `Link` headers for pagination.

/// Quotes a value for an Okta `search`/`filter` expression: `"` and `\` are escaped, so
/// a value can never end the string early and widen the search
/// (`E-1" or id sw "00u` stays one literal value).
pub fn quote_search_value(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// `attribute eq "value"`, with the value quoted.
pub fn equals(attribute: &str, value: &str) -> String {
    format!("{attribute} eq {}", quote_search_value(value))
}

/// Whether a login cannot be used in `getUser`'s path: Okta fetches a login with `/`
/// by id only, and `\`, `[` and `]` have been reported to give 400. Such a login is
/// found with `search=profile.login eq "…"` instead.
pub fn unfit_for_path(id_or_login: &str) -> bool {
    id_or_login.contains(['/', '\\', '[', ']'])
}

/// The URL of the `rel="next"` link of a `Link` header, if there is one. Okta's cursors
/// are opaque: the next page is only ever fetched through this URL.
pub fn next_link(link_header: &str) -> Option<String> {
    link_header.split(',').find_map(|link| {
        let mut parts = link.split(';');
        let target = parts.next()?.trim();
        let is_next = parts.any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            return None;
        }
        target
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(quote_search_value("E-1"), r#""E-1""#);
        assert_eq!(
            quote_search_value(r#"E-1" or id sw "00u"#),
            r#""E-1\" or id sw \"00u""#
        );
        assert_eq!(quote_search_value(r"a\"), r#""a\\""#);
        assert_eq!(
            equals("profile.employeeNumber", r#"x"y"#),
            r#"profile.employeeNumber eq "x\"y""#
        );
    }

    #[test]
    fn logins_okta_cannot_take_in_a_path_are_recognised() {
        assert!(unfit_for_path("a/b@example.com"));
        assert!(unfit_for_path(r"a\b@example.com"));
        assert!(unfit_for_path("a[1]@example.com"));
        assert!(!unfit_for_path("ada+x@example.com"));
        assert!(!unfit_for_path("00u1abcd"));
    }

    #[test]
    fn finds_the_next_link_among_others() {
        let header = r#"<https://acme.okta.com/api/v1/users?limit=2>; rel="self", <https://acme.okta.com/api/v1/users?after=00u2&limit=2>; rel="next""#;
        assert_eq!(
            next_link(header).as_deref(),
            Some("https://acme.okta.com/api/v1/users?after=00u2&limit=2")
        );
        assert_eq!(
            next_link(r#"<https://acme.okta.com/api/v1/users>; rel="self""#),
            None
        );
    }
}
