//! Okta's name (operationId) for each request, from its method and path alone. The gate
//! writes it in the request log and asks `oauth` for the scope it needs; the routes
//! serve the operations. Apart from both so that neither depends on the other.

use axum::http::Method;

/// Okta's operationId for a request (`createUser`, …); `unknown` for routes the fake
/// lacks.
pub fn operation_id(method: &Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(3).collect();
    let m = method.as_str();
    match (m, segments.as_slice()) {
        ("GET", ["users"]) => "listUsers",
        ("POST", ["users"]) => "createUser",
        ("GET", ["users", _]) => "getUser",
        ("POST", ["users", _]) => "updateUser",
        ("PUT", ["users", _]) => "replaceUser",
        ("DELETE", ["users", _]) => "deleteUser",
        ("POST", ["users", _, "lifecycle", action]) => match *action {
            "activate" => "activateUser",
            "deactivate" => "deactivateUser",
            "suspend" => "suspendUser",
            "unsuspend" => "unsuspendUser",
            "reactivate" => "reactivateUser",
            _ => "unknown",
        },
        ("DELETE", ["users", _, "sessions"]) => "revokeUserSessions",
        ("GET", ["users", _, "groups"]) => "listUserGroups",
        ("GET", ["groups"]) => "listGroups",
        ("POST", ["groups"]) => "addGroup",
        ("GET", ["groups", _]) => "getGroup",
        ("GET", ["groups", _, "users"]) => "listGroupUsers",
        ("PUT", ["groups", _, "users", _]) => "assignUserToGroup",
        ("DELETE", ["groups", _, "users", _]) => "unassignUserFromGroup",
        _ => "unknown",
    }
}
