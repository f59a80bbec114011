-- A client has at most one live preview token, however many previews race.
CREATE UNIQUE INDEX access_tokens_one_preview ON access_tokens (client_id)
    WHERE preview AND revoked_ms IS NULL;
