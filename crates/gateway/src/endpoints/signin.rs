//! Signing in with a username and password (`GET`/`POST {prefix}/login`: Origin
//! check, throttling, the argon2 pool, a uniform failure), minting the session
//! every sign-in method shares, and signing out (`POST {prefix}/logout`).

use portcullis_core::audit::AuditAction;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use portcullis_core::identity::Identity;
use portcullis_core::redirect::safe_next;
use portcullis_core::secret::SecretString;
use portcullis_core::session::new_session;
use serde::Deserialize;
use serde_json::json;

use crate::carrier::Carrier;
use crate::cookies::Audience;
use crate::cookies::{self, CLIENT_COOKIE, CSRF_COOKIE, SESSION_COOKIE};
use crate::error::GatewayError;
use crate::identity::IdentityFields;
use crate::pages;
use crate::pipeline::ClientAddr;
use crate::pipeline::authenticate::{
    authenticate_endpoint, authenticate_session_cookie, cookie_value,
};
use crate::pipeline::authorize::{EndpointAccess, authorize_endpoint};
use crate::state::Gateway;

use super::identity::identity_json;
use super::*;

/// Longest username or password considered; longer input is refused before any
/// hashing so argon2 never sees megabytes.
const MAX_USERNAME: usize = 256;
const MAX_PASSWORD: usize = 1024;

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
    /// Set by the sign-out redirect: the page says so.
    signed_out: Option<String>,
}

pub async fn login_page(State(gw): State<Gateway>, Query(q): Query<NextQuery>) -> Response {
    let next = q.next.as_deref().and_then(safe_next).unwrap_or("/");
    let form = LoginForm {
        notice: q
            .signed_out
            .is_some()
            .then_some("You have been signed out."),
        ..LoginForm::default()
    };
    render_login(&gw, next, &form, StatusCode::OK)
}

/// What the sign-in form shows besides its fields.
#[derive(Debug, Default)]
struct LoginForm<'a> {
    error: Option<&'a str>,
    notice: Option<&'a str>,
    /// The name typed before a failed attempt, shown again.
    username: &'a str,
}

