//! The gateway's own endpoints as one table: the router is built from it
//! ([`crate::server::router`]) and so is the OpenAPI 3.1 document served at
//! `GET {prefix}/api/openapi.json`. A route cannot exist without its entry, and
//! each entry documents who may call it: its security requirements (cookie with
//! the CSRF header for mutations, bearer, or `security: []` for the exempt ones)
//! and permissions. Handlers enforce their own permission; tests check each
//! documented method is routed, each undocumented one is 405, each non-exempt one
//! refuses an anonymous call, and each handler refuses a caller without exactly
//! the permissions documented here (`tests/it/admin_api.rs`).

use axum::routing::{MethodRouter, delete, get, post, put};
use portcullis_core::identity::Permission;
use serde_json::{Map, Value, json};

use crate::state::Gateway;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`security: []`).
    Public,
    /// Anyone; the request carries its own proof (a logout token, the pending
    /// sign-in cookie), so it is exempt from session authentication.
    SelfAuthenticating(&'static str),
    /// A session cookie or a bearer credential.
    Signed,
    /// A session cookie with the CSRF token, or a bearer credential.
    SignedMutation,
    /// As [`Access::SignedMutation`] when a credential is presented; without one
    /// the call still answers (signing out twice is not an error).
    OptionalMutation,
    /// As [`Access::Signed`] / [`Access::SignedMutation`], with these permissions.
    Admin(&'static [Permission], bool),
}

impl Access {
    pub fn is_exempt(self) -> bool {
        matches!(self, Access::Public | Access::SelfAuthenticating(_))
    }

    fn mutating(self) -> bool {
        matches!(
            self,
            Access::SignedMutation | Access::OptionalMutation | Access::Admin(_, true)
        )
    }
}

/// One method of an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// Lower case, as OpenAPI writes it.
    pub method: &'static str,
    pub summary: &'static str,
    pub access: Access,
}

/// One path under the auth prefix and its methods.
pub struct Endpoint {
    /// Relative to the prefix, with `{name}` parameters.
    pub path: &'static str,
    pub operations: &'static [Operation],
    pub routes: fn() -> MethodRouter<Gateway>,
}

const fn op(method: &'static str, summary: &'static str, access: Access) -> Operation {
    Operation {
        method,
        summary,
        access,
    }
}

use Access::{Admin, OptionalMutation, Public, SelfAuthenticating, Signed, SignedMutation};
use Permission as P;

