//! Bearer API tokens for non-browser clients.

use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::both_backends;
use crate::harness::*;
use crate::websocket::{close_frame, connect};

/// Creates a token for `user` directly in the store; returns (id, secret).
pub async fn create_token(
    store: &portcullis_store::Store,
    user: &str,
    roles: &str,
) -> (String, String) {
    create_owned_token(store, user, roles, None, None).await
}

/// A token owned by `user` of `provider` (offboarding), expiring at `expires_ms`.
pub async fn create_owned_token(
    store: &portcullis_store::Store,
    user: &str,
    roles: &str,
    provider: Option<&str>,
    expires_ms: Option<i64>,
) -> (String, String) {
    let token =
        portcullis_core::ticket::mint_api_token(&portcullis_core::secret::OsEntropy).unwrap();
    let row = portcullis_store::ApiTokenRow {
        id: token.id.clone(),
        subject: user.into(),
        roles: roles.into(),
        label: Some("test".into()),
        created_ms: now_ms(),
        revoked_ms: None,
        provider: provider.map(str::to_owned),
        expires_ms,
    };
    store.insert_api_token(&row, &token.hash).await.unwrap();
    (token.id, token.secret.expose().to_owned())
}

async fn bearer_tokens_authenticate_and_are_not_forwarded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (id, secret) = create_token(&gw.store, "robot", "user").await;
    let bearer = format!("Bearer {secret}");
    let r = gw.client.get("/echo", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-user"], serde_json::json!(["robot"]));
    assert!(
        h.get("authorization").is_none(),
        "our bearer must not reach the upstream"
    );

    let me = gw
        .client
        .get("/.auth/me", &[("authorization", &bearer)])
        .await
        .json();
    assert_eq!(me["provider"], "api-token");
    assert_eq!(me["session_id"], id);
    assert!(me["expires_at"].is_null());

    // Bearer callers mint tickets without CSRF tokens (no ambient credential).
    let t = gw
        .client
        .request(
            "POST",
            "/.auth/ws-ticket",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(t.status, 200);

    let rows: Vec<(&str, String, u16)> = vec![
        (
            "wrong secret",
            format!("Bearer pct_{}", "A".repeat(43)),
            401,
        ),
        ("malformed secret", "Bearer pct_short".into(), 401),
        ("lower-case scheme", format!("bearer {secret}"), 200),
        (
            "the upstream's own bearer is not ours",
            "Bearer jupyter-abc".into(),
            401,
        ),
    ];
    for (name, value, status) in rows {
        let r = gw.client.get("/echo", &[("authorization", &value)]).await;
        assert_eq!(r.status, status, "row {name}");
    }
    // With a session cookie, an upstream bearer passes through untouched.
    let s = gw.login(USER).await;
    let r = gw
        .client
        .get(
            "/echo",
            &[
                ("cookie", &s.cookie_header()),
                ("authorization", "Bearer jupyter-abc"),
            ],
        )
        .await;
    assert_eq!(
        r.json()["headers"]["authorization"],
        serde_json::json!(["Bearer jupyter-abc"])
    );

    // WebSockets accept the bearer without an Origin, and revoking the token
    // refuses it and closes its sockets.
    let (mut ws, response) = connect(gw.addr, "/ws/echo", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("headers")).await.unwrap();
    let seen = loop {
        match futures_util::StreamExt::next(&mut ws)
            .await
            .unwrap()
            .unwrap()
        {
            Message::Text(text) => break serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(seen["x-forwarded-user"], "robot");
    assert!(
        seen.get("authorization").is_none(),
        "our bearer must not reach the upstream WebSocket: {seen}"
    );
    let elsewhere = portcullis_store::Store::connect(&db.url).await.unwrap();
    assert!(elsewhere.revoke_api_token(&id, now_ms()).await.unwrap());
    let frame = close_frame(&mut ws, Duration::from_secs(1))
        .await
        .expect("closed within 1 s");
    assert_eq!(u16::from(frame.code), 4401);
    assert!(
        header_refused_within(&gw.client, "authorization", &bearer, Duration::from_secs(1)).await,
        "revoked token still accepted after 1 s"
    );
}

/// `POST {prefix}/ws-ticket` with a bearer (SPEC 6.1): the ticket carries the
/// token's identity, and dies with the token. The internal credential gets none.
async fn bearers_mint_usable_tickets(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (id, secret) = create_token(&gw.store, "robot", "user").await;
    let mint = |bearer: String| {
        let client = gw.client.clone();
        async move {
            client
                .request(
                    "POST",
                    "/.auth/ws-ticket",
                    &[("authorization", &bearer)],
                    "",
                )
                .await
        }
    };
    let minted = mint(format!("Bearer {secret}")).await;
    assert_eq!(minted.status, 200, "{}", minted.text());
    let ticket = minted.json()["ticket"].as_str().unwrap().to_owned();
    let (mut ws, response) = connect(gw.addr, &format!("/ws/echo?ticket={ticket}"), &[])
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let seen = crate::websocket::upstream_view(&mut ws).await;
    assert_eq!(seen["x-forwarded-user"], "robot");

    // A ticket minted before its token was revoked dies with it.
    let late = mint(format!("Bearer {secret}")).await.json()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(gw.store.revoke_api_token(&id, now_ms()).await.unwrap());
    let refused = connect(gw.addr, &format!("/ws/echo?ticket={late}"), &[]).await;
    assert!(refused.is_err(), "a revoked token's ticket is refused");

    let internal = gw.gateway.internal_credential().await.unwrap();
    let refused = mint(format!("Bearer {}", internal.expose())).await;
    assert_eq!(refused.status, 403, "no ticket for the internal credential");
}

both_backends!(
    bearer_tokens_authenticate_and_are_not_forwarded,
    bearers_mint_usable_tickets
);
