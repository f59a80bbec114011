-- What an OpenID provider's users are called upstream: the claim naming them and
-- the prefix before it (NULL: the provider's id and ':').
ALTER TABLE oidc_providers ADD COLUMN user_claim TEXT NOT NULL DEFAULT 'sub';
ALTER TABLE oidc_providers ADD COLUMN user_prefix TEXT;
-- The provider's `sub` of an OpenID session, for back-channel logout by subject.
ALTER TABLE sessions ADD COLUMN oidc_sub TEXT;
