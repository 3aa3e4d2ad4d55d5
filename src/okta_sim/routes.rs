//! The Okta Management API endpoints the service uses. Handlers only translate
//! between HTTP and [`Directory`](super::state::Directory), where Okta's rules live.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{middleware, Json, Router};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::search::{self, Op};
use super::state::{
    group_json, random_token, user_json, ApiError, GroupType, NewUser, SentEmail, User, UserStatus,
    UserView,
};
use super::store::Shared;
use super::{admin, gate, oauth};

type ApiResult = Result<Response, ApiError>;

/// Builds the whole application: API routes, admin routes, and the gate around them.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route(
            "/api/v1/users/{id}",
            get(get_user)
                .post(update_user)
                .put(replace_user)
                .delete(delete_user),
        )
        .route("/api/v1/users/{id}/lifecycle/{action}", post(lifecycle))
        .route("/api/v1/users/{id}/sessions", delete(revoke_sessions))
        .route("/api/v1/users/{id}/groups", get(list_user_groups))
        .route("/api/v1/groups", get(list_groups).post(add_group))
        .route("/api/v1/groups/{id}", get(get_group))
        .route("/api/v1/groups/{id}/users", get(list_group_users))
        .route(
            "/api/v1/groups/{id}/users/{user_id}",
            put(assign).delete(unassign),
        )
        .route("/oauth2/v1/token", post(token))
        .merge(admin::routes())
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::not_found(&format!("{method} {}", uri.path()), "Route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                405,
                "E0000022",
                "The endpoint does not support the provided HTTP method",
            )
        })
        .layer(middleware::from_fn_with_state(shared.clone(), gate::gate))
        .with_state(shared)
}

/// `POST /oauth2/v1/token`: the OAuth rules are `oauth`'s; here only the store's lock.
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    oauth::token(&mut shared.store().oauth, &headers, &body)
}

/// What handlers need from the request line: the origin the client used (for links)
/// and the decoded query parameters.
struct Ctx {
    origin: String,
    path: String,
    raw_query: Option<String>,
    query: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let query = match parts.uri.query() {
            Some(q) => Url::parse(&format!("http://sim/?{q}"))
                .map(|url| url.query_pairs().into_owned().collect())
                .map_err(|_| ApiError::malformed_body())?,
            None => Vec::new(),
        };
        Ok(Ctx {
            origin: format!("http://{host}"),
            path: parts.uri.path().to_owned(),
            raw_query: parts.uri.query().map(str::to_owned),
            query,
        })
    }
}

impl Ctx {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The sequence number after which a paged listing resumes (0: from the start); a
    /// bad cursor is left for [`Ctx::page`] to refuse. Handlers skip earlier records
    /// before turning them into JSON: a listing of 100,000 users then costs one page's
    /// JSON per request, not the whole directory's.
    fn resume_after(&self) -> u64 {
        self.param("after").and_then(decode_cursor).unwrap_or(0)
    }

    fn flag(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.param(name) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(_) => Err(ApiError::validation(
                name,
                vec![format!("{name}: must be true or false")],
            )),
        }
    }

    /// The page of `items` (each with its creation sequence number) that `limit` and
    /// `after` select, with Okta's `Link` headers. Unpaged listings (`q=`) never get a
    /// `next` link.
    fn page(
        &self,
        items: impl IntoIterator<Item = (u64, Value)>,
        default_limit: usize,
        paged: bool,
    ) -> ApiResult {
        let limit = match self.param("limit") {
            None => default_limit,
            Some(text) => match text.parse::<usize>() {
                Ok(0) => default_limit,
                Ok(n) => n,
                Err(_) => {
                    return Err(ApiError::validation(
                        "limit",
                        vec!["limit: must be a number".into()],
                    ))
                }
            },
        };
        let after = match self.param("after").filter(|_| paged) {
            None => 0,
            Some(cursor) => decode_cursor(cursor).ok_or_else(|| {
                ApiError::validation("after", vec!["after: invalid cursor".into()])
            })?,
        };
        let mut rest = items.into_iter().filter(|(seq, _)| *seq > after);
        let page: Vec<(u64, Value)> = rest.by_ref().take(limit).collect();
        let more = rest.next().is_some();
        let last_seq = page.last().map_or(after, |(seq, _)| *seq);
        let page: Vec<Value> = page.into_iter().map(|(_, item)| item).collect();
        let mut response = Json(page).into_response();
        let headers = response.headers_mut();
        let self_link = match &self.raw_query {
            None => format!("<{}{}>; rel=\"self\"", self.origin, self.path),
            Some(query) => format!("<{}{}?{query}>; rel=\"self\"", self.origin, self.path),
        };
        append_link(headers, &self_link);
        if paged && more {
            let mut params: Vec<(String, String)> = self
                .query
                .iter()
                .filter(|(k, _)| k != "after")
                .cloned()
                .collect();
            if self.param("limit").is_none() {
                params.push(("limit".into(), limit.to_string()));
            }
            params.push(("after".into(), encode_cursor(last_seq)));
            let query = encode_query(params.into_iter());
            append_link(
                headers,
                &format!("<{}{}?{query}>; rel=\"next\"", self.origin, self.path),
            );
        }
        Ok(response)
    }
}

