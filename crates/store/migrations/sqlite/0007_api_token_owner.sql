-- API tokens know their owner's provider (so a token of a removed user is refused)
-- and may expire.
ALTER TABLE api_tokens ADD COLUMN provider TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_ms INTEGER;
CREATE INDEX api_tokens_subject ON api_tokens (subject);
-- The device a session was signed in from, shown on the sessions page.
ALTER TABLE sessions ADD COLUMN user_agent TEXT;
ALTER TABLE sessions ADD COLUMN ip TEXT;
-- How the OpenID provider authenticated the sign-in (step-up route rules).
ALTER TABLE sessions ADD COLUMN acr TEXT;
ALTER TABLE sessions ADD COLUMN amr TEXT;