fn render_login(gw: &Gateway, next: &str, form: &LoginForm<'_>, status: StatusCode) -> Response {
    let prefix = &gw.config().auth_prefix;
    let action = format!("{prefix}/login");
    let buttons: Vec<(String, String)> = gw
        .oidc()
        .buttons()
        .into_iter()
        .map(|(id, name)| {
            let href = format!(
                "{prefix}/oidc/login?provider={}&next={}",
                utf8_percent_encode(&id, NON_ALPHANUMERIC),
                utf8_percent_encode(next, NON_ALPHANUMERIC)
            );
            (href, name)
        })
        .collect();
    let page = pages::login_page(&pages::LoginPage {
        action: &action,
        next,
        error: form.error,
        notice: form.notice,
        username: form.username,
        basic_enabled: !gw.users().list.is_empty(),
        providers: &buttons,
    });
    let mut response = (status, page).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
struct LoginInput {
    username: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// Refuses a cross-site login POST. Browsers send `Origin` on POST (or at least
/// `Referer`). A form post with neither is refused: a form is what a cross-site
/// page can make a browser send, and a browser that withholds both (a privacy
/// setting, an old engine) cannot be told from that. A JSON post with neither
/// comes from a non-browser client (a cross-site page cannot send JSON without a
/// CORS preflight), which cannot be the victim of login CSRF, and is allowed.
pub(crate) fn check_origin(gw: &Gateway, headers: &HeaderMap) -> Result<(), GatewayError> {
    let claimed = if let Some(value) = headers.get(header::ORIGIN) {
        value.as_bytes().to_vec()
    } else if let Some(referer) = headers.get(header::REFERER) {
        // The scheme and host of the referring page.
        let referer = referer
            .to_str()
            .map_err(|_| GatewayError::OriginNotAllowed)?;
        let after_scheme = referer.find("://").map_or(0, |i| i + 3);
        let end = referer[after_scheme..]
            .find('/')
            .map_or(referer.len(), |i| after_scheme + i);
        referer.as_bytes()[..end].to_vec()
    } else if is_json(headers) {
        return Ok(());
    } else {
        crate::host::log_refusal("origin", "(a form post with neither Origin nor Referer)");
        return Err(GatewayError::OriginNotAllowed);
    };
    if crate::host::origin_allowed(gw, &claimed) {
        Ok(())
    } else {
        crate::host::log_refusal("origin", &String::from_utf8_lossy(&claimed));
        Err(GatewayError::OriginNotAllowed)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn parse_login(headers: &HeaderMap, body: &Bytes) -> Result<(LoginInput, bool), GatewayError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        serde_json::from_slice(body)
            .map(|input| (input, true))
            .map_err(|_| GatewayError::BadRequest("expected JSON {\"username\", \"password\"}"))
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body)
            .map(|input| (input, false))
            .map_err(|_| GatewayError::BadRequest("expected form fields username and password"))
    } else {
        Err(GatewayError::BadRequest(
            "Content-Type must be application/x-www-form-urlencoded or application/json",
        ))
    }
}

pub async fn login_submit(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let html_flow = !wants_json_response(&headers);
    let result = login(&gw, peer, &headers, &body).await;
    crate::metrics::login(
        portcullis_core::identity::IdentityProvider::Basic.as_str(),
        crate::metrics::LoginOutcome::of(result.as_ref().err().map(|(error, ..)| error)),
    );
    match result {
        Ok(response) => response,
        Err((error, next, username))
            if html_flow
                && matches!(
                    error,
                    GatewayError::InvalidCredentials | GatewayError::Throttled { .. }
                ) =>
        {
            // The form again, with the error's message, status and headers, and
            // the name as typed.
            let message = error.public_message();
            let form = LoginForm {
                error: Some(&message),
                username: &username,
                ..LoginForm::default()
            };
            let mut response = render_login(&gw, &next, &form, error.status());
            error.decorate(response.headers_mut());
            response
        }
        Err((error, ..)) => error.into_response(),
    }
}

async fn login(
    gw: &Gateway,
    peer: ClientAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, (GatewayError, String, String)> {
    let fail = |e| (e, "/".to_owned(), String::new());
    check_origin(gw, headers).map_err(fail)?;
    let (input, json_body) = parse_login(headers, body).map_err(fail)?;
    let next = input
        .next
        .as_deref()
        .and_then(safe_next)
        .unwrap_or("/")
        .to_owned();
    let username = input.username.trim().to_owned();
    // The name goes back into the form only if it could have been a name.
    let typed: String = username.chars().take(MAX_USERNAME).collect();
    let fail = |e| (e, next.clone(), typed.clone());
    let password = SecretString::new(input.password);
    if username.is_empty()
        || username.len() > MAX_USERNAME
        || password.expose().len() > MAX_PASSWORD
    {
        return Err(fail(GatewayError::InvalidCredentials));
    }
    // The actor is unproven until the password verifies; the typed name is the target.
    let mut event = gw.audit_event("anonymous", AuditAction::Login, "failure");
    event.ip = Some(peer.ip().to_string());
    event.target = Some(username.clone());

    if let Err(throttled) = gw.throttle().check(peer.ip(), &username) {
        event.reason = Some("throttled".into());
        gw.audit_throttled(event).await;
        return Err(fail(throttled));
    }

    // Unknown users are verified against a dummy hash: same work, same answer.
    let users = gw.users();
    let stored = users.list.hash_of(&username);
    let hash = stored.unwrap_or(&users.dummy_hash).to_owned();
    // The dummy costs as much as the costliest configured hash.
    let costliest = stored.is_none_or(|h| users.list.is_costliest(h));
    let matched = gw
        .passwords()
        .verify(hash, password, costliest)
        .await
        .map_err(fail)?;
    if stored.is_none() || !matched {
        event.reason = Some(
            if stored.is_none() {
                "unknown_user"
            } else {
                "bad_password"
            }
            .into(),
        );
        gw.audit(event).await;
        return Err(fail(GatewayError::InvalidCredentials));
    }

    let identity = users.list.identity(&username);
    let device = device_of(headers, Some(peer.ip().to_string()));
    let verified = stored.unwrap_or_default();
    let signed_in = SignIn {
        identity,
        oidc_sid: None,
        oidc_sub: None,
        device,
        assurance: portcullis_core::session::Assurance::default(),
        credential: Some(portcullis_core::basic::credential_fingerprint(verified)),
    };
    let (session, cookies) = establish_session(gw, signed_in).await.map_err(fail)?;
    // The users file changed while the password was checked: a reload that
    // swapped the users before this session existed could not end it, so it
    // ends here (one that swapped them later ends it by its recorded hash).
    if gw.users().list.hash_of(&username) != Some(verified) {
        if let Err(error) = gw.revoke_session(&session.id, "users-file").await {
            tracing::error!(%error, "could not end a session of a changed password");
        }
        event.reason = Some("password_changed_during_sign_in".into());
        gw.audit(event).await;
        return Err(fail(GatewayError::InvalidCredentials));
    }
    event.outcome = "success".into();
    event.actor = username.clone();
    event.target = Some(session.id.clone());
    gw.audit(event).await;

    let mut response = if json_body {
        let csrf = gw.csrf().token(&session.id);
        Json(json!({ "user": identity_json(&session.identity), "csrf_token": csrf }))
            .into_response()
    } else {
        Redirect::to(&next).into_response()
    };
    let headers = response.headers_mut();
    for value in cookies {
        headers.append(header::SET_COOKIE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Who signed in, and how: what a new session records.
#[derive(Debug)]
pub(crate) struct SignIn {
    pub identity: Identity,
    /// The provider's session id, for back-channel logout.
    pub oidc_sid: Option<String>,
    /// The provider's `sub`, for back-channel logout by subject.
    pub oidc_sub: Option<String>,
    pub device: portcullis_core::session::Device,
    /// A basic sign-in's hash, as a fingerprint (see `Session::credential`).
    pub credential: Option<String>,
    pub assurance: portcullis_core::session::Assurance,
}

/// The device a sign-in comes from (its `User-Agent`, and the client's address).
pub(crate) fn device_of(
    headers: &HeaderMap,
    ip: Option<String>,
) -> portcullis_core::session::Device {
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    portcullis_core::session::Device::new(user_agent, ip)
}

/// Mints a session for `identity`, commits it (a crash after this loses nothing),
/// caches it, and returns it with its `Set-Cookie` values (session and CSRF).
/// Shared by every way of signing in.
pub(crate) async fn establish_session(
    gw: &Gateway,
    signed_in: SignIn,
) -> Result<(portcullis_core::session::Session, Vec<HeaderValue>), GatewayError> {
    let mut session = new_session(
        signed_in.identity,
        gw.config().session,
        gw.now(),
        gw.entropy(),
    )
    .map_err(|e| GatewayError::Internal(e.to_string()))?;
    session.oidc_sid = signed_in.oidc_sid;
    session.oidc_sub = signed_in.oidc_sub;
    session.device = signed_in.device;
    session.assurance = signed_in.assurance;
    session.credential = signed_in.credential;
    let epoch = gw.session_cache().epoch();
    gw.store().insert_session(&session).await?;
    gw.session_cache().insert_new(session.clone(), epoch);
    let mut cookies = session_cookies(gw, &session, SESSION_COOKIE, true)?;
    // Signing in as oneself ends acting as a client in this browser.
    cookies.extend(
        cookies::clear(gw.config(), CLIENT_COOKIE)
            .iter()
            .filter_map(|v| HeaderValue::from_str(v).ok()),
    );
    Ok((session, cookies))
}

/// Signs a client in with access token `token` (a link's, or the operator
/// preview's): a session bound to the token, in the client cookie, with the CSRF
/// cookie only when `with_csrf` (a browser that also holds a session keeps that
/// session's CSRF token). `Ok(Err(_))`: the link signs no one in, and why.
pub(crate) async fn establish_client_session(
    gw: &Gateway,
    token: portcullis_store::TokenRef<'_>,
    device: portcullis_core::session::Device,
    with_csrf: bool,
) -> Result<
    Result<(portcullis_core::session::Session, Vec<HeaderValue>), portcullis_store::LinkRefusal>,
    GatewayError,
> {
    // The store fills in the client's identity.
    let placeholder = Identity {
        subject: String::new(),
        name: String::new(),
        email: None,
        provider: portcullis_core::identity::IdentityProvider::Magic,
        roles: Vec::new(),
    };
    let mut session = new_session(placeholder, gw.config().session, gw.now(), gw.entropy())
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    session.device = device;
    let epoch = gw.session_cache().epoch();
    let session = match gw.store().magic_sign_in(token, session).await? {
        Ok(session) => session,
        Err(refusal) => return Ok(Err(refusal)),
    };
    gw.session_cache().insert_new(session.clone(), epoch);
    let cookies = session_cookies(gw, &session, CLIENT_COOKIE, with_csrf)?;
    Ok(Ok((session, cookies)))
}

/// The valid client session the browser holds (its `portcullis_client` cookie),
/// read before a new one replaces it.
pub(crate) async fn client_session_of(
    gw: &Gateway,
    headers: &HeaderMap,
) -> Option<std::sync::Arc<crate::session_cache::CachedSession>> {
    let value = cookie_value(gw, headers, CLIENT_COOKIE)?;
    authenticate_session_cookie(gw, value)
        .await
        .ok()
        .and_then(Result::ok)
}

/// Ends the client session a new one replaced in this browser (its cookie is
/// overwritten, so nothing could use or end it any more); failures are logged.
pub(crate) async fn end_replaced_client_session(
    gw: &Gateway,
    replaced: Option<std::sync::Arc<crate::session_cache::CachedSession>>,
    new_id: &str,
) {
    let Some(old) = replaced.filter(|old| old.id() != new_id) else {
        return;
    };
    if let Err(error) = gw.revoke_session(old.id(), old.subject()).await {
        tracing::warn!(%error, "could not end a replaced client session");
    }
}

/// `Set-Cookie` values for a new session in cookie `name`, and its CSRF cookie.
fn session_cookies(
    gw: &Gateway,
    session: &portcullis_core::session::Session,
    name: &str,
    with_csrf: bool,
) -> Result<Vec<HeaderValue>, GatewayError> {
    let cookie = gw
        .keyring()
        .current()
        .sign(&session.id)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let max_age = (session.expires_ms - session.created_ms) / 1000;
    let mut values = vec![cookies::set(gw.config(), name, &cookie, max_age, true)];
    if with_csrf {
        let csrf = gw.csrf().token(&session.id);
        values.push(cookies::set(
            gw.config(),
            CSRF_COOKIE,
            &csrf,
            max_age,
            false,
        ));
    }
    Ok(values
        .iter()
        .filter_map(|v| HeaderValue::from_str(v).ok())
        .collect())
}

/// `GET {prefix}/logout`: a page asking to confirm, whose form posts here with
/// the CSRF token (a link to sign out is then a question, never an action); not
/// signed in, the sign-in page.
pub async fn logout_page(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    let prefix = &gw.config().auth_prefix;
    match authenticate_endpoint(&gw, &headers, peer, Audience::Gateway).await {
        Ok(Some(auth)) if auth.carrier == Carrier::Cookie => {
            let csrf = gw.csrf().token(auth.session_id());
            let page = pages::logout_page(
                &format!("{prefix}/logout"),
                &csrf,
                auth.identity().subject(),
            );
            let mut response = page.into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok(_) => Redirect::to(&format!("{prefix}/login")).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn logout(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_flow = wants_json_response(&headers);
    let auth = match authenticate_endpoint(&gw, &headers, peer, Audience::Gateway).await {
        Ok(auth) => auth,
        Err(e) => return e.into_response(),
    };
    // Only a cookie session is ended here; API tokens are revoked by id.
    let mut end_session_url = None;
    let mut client_home = None;
    if let Some(auth) = auth.as_ref().filter(|a| a.carrier == Carrier::Cookie) {
        let access = EndpointAccess {
            headers: &headers,
            body: &body,
            mutating: true,
            permission: None,
            mints_ticket: false,
            peer,
        };
        if let Err(e) = authorize_endpoint(&gw, auth, &access).await {
            return e.into_response();
        }
        // Signing out ends every session this browser holds: its own and a client
        // session beside it (an operator's preview).
        let mut ended = vec![auth.session.clone()];
        if let Some(value) = cookie_value(&gw, &headers, CLIENT_COOKIE)
            && let Ok(Ok(client)) = authenticate_session_cookie(&gw, value).await
            && client.id() != auth.session_id()
        {
            ended.push(client);
        }
        for session in ended {
            let (id, subject) = (session.id().to_owned(), session.subject().to_owned());
            if let Err(e) = gw.revoke_session(&id, &subject).await {
                return GatewayError::from(e).into_response();
            }
            let mut event = gw.audit_event(&subject, AuditAction::Logout, "success");
            event.target = Some(id);
            event.ip = Some(peer.ip().to_string());
            gw.audit(event).await;
        }
        // A client (signed in by link) is sent back to its pages, which say to ask
        // for a new link.
        client_home = auth.session.scope().map(|scope| scope.home().to_owned());
        // Signed in through a provider that can end its own session: offer that too.
        end_session_url = crate::endpoints::openid::end_session_url(&gw, auth).await;
    }
    let mut response = match (json_flow, end_session_url) {
        (true, None) => StatusCode::NO_CONTENT.into_response(),
        (true, Some(url)) => Json(json!({ "end_session_url": url })).into_response(),
        (false, Some(url)) => Redirect::to(&url).into_response(),
        (false, None) => match client_home {
            Some(home) => Redirect::to(&home).into_response(),
            None => Redirect::to(&format!("{}/login?signed_out=1", gw.config().auth_prefix))
                .into_response(),
        },
    };
    for name in [SESSION_COOKIE, CSRF_COOKIE, CLIENT_COOKIE] {
        for value in cookies::clear(gw.config(), name)
            .iter()
            .filter_map(|v| HeaderValue::from_str(v).ok())
        {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}