/// Every endpoint under the auth prefix.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/login",
        operations: &[
            op(
                "get",
                "Sign-in page (HTML, works without JavaScript)",
                Public,
            ),
            op(
                "post",
                "Sign in with username and password (form or JSON); Origin checked",
                Public,
            ),
        ],
        routes: || get(crate::endpoints::login_page).post(crate::endpoints::login_submit),
    },
    Endpoint {
        path: "/logout",
        operations: &[
            op(
                "get",
                "A page asking to confirm signing out (its form posts here)",
                Public,
            ),
            op(
                "post",
                "End this session and clear its cookies (without one, only clear them)",
                OptionalMutation,
            ),
        ],
        routes: || get(crate::endpoints::logout_page).post(crate::endpoints::logout),
    },
    Endpoint {
        path: "/me",
        operations: &[op("get", "Who is signed in", Signed)],
        routes: || get(crate::endpoints::me),
    },
    Endpoint {
        path: "/verify",
        operations: &[op(
            "get",
            "Forward auth: 200 with identity headers, else 401 with X-Auth-Login-Url",
            Signed,
        )],
        routes: || get(crate::endpoints::verify),
    },
    Endpoint {
        path: "/ws-ticket",
        operations: &[op(
            "post",
            "A single-use ticket for one WebSocket upgrade",
            SignedMutation,
        )],
        routes: || post(crate::endpoints::ws_ticket),
    },
    Endpoint {
        path: "/capabilities",
        operations: &[op(
            "get",
            "Accepted WebSocket credential schemes, in order",
            Public,
        )],
        routes: || get(crate::endpoints::capabilities),
    },
    Endpoint {
        path: "/healthz",
        operations: &[op("get", "Liveness", Public)],
        routes: || get(crate::endpoints::healthz),
    },
    Endpoint {
        path: "/readyz",
        operations: &[op("get", "Readiness (the database answers)", Public)],
        routes: || get(crate::endpoints::readyz),
    },
    Endpoint {
        path: "/oidc/login",
        operations: &[op("get", "Start OpenID Connect sign-in", Public)],
        routes: || get(crate::endpoints::openid::login),
    },
    Endpoint {
        path: "/oidc/callback",
        operations: &[op(
            "get",
            "Finish OpenID Connect sign-in",
            SelfAuthenticating("the pending sign-in cookie and the provider's code"),
        )],
        routes: || get(crate::endpoints::openid::callback),
    },
    Endpoint {
        path: "/oidc/back-channel-logout",
        operations: &[op(
            "post",
            "OpenID Connect Back-Channel Logout 1.0",
            SelfAuthenticating("a logout token signed by the provider"),
        )],
        routes: || post(crate::endpoints::openid::back_channel_logout),
    },
    Endpoint {
        path: "/magic/{token}",
        operations: &[
            op(
                "get",
                "Sign a client in by magic link: 303 to its pages (the link's secret leaves the address bar); a browser signed in as a person is asked first",
                SelfAuthenticating("the link's secret"),
            ),
            op(
                "post",
                "Confirm a magic link from a signed-in browser (Origin checked)",
                SelfAuthenticating("the link's secret"),
            ),
        ],
        routes: || get(crate::endpoints::magic_link).post(crate::endpoints::confirm_link),
    },
    Endpoint {
        path: "/access-required",
        operations: &[op(
            "get",
            "Page for a browser inside a client's scope without a session: ask for a new link",
            Public,
        )],
        routes: || get(crate::endpoints::access_required),
    },
    Endpoint {
        path: "/sessions",
        operations: &[op(
            "get",
            "Sessions page (HTML): one's own, everyone's for auth.session.list.all",
            Admin(&[P::SessionList], false),
        )],
        routes: || get(crate::admin::sessions_page),
    },
    Endpoint {
        path: "/sessions/end",
        operations: &[op(
            "post",
            "Sessions page form: end one session (csrf_token, session_id)",
            Admin(&[P::SessionRevoke], true),
        )],
        routes: || post(crate::admin::end_session_form),
    },
    Endpoint {
        path: "/sessions/end-others",
        operations: &[op(
            "post",
            "Sessions page form: end all of one's other sessions (csrf_token)",
            Admin(&[P::SessionRevoke], true),
        )],
        routes: || post(crate::admin::end_other_sessions_form),
    },
    Endpoint {
        path: "/audit",
        operations: &[op(
            "get",
            "Audit log page (HTML) with filters",
            Admin(&[P::AuditRead], false),
        )],
        routes: || get(crate::admin::audit_page),
    },
    Endpoint {
        path: "/api/openapi.json",
        operations: &[op("get", "This document", Public)],
        routes: || get(openapi_json),
    },
    Endpoint {
        path: "/api/v1/oidc/providers",
        operations: &[
            op("get", "List OpenID providers", Admin(&[P::OidcList], false)),
            op(
                "post",
                "Add an OpenID provider",
                Admin(&[P::OidcCreate], true),
            ),
        ],
        routes: || get(crate::admin::list_providers).post(crate::admin::create_provider),
    },
    Endpoint {
        path: "/api/v1/oidc/providers/{id}",
        operations: &[
            op("get", "One OpenID provider", Admin(&[P::OidcList], false)),
            op(
                "put",
                "Edit an OpenID provider",
                Admin(&[P::OidcEdit], true),
            ),
            op(
                "delete",
                "Remove an OpenID provider (refused while sessions use it)",
                Admin(&[P::OidcDelete], true),
            ),
        ],
        routes: || {
            get(crate::admin::get_provider)
                .merge(put(crate::admin::edit_provider))
                .merge(delete(crate::admin::delete_provider))
        },
    },
    Endpoint {
        path: "/api/v1/oidc/providers/{id}/refresh",
        operations: &[op(
            "post",
            "Re-run discovery and refetch keys",
            Admin(&[P::OidcEdit], true),
        )],
        routes: || post(crate::admin::refresh_provider),
    },
    Endpoint {
        path: "/api/v1/oidc/group-mappings",
        operations: &[
            op("get", "List group mappings", Admin(&[P::OidcList], false)),
            op(
                "post",
                "Map an IdP group to a role",
                Admin(&[P::OidcEdit], true),
            ),
        ],
        routes: || get(crate::admin::list_mappings).post(crate::admin::add_mapping),
    },
    Endpoint {
        path: "/api/v1/oidc/group-mappings/{id}",
        operations: &[op(
            "delete",
            "Remove a group mapping",
            Admin(&[P::OidcEdit], true),
        )],
        routes: || delete(crate::admin::remove_mapping),
    },
    Endpoint {
        path: "/api/v1/sessions",
        operations: &[op(
            "get",
            "Sessions: one's own; everyone's (all=true, or user=) with auth.session.list.all",
            Admin(&[P::SessionList], false),
        )],
        routes: || get(crate::admin::list_sessions),
    },
    Endpoint {
        path: "/api/v1/sessions/revoke",
        operations: &[op(
            "post",
            "End every session of a user (one's own, or another's with auth.session.list.all), optionally their API tokens",
            Admin(&[P::SessionRevoke], true),
        )],
        routes: || post(crate::admin::revoke_sessions),
    },
    Endpoint {
        path: "/api/v1/sessions/{id}",
        operations: &[op(
            "delete",
            "End a session (another's needs auth.session.list.all); its WebSockets close everywhere",
            Admin(&[P::SessionRevoke], true),
        )],
        routes: || delete(crate::admin::revoke_session),
    },
    Endpoint {
        path: "/api/v1/api-tokens",
        operations: &[
            op("get", "List API tokens", Admin(&[P::TokenList], false)),
            op(
                "post",
                "Create an API token for the signed-in caller (the secret is shown once)",
                Admin(&[P::TokenCreate], true),
            ),
        ],
        routes: || get(crate::admin::list_tokens).post(crate::admin::create_token),
    },
    Endpoint {
        path: "/api/v1/api-tokens/{id}",
        operations: &[op(
            "delete",
            "Revoke an API token",
            Admin(&[P::TokenRevoke], true),
        )],
        routes: || delete(crate::admin::revoke_token),
    },
    Endpoint {
        path: "/api/v1/clients",
        operations: &[
            op(
                "get",
                "List external clients",
                Admin(&[P::ClientList], false),
            ),
            op(
                "post",
                "Add an external client (slug, name, scope, roles)",
                Admin(&[P::ClientCreate], true),
            ),
        ],
        routes: || get(crate::admin::list_clients).post(crate::admin::add_client),
    },
    Endpoint {
        path: "/api/v1/clients/preview",
        operations: &[op(
            "post",
            "Sign this browser into a client session for a scope (reusing or creating its client and preview token; never changing an existing one)",
            Admin(&[P::ClientCreate, P::TokenCreate], true),
        )],
        routes: || post(crate::admin::preview),
    },
    Endpoint {
        path: "/api/v1/clients/{slug}/disable",
        operations: &[op(
            "post",
            "Disable a client: every session from its links ends, WebSockets included",
            Admin(&[P::ClientEdit], true),
        )],
        routes: || post(crate::admin::disable_client),
    },
    Endpoint {
        path: "/api/v1/clients/{slug}/enable",
        operations: &[op(
            "post",
            "Enable a client again",
            Admin(&[P::ClientEdit], true),
        )],
        routes: || post(crate::admin::enable_client),
    },
    Endpoint {
        path: "/api/v1/access-tokens",
        operations: &[
            op(
                "get",
                "List magic-link access tokens (client= to filter)",
                Admin(&[P::TokenList], false),
            ),
            op(
                "post",
                "Create a magic link for a client (the link is shown once)",
                Admin(&[P::TokenCreate], true),
            ),
        ],
        routes: || get(crate::admin::list_access_tokens).post(crate::admin::create_access_token),
    },
    Endpoint {
        path: "/api/v1/access-tokens/{id}",
        operations: &[op(
            "delete",
            "Revoke a magic link: every session from it ends, WebSockets included",
            Admin(&[P::TokenRevoke], true),
        )],
        routes: || delete(crate::admin::revoke_access_token),
    },
    Endpoint {
        path: "/api/v1/audit",
        operations: &[op(
            "get",
            "Audit events, newest first, with filters and a cursor",
            Admin(&[P::AuditRead], false),
        )],
        routes: || get(crate::admin::list_audit),
    },
];

