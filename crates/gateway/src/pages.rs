//! HTML pages the gateway renders itself: sign-in and errors. They work without
//! JavaScript, and every interpolated value is escaped by `maud`.

use http::StatusCode;
use maud::{DOCTYPE, Markup, html};

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;\
display:flex;min-height:100vh;align-items:center;justify-content:center}\
main{background:#fff;padding:2rem 2.5rem;border-radius:10px;box-shadow:0 2px 12px #0002;min-width:18rem}\
h1{font-size:1.3rem;margin:0 0 1rem}label{display:block;margin:.8rem 0 .2rem;font-size:.9rem}\
input{width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #bbb;border-radius:5px}\
button{margin-top:1.2rem;width:100%;padding:.6rem;border:0;border-radius:5px;background:#2d5be3;color:#fff;font-size:1rem}\
.err{background:#fde8e8;color:#8a1c1c;padding:.5rem .7rem;border-radius:5px;font-size:.9rem}\
.muted{color:#666;font-size:.8rem}\
a.provider{display:block;text-align:center;padding:.6rem;border:1px solid #2d5be3;border-radius:5px;color:#2d5be3;text-decoration:none}";

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) }
                style { (STYLE) }
            }
            body { main { (body) } }
        }
    }
}

/// The sign-in page. `action` is the login POST path; `next` is already validated.
/// `providers`: `(href, display name)` of each OpenID provider's button.
pub fn login_page(
    action: &str,
    next: &str,
    error: Option<&str>,
    basic_enabled: bool,
    providers: &[(String, String)],
) -> Markup {
    layout(
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(message) = error {
                p.err role="alert" { (message) }
            }
            @for (href, name) in providers {
                p { a.provider href=(href) { "Sign in with " (name) } }
            }
            @if basic_enabled {
                form method="post" action=(action) {
                    input type="hidden" name="next" value=(next);
                    label for="username" { "Username" }
                    input #username name="username" autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
            } @else if providers.is_empty() {
                p.muted { "No sign-in method is configured. Ask the operator to set AUTH_BASIC_USERS or add an OpenID provider." }
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
