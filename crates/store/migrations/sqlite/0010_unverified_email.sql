-- Whether a provider's unverified e-mail addresses are forwarded (off: dropped).
ALTER TABLE oidc_providers ADD COLUMN accept_unverified_email BOOLEAN NOT NULL DEFAULT FALSE;