/// `GET {prefix}/api/openapi.json`
async fn openapi_json(
    axum::extract::State(gw): axum::extract::State<Gateway>,
) -> axum::Json<Value> {
    axum::Json(document(&gw.config().auth_prefix))
}

fn security(access: Access) -> Value {
    if access.is_exempt() {
        return json!([]);
    }
    let cookie = if access.mutating() {
        json!({"sessionCookie": [], "csrfHeader": []})
    } else {
        json!({"sessionCookie": []})
    };
    if access == Access::OptionalMutation {
        // `{}`: no credential is acceptable too (OpenAPI 3.1, section 4.8.10).
        return json!([cookie, {"bearer": []}, {}]);
    }
    json!([cookie, {"bearer": []}])
}

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

fn operation(path: &str, op: &Operation) -> Value {
    let mut responses = Map::new();
    responses.insert("200".into(), json!({"description": "Success"}));
    if !op.access.is_exempt() {
        responses.insert(
            "401".into(),
            json!({"description": "No valid credential", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
        responses.insert(
            "403".into(),
            json!({"description": "Missing permission, or (cookie) missing CSRF token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    let mut value = json!({
        "summary": op.summary,
        "operationId": format!("{}{}", op.method, path.replace(['/', '{', '}', '.', '-'], "_")),
        "security": security(op.access),
        "responses": responses,
    });
    let params = parameters(path);
    if !params.is_empty() {
        value["parameters"] = Value::Array(params);
    }
    match op.access {
        Access::Admin(permissions, _) => {
            let names: Vec<_> = permissions.iter().map(|p| p.name()).collect();
            value["x-permissions"] = json!(names);
            value["description"] = json!(format!("Requires {}.", names.join(" and ")));
        }
        Access::SelfAuthenticating(how) => {
            value["description"] = json!(format!("Authenticated by {how}."));
        }
        _ => {}
    }
    value
}

/// The OpenAPI 3.1 document for a gateway whose auth prefix is `prefix`.
pub fn document(prefix: &str) -> Value {
    let mut paths = Map::new();
    for endpoint in ENDPOINTS {
        let mut item = Map::new();
        for op in endpoint.operations {
            item.insert(op.method.into(), operation(endpoint.path, op));
        }
        paths.insert(format!("{prefix}{}", endpoint.path), Value::Object(item));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portcullis",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The gateway's own endpoints. Every other path belongs to the application behind it.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": crate::cookies::SESSION_COOKIE},
                "csrfHeader": {
                    "type": "apiKey", "in": "header", "name": "X-CSRF-Token",
                    "description": "The portcullis_csrf cookie's value; required with the cookie on every mutation.",
                },
                "bearer": {
                    "type": "http", "scheme": "bearer",
                    "description": "An API token (pct_…) or the internal credential (pci_…).",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "error_id": {"type": "string"},
                    },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_documented_once_with_its_security() {
        let doc = document("/.auth");
        let mut count = 0;
        for endpoint in ENDPOINTS {
            for op in endpoint.operations {
                count += 1;
                let documented = &doc["paths"][format!("/.auth{}", endpoint.path)][op.method];
                assert_eq!(documented["summary"], op.summary);
                let security = documented["security"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{}", endpoint.path));
                assert_eq!(
                    security.is_empty(),
                    op.access.is_exempt(),
                    "{} {}",
                    op.method,
                    endpoint.path
                );
            }
        }
        let documented: usize = doc["paths"]
            .as_object()
            .map(|p| {
                p.values()
                    .map(|item| item.as_object().map_or(0, Map::len))
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(documented, count);
    }
}
