//! HTML pages the gateway renders itself: sign-in, errors, the sessions page and
//! the audit log. They work without JavaScript (every action is a form carrying
//! the CSRF token), and every interpolated value is escaped by `maud`.

use http::StatusCode;
use maud::{DOCTYPE, Markup, html};

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;\
display:flex;min-height:100vh;align-items:center;justify-content:center}\
main{background:#fff;padding:2rem 2.5rem;border-radius:10px;box-shadow:0 2px 12px #0002;min-width:18rem}\
h1{font-size:1.3rem;margin:0 0 1rem}label{display:block;margin:.8rem 0 .2rem;font-size:.9rem}\
input{width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #bbb;border-radius:5px}\
button{margin-top:1.2rem;width:100%;padding:.6rem;border:0;border-radius:5px;background:#2d5be3;color:#fff;font-size:1rem}\
.err{background:#fde8e8;color:#8a1c1c;padding:.5rem .7rem;border-radius:5px;font-size:.9rem}\
.ok{background:#e6f4ea;color:#1e5b2f;padding:.5rem .7rem;border-radius:5px;font-size:.9rem}\
.muted{color:#666;font-size:.8rem}.brand{color:#555;font-size:.85rem;font-weight:600;margin:0 0 .6rem}\
a.provider{display:block;text-align:center;padding:.6rem;border:1px solid #2d5be3;border-radius:5px;color:#2d5be3;text-decoration:none}\
main.wide{max-width:70rem;width:90vw}table{border-collapse:collapse;width:100%;font-size:.85rem;margin:.5rem 0 1.5rem}\
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e3e3e3;vertical-align:top}\
td form button,form.inline button{margin:0;width:auto;padding:.3rem .7rem;font-size:.85rem}\
form.filters{display:flex;gap:.5rem;align-items:end;flex-wrap:wrap}form.filters label{margin:0}\
form.filters input,form.filters select{width:auto}.current{font-weight:600}h2{font-size:1.05rem;margin:1.2rem 0 .3rem}";

/// The product name pages show when the operator names none (`--brand-name`).
pub const DEFAULT_BRAND: &str = "Portcullis";

/// The longest `--brand-name` accepted, in characters.
pub const MAX_BRAND_CHARS: usize = 64;

tokio::task_local! {
    /// The product name for the pages of one connection: set where a connection
    /// is handed to hyper (`server::serve`) and where the fast path renders an
    /// error, so that every page, error pages rendered far from the
    /// configuration included, shows the same name.
    pub static BRAND: std::sync::Arc<str>;
}

fn brand() -> std::sync::Arc<str> {
    BRAND
        .try_with(std::sync::Arc::clone)
        .unwrap_or_else(|_| DEFAULT_BRAND.into())
}

fn layout(title: &str, body: Markup) -> Markup {
    page(title, false, body)
}

fn page(title: &str, wide: bool, body: Markup) -> Markup {
    let brand = brand();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " - " (brand) }
                style { (STYLE) }
            }
            body { main.wide[wide] { p.brand { (brand) } (body) } }
        }
    }
}

/// What the sign-in page shows.
#[derive(Debug)]
pub struct LoginPage<'a> {
    /// The login POST path.
    pub action: &'a str,
    /// Where to go after signing in, already validated.
    pub next: &'a str,
    pub error: Option<&'a str>,
    /// A notice that is not an error ("You have been signed out.").
    pub notice: Option<&'a str>,
    /// The name typed before a failed attempt.
    pub username: &'a str,
    pub basic_enabled: bool,
    /// `(href, display name)` of each OpenID provider's button.
    pub providers: &'a [(String, String)],
}

/// The sign-in page.
pub fn login_page(p: &LoginPage<'_>) -> Markup {
    layout(
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(message) = p.notice {
                p.ok role="status" { (message) }
            }
            @if let Some(message) = p.error {
                p.err role="alert" { (message) }
            }
            @for (href, name) in p.providers {
                p { a.provider href=(href) { "Sign in with " (name) } }
            }
            @if p.basic_enabled {
                form method="post" action=(p.action) {
                    input type="hidden" name="next" value=(p.next);
                    label for="username" { "Username" }
                    input #username name="username" autocomplete="username" value=(p.username) required autofocus[p.username.is_empty()];
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required autofocus[!p.username.is_empty()];
                    button type="submit" { "Sign in" }
                }
            } @else if p.providers.is_empty() {
                p.muted { "No sign-in method is configured. Ask the operator to set AUTH_BASIC_USERS or add an OpenID provider." }
            }
        },
    )
}

/// Asks before signing out; the form posts to `action` with the CSRF token.
pub fn logout_page(action: &str, csrf: &str, user: &str) -> Markup {
    layout(
        "Sign out",
        html! {
            h1 { "Sign out" }
            p { "You are signed in as " strong { (user) } "." }
            form method="post" action=(action) {
                input type="hidden" name="csrf_token" value=(csrf);
                button type="submit" { "Sign out" }
            }
        },
    )
}

pub fn error_page(status: StatusCode, message: &str, error_id: Option<&str>) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p { (message) }
            @if let Some(id) = error_id {
                p.muted { "Error id: " code { (id) } }
            }
        },
    )
}

/// The policy of every gateway page: nothing loads but its own inline style, no
/// script runs, and no other site may frame it (clickjacking of the sign-in and
/// sessions forms).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'";