fn append_link(headers: &mut HeaderMap, link: &str) {
    if let Ok(value) = HeaderValue::from_str(link) {
        headers.append(header::LINK, value);
    }
}

fn encode_query(pairs: impl Iterator<Item = (String, String)>) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .map(|(k, v)| format!("{}={}", encode(&k), encode(&v)))
        .collect::<Vec<_>>()
        .join("&")
}

// The cursor only has to be opaque to clients; a prefix keeps it from looking like a
// plain number someone could compute.
fn encode_cursor(seq: u64) -> String {
    format!("00c{seq:x}")
}

fn decode_cursor(cursor: &str) -> Option<u64> {
    u64::from_str_radix(cursor.strip_prefix("00c")?, 16).ok()
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::malformed_body())
}

fn ok_json(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct UserBody {
    #[serde(default)]
    profile: Map<String, Value>,
    #[serde(default, rename = "groupIds")]
    group_ids: Vec<String>,
    #[serde(default)]
    credentials: Option<Value>,
}

impl UserBody {
    fn has_password(&self) -> bool {
        self.credentials
            .as_ref()
            .and_then(|c| c.pointer("/password/value"))
            .and_then(Value::as_str)
            .is_some_and(|p| !p.is_empty())
    }
}

async fn create_user(State(shared): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> ApiResult {
    let body: UserBody = parse_json(&body)?;
    let activate = ctx.flag("activate", true)?;
    let password = body.has_password();
    let mut store = shared.store();
    let user = store.directory.create_user(NewUser {
        profile: body.profile,
        group_ids: body.group_ids,
        password,
        activate,
    })?;
    let response = Json(UserView {
        user,
        origin: &ctx.origin,
        user_type_id: &shared.user_type_id,
    })
    .into_response();
    // Activated without a password, the user gets Okta's activation email.
    if activate && !password {
        let email = activation_email(user, "createUser");
        store.emails.push(email);
    }
    Ok(response)
}

async fn get_user(
    State(shared): State<Arc<Shared>>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult {
    // Okta fetches a login with `/` by id only; `\`, `[` and `]` are refused.
    if id.contains('/') {
        return Err(ApiError::not_found(&id, "User"));
    }
    if id.contains(['\\', '[', ']']) {
        return Err(ApiError::validation(
            "idOrLogin",
            vec!["idOrLogin: contains characters a path cannot carry".into()],
        ));
    }
    let store = shared.store();
    let user = store
        .directory
        .find_user(&id)
        .ok_or_else(|| ApiError::not_found(&id, "User"))?;
    Ok(Json(UserView {
        user,
        origin: &ctx.origin,
        user_type_id: &shared.user_type_id,
    })
    .into_response())
}

async fn update_user(
    state: State<Arc<Shared>>,
    ctx: Ctx,
    id: Path<String>,
    body: Bytes,
) -> ApiResult {
    change_profile(state, ctx, id, body, false)
}

async fn replace_user(
    state: State<Arc<Shared>>,
    ctx: Ctx,
    id: Path<String>,
    body: Bytes,
) -> ApiResult {
    change_profile(state, ctx, id, body, true)
}

fn change_profile(
    State(shared): State<Arc<Shared>>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Bytes,
    replace: bool,
) -> ApiResult {
    let body: UserBody = parse_json(&body)?;
    let password = body.has_password();
    let mut store = shared.store();
    let user = store
        .directory
        .update_profile(&id, body.profile, replace, password)?;
    Ok(Json(UserView {
        user,
        origin: &ctx.origin,
        user_type_id: &shared.user_type_id,
    })
    .into_response())
}

async fn delete_user(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    shared.store().directory.delete_user(&id)?;
    no_content()
}

async fn lifecycle(
    State(shared): State<Arc<Shared>>,
    ctx: Ctx,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
    // activate mails the user unless told not to; reactivate only when told to.
    let send_email = ctx.flag("sendEmail", action == "activate")?;
    let mut store = shared.store();
    store.directory.lifecycle(&id, &action)?;
    if matches!(action.as_str(), "activate" | "reactivate") && send_email {
        if let Some(user) = store.directory.find_user(&id) {
            let email = activation_email(user, "activateUser");
            store.emails.push(email);
        }
    }
    drop(store);
    if matches!(action.as_str(), "activate" | "reactivate") && !send_email {
        let token = random_token(20);
        return ok_json(json!({
            "activationUrl": format!("{}/welcome/{token}", ctx.origin),
            "activationToken": token,
        }));
    }
    ok_json(json!({}))
}

fn activation_email(user: &User, operation: &'static str) -> SentEmail {
    SentEmail {
        user_id: user.id.clone(),
        login: user.login().to_owned(),
        kind: "activation",
        operation,
    }
}

async fn revoke_sessions(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    shared.store().directory.revoke_sessions(&id)?;
    no_content()
}

/// Which records a list call asks for. `search` and `filter` see deactivated users;
/// `q` and the plain list do not, and `q` is a prefix match that Okta does not page.
enum Listing {
    Criteria(search::Expr),
    Prefix(String),
    All,
}

impl Listing {
    /// Reads `search`, `filter` (held to `filter_attributes`, with comparisons other
    /// than `eq` only on timestamps) and `q`, in Okta's order of precedence.
    fn from_query(ctx: &Ctx, filter_attributes: &[&str]) -> Result<Listing, ApiError> {
        if let Some(text) = ctx.param("search") {
            return Ok(Listing::Criteria(
                search::parse(text).map_err(|_| ApiError::invalid_search())?,
            ));
        }
        if let Some(text) = ctx.param("filter") {
            let expr = search::parse(text).map_err(|_| ApiError::invalid_search())?;
            let permitted = |attribute: &str, op: Op| {
                filter_attributes.contains(&attribute)
                    && (op == Op::Eq
                        || (attribute.starts_with("last")
                            && !matches!(op, Op::StartsWith | Op::Contains)))
            };
            return match expr.only_uses(&permitted) {
                true => Ok(Listing::Criteria(expr)),
                false => Err(ApiError::invalid_search()),
            };
        }
        Ok(ctx
            .param("q")
            .map_or(Listing::All, |q| Listing::Prefix(q.to_lowercase())))
    }

    fn shows_deactivated(&self) -> bool {
        matches!(self, Listing::Criteria(_))
    }

    /// Whether a record, as its Okta JSON, is selected; `q` looks at `prefix_fields` of the profile.
    fn selects(&self, record: &Value, prefix_fields: &[&str]) -> bool {
        match self {
            Listing::Criteria(expr) => expr.matches(&|path| {
                path.split('.')
                    .try_fold(record, |value, key| value.get(key))
                    .cloned()
            }),
            Listing::Prefix(prefix) => prefix_fields.iter().any(|field| {
                record["profile"][field]
                    .as_str()
                    .is_some_and(|v| v.to_lowercase().starts_with(prefix))
            }),
            Listing::All => true,
        }
    }

    /// (default limit, whether a `next` link is offered).
    fn paging(&self, default_limit: usize, q_limit: usize) -> (usize, bool) {
        match self {
            Listing::Prefix(_) => (q_limit, false),
            _ => (default_limit, true),
        }
    }
}

const USER_FILTER_ATTRIBUTES: &[&str] = &[
    "status",
    "lastUpdated",
    "id",
    "profile.login",
    "profile.email",
    "profile.firstName",
    "profile.lastName",
];
const GROUP_FILTER_ATTRIBUTES: &[&str] = &["id", "type", "lastUpdated", "lastMembershipUpdated"];

async fn list_users(State(shared): State<Arc<Shared>>, ctx: Ctx) -> ApiResult {
    let listing = Listing::from_query(&ctx, USER_FILTER_ATTRIBUTES)?;
    let store = shared.store();
    let (limit, paged) = listing.paging(200, 10);
    let after = if paged { ctx.resume_after() } else { 0 };
    let items = store
        .directory
        .users
        .iter()
        .filter(|u| u.seq > after)
        .filter(|u| listing.shows_deactivated() || u.status != UserStatus::Deprovisioned)
        // Okta's search index lags writes; the plain list and `q` do not use it.
        .filter(|u| !matches!(listing, Listing::Criteria(_)) || u.searchable())
        .map(|u| (u.seq, user_json(u, &ctx.origin, &shared.user_type_id)))
        .filter(|(_, json)| listing.selects(json, &["firstName", "lastName", "email", "login"]));
    ctx.page(items, limit, paged)
}

async fn list_user_groups(
    State(shared): State<Arc<Shared>>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult {
    let store = shared.store();
    let user = store
        .directory
        .find_user(&id)
        .ok_or_else(|| ApiError::not_found(&id, "User"))?;
    let items = store
        .directory
        .groups_of(&user.id)
        .into_iter()
        .map(|g| (g.seq, group_json(g, &ctx.origin)));
    ctx.page(items, 10_000, true)
}

async fn list_groups(State(shared): State<Arc<Shared>>, ctx: Ctx) -> ApiResult {
    let listing = Listing::from_query(&ctx, GROUP_FILTER_ATTRIBUTES)?;
    let store = shared.store();
    let items = store
        .directory
        .groups
        .iter()
        .map(|g| (g.seq, group_json(g, &ctx.origin)))
        .filter(|(_, json)| listing.selects(json, &["name"]));
    let (limit, paged) = listing.paging(10_000, 300);
    ctx.page(items, limit, paged)
}

#[derive(Deserialize)]
struct GroupBody {
    #[serde(default)]
    profile: Map<String, Value>,
}

async fn add_group(State(shared): State<Arc<Shared>>, ctx: Ctx, body: Bytes) -> ApiResult {
    let body: GroupBody = parse_json(&body)?;
    let name = body
        .profile
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_owned();
    if name.is_empty() {
        return Err(ApiError::validation(
            "name",
            vec!["name: The field cannot be left blank".into()],
        ));
    }
    let description = body
        .profile
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut store = shared.store();
    let taken = store
        .directory
        .groups
        .iter()
        .any(|g| g.kind == GroupType::OktaGroup && g.name.eq_ignore_ascii_case(&name));
    if taken {
        let cause = "name: An object with this field already exists in the current organization";
        return Err(ApiError::validation("name", vec![cause.into()]));
    }
    let id = store
        .directory
        .insert_group(&name, GroupType::OktaGroup, description);
    let group = store
        .directory
        .find_group(&id)
        .ok_or_else(|| ApiError::not_found(&id, "UserGroup"))?;
    ok_json(group_json(group, &ctx.origin))
}

async fn get_group(
    State(shared): State<Arc<Shared>>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult {
    let store = shared.store();
    let group = store
        .directory
        .find_group(&id)
        .ok_or_else(|| ApiError::not_found(&id, "UserGroup"))?;
    ok_json(group_json(group, &ctx.origin))
}

async fn list_group_users(
    State(shared): State<Arc<Shared>>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult {
    let store = shared.store();
    store
        .directory
        .find_group(&id)
        .ok_or_else(|| ApiError::not_found(&id, "UserGroup"))?;
    let type_id = shared.user_type_id.as_str();
    let after = ctx.resume_after();
    let items = store
        .directory
        .members_of(&id)
        .into_iter()
        .filter(|u| u.seq > after)
        .map(|u| (u.seq, user_json(u, &ctx.origin, type_id)));
    ctx.page(items, 1000, true)
}

async fn assign(
    State(shared): State<Arc<Shared>>,
    Path((group, user)): Path<(String, String)>,
) -> ApiResult {
    shared
        .store()
        .directory
        .change_membership(&group, &user, true)?;
    no_content()
}

async fn unassign(
    State(shared): State<Arc<Shared>>,
    Path((group, user)): Path<(String, String)>,
) -> ApiResult {
    shared
        .store()
        .directory
        .change_membership(&group, &user, false)?;
    no_content()
}
