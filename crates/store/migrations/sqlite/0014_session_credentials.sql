-- Which password hash a basic sign-in verified (a fingerprint of it): when the
-- users file changes a user's hash, exactly the sessions of an older hash end,
-- on whichever replica reads the change and whenever it does.
ALTER TABLE sessions ADD COLUMN credential TEXT;