/// Adds the headers every response of the gateway's own carries: the content
/// security policy, `X-Frame-Options: DENY` (for browsers without
/// `frame-ancestors`) and `X-Content-Type-Options: nosniff`.
pub fn protect(headers: &mut http::HeaderMap) {
    use http::HeaderValue;
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// A page that explains a refusal in words (access by link).
pub fn notice_page(title: &str, message: &str) -> Markup {
    layout(
        title,
        html! {
            h1 { (title) }
            p { (message) }
        },
    )
}

/// Asks a signed-in person before a link makes this browser act as a client.
/// The form posts to the page's own address (no `action`), so the page never
/// holds the link's secret.
pub fn confirm_link_page(signed_in_as: &str) -> Markup {
    layout(
        "Open a shared link",
        html! {
            h1 { "Open a shared link" }
            p {
                "You are signed in as " strong { (signed_in_as) } ". This link opens pages \
                 shared with someone else; while you use it, those pages see you as them."
            }
            form method="post" {
                button type="submit" { "Continue with the link" }
            }
            p { a href="/" { "Stay as " (signed_in_as) } }
        },
    )
}

/// One row of a sessions table.
#[derive(Debug)]
pub struct SessionRow {
    pub id: String,
    pub user: String,
    pub provider: String,
    pub device: String,
    pub ip: String,
    pub created: String,
    pub last_seen: String,
    pub live_websockets: usize,
    pub current: bool,
}

/// What the sessions page shows.
#[derive(Debug)]
pub struct SessionsPage<'a> {
    pub prefix: &'a str,
    pub user: &'a str,
    pub csrf: &'a str,
    pub own: Vec<SessionRow>,
    /// Everyone's sessions, for those allowed to see them.
    pub everyone: Option<Vec<SessionRow>>,
    pub audit_link: bool,
    pub notice: Option<&'a str>,
}

fn sessions_table(p: &SessionsPage<'_>, rows: &[SessionRow], with_user: bool) -> Markup {
    html! {
        table {
            thead { tr {
                @if with_user { th { "User" } }
                th { "Device" } th { "IP" } th { "Signed in" } th { "Last seen" }
                th { "Live WebSockets" } th {}
            } }
            tbody {
                @for row in rows {
                    tr.current[row.current] data-session=(row.id) {
                        @if with_user { td { (row.user) " " span.muted { "(" (row.provider) ")" } } }
                        td { (row.device) @if row.current { " " span.muted { "(this browser)" } } }
                        td { (row.ip) }
                        td { (row.created) }
                        td { (row.last_seen) }
                        td.live { (row.live_websockets) }
                        td {
                            @if !row.current {
                                form method="post" action={ (p.prefix) "/sessions/end" } {
                                    input type="hidden" name="csrf_token" value=(p.csrf);
                                    input type="hidden" name="session_id" value=(row.id);
                                    button type="submit" { "End" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `{prefix}/sessions`: the signed-in user's sessions, and everyone's for admins.
pub fn sessions_page(p: &SessionsPage<'_>) -> Markup {
    page(
        "Sessions",
        true,
        html! {
            h1 { "Sessions of " (p.user) }
            @if let Some(notice) = p.notice {
                p.muted role="status" { (notice) }
            }
            (sessions_table(p, &p.own, false))
            @if p.own.iter().any(|s| !s.current) {
                form.inline method="post" action={ (p.prefix) "/sessions/end-others" } {
                    input type="hidden" name="csrf_token" value=(p.csrf);
                    button type="submit" { "End all other sessions" }
                }
            }
            @if let Some(everyone) = &p.everyone {
                h2 { "Everyone's sessions" }
                (sessions_table(p, everyone, true))
            }
            p.muted {
                @if p.audit_link { a href={ (p.prefix) "/audit" } { "Audit log" } " · " }
                a href="/" { "Back to the application" }
            }
        },
    )
}

/// One row of the audit log page.
#[derive(Debug)]
pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub reason: String,
    pub ip: String,
}

/// What the audit page shows.
#[derive(Debug)]
pub struct AuditPage<'a> {
    pub prefix: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    pub rows: Vec<AuditRow>,
    /// The query string of the next (older) page.
    pub older: Option<String>,
}

/// `{prefix}/audit`: the audit log with filters, newest first.
pub fn audit_page(p: &AuditPage<'_>) -> Markup {
    page(
        "Audit log",
        true,
        html! {
            h1 { "Audit log" }
            form.filters method="get" action={ (p.prefix) "/audit" } {
                label { "Actor " input name="actor" value=(p.actor); }
                label { "Action " input name="action" value=(p.action); }
                label { "Outcome "
                    select name="outcome" {
                        option value="" selected[p.outcome.is_empty()] { "any" }
                        option value="success" selected[p.outcome == "success"] { "success" }
                        option value="failure" selected[p.outcome == "failure"] { "failure" }
                    }
                }
                button type="submit" { "Filter" }
            }
            table {
                thead { tr {
                    th { "Time" } th { "Actor" } th { "Action" } th { "Target" }
                    th { "Outcome" } th { "Reason" } th { "IP" }
                } }
                tbody {
                    @for row in &p.rows {
                        tr {
                            td { (row.at) } td { (row.actor) } td { (row.action) } td { (row.target) }
                            td { (row.outcome) } td { (row.reason) } td { (row.ip) }
                        }
                    }
                }
            }
            @if let Some(older) = &p.older {
                p { a href={ (p.prefix) "/audit?" (older) } { "Older events" } }
            }
            p.muted { a href={ (p.prefix) "/sessions" } { "Sessions" } }
        },
    )
}
