-- OpenID Connect (SPEC 5): providers (client secret sealed under the secret key),
-- group mappings, pre-login rows (10-minute, single use), the back-channel logout
-- jti replay store, and the ID token kept for RP-initiated logout.
CREATE TABLE oidc_providers (
    id                    TEXT PRIMARY KEY NOT NULL,
    display_name          TEXT NOT NULL,
    issuer                TEXT NOT NULL,
    client_id             TEXT NOT NULL,
    client_secret_sealed  BYTEA,
    scopes                TEXT NOT NULL,
    algorithms            TEXT NOT NULL,
    groups_claim          TEXT NOT NULL,
    refuse_unmapped       BOOLEAN NOT NULL,
    source                TEXT NOT NULL,
    key_baseline          TEXT,
    created_ms            BIGINT NOT NULL,
    updated_ms            BIGINT NOT NULL
);

CREATE TABLE oidc_group_mappings (
    id           TEXT PRIMARY KEY NOT NULL,
    provider_id  TEXT NOT NULL REFERENCES oidc_providers (id) ON DELETE CASCADE,
    idp_group    TEXT NOT NULL,
    role         TEXT NOT NULL,
    UNIQUE (provider_id, idp_group, role)
);

CREATE TABLE oidc_pending (
    id             TEXT PRIMARY KEY NOT NULL,
    provider_id    TEXT NOT NULL REFERENCES oidc_providers (id) ON DELETE CASCADE,
    state          TEXT NOT NULL,
    nonce          TEXT NOT NULL,
    pkce_verifier  TEXT NOT NULL,
    next           TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    expires_ms     BIGINT NOT NULL
);
CREATE INDEX oidc_pending_expires ON oidc_pending (expires_ms);

CREATE TABLE oidc_logout_jti (
    provider_id  TEXT NOT NULL,
    jti          TEXT NOT NULL,
    expires_ms   BIGINT NOT NULL,
    PRIMARY KEY (provider_id, jti)
);
CREATE INDEX oidc_logout_jti_expires ON oidc_logout_jti (expires_ms);

CREATE TABLE oidc_session_tokens (
    session_id  TEXT PRIMARY KEY NOT NULL,
    id_token    TEXT NOT NULL
);

CREATE INDEX sessions_oidc_sid ON sessions (provider, oidc_sid);
