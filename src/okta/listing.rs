//! Page-at-a-time listings, for callers that read a whole org (reconciliation) and
//! must neither hold every user as JSON at once nor lose a long listing to one 429.
//!
//! [`OktaClient::list_all`](super::client) gathers every page of a small answer; here
//! each call fetches one page and hands back the `Link: rel="next"` URL, so the caller
//! decodes each page into its own compact records, reports progress, and waits out a
//! rate limit by asking for the same page again. The next link is only ever followed to
//! the org's own origin: the request carries the credential.

use super::client::{decode, header_str, OktaClient};
use super::error::OktaError;
use super::search;
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

/// The most users Okta returns per page of `listUsers` and `listGroupUsers`.
pub const MAX_PAGE_LIMIT: u32 = 200;

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The next page, from `Link: rel="next"`, already checked to be on the org's
    /// origin; `None` on the last page.
    pub next: Option<Url>,
}

impl OktaClient {
    /// The first page of `listUsers` with `search=<expression>` (which, unlike the plain
    /// list, includes deactivated users), `limit` per page.
    pub fn search_users_url(&self, expression: &str, limit: u32) -> Url {
        let mut url = self.url(&["api", "v1", "users"]);
        url.query_pairs_mut()
            .append_pair("search", expression)
            .append_pair("limit", &limit.to_string());
        url
    }

    /// The first page of `listGroupUsers` of `group_id`, `limit` per page.
    pub fn group_users_url(&self, group_id: &str, limit: u32) -> Url {
        let mut url = self.url(&["api", "v1", "groups", group_id, "users"]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        url
    }

    /// Fetches one page of a list operation (`listUsers`, `listGroupUsers`) at `url`
    /// (a first-page URL from this client, or a [`Page::next`]), decoded as `T`.
    ///
    /// # Errors
    /// Any [`OktaError`]; [`OktaError::ForeignLink`] when the next link leaves the org's
    /// origin. A [`OktaError::RateLimited`] means the same `url` may be asked again
    /// after its `retry_after`.
    pub async fn list_page<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<Page<T>, OktaError> {
        let answer = self.call(operation, Method::GET, url, None).await?;
        let items: Vec<T> = decode(operation, &answer)?;
        let next = answer
            .headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(search::next_link);
        let next = match next {
            None => None,
            Some(link) => {
                let request_id =
                    || header_str(&answer.headers, "x-okta-request-id").map(str::to_owned);
                let url = Url::parse(&link).map_err(|e| OktaError::Decode {
                    operation,
                    message: format!("the next-page link is not a URL: {e}"),
                    request_id: request_id(),
                })?;
                if url.origin() != self.base_url().origin() {
                    return Err(OktaError::ForeignLink {
                        operation,
                        origin: url.origin().ascii_serialization(),
                        request_id: request_id(),
                    });
                }
                Some(url)
            }
        };
        Ok(Page { items, next })
    }
}
