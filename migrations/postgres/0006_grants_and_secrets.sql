-- Issue 14: what a module's tasks may use beyond clocks and randomness,
-- granted by the operator per module name (every version of it), for the
-- tasks of one queue or of every queue. Read by workers (cached for a few
-- seconds), never by the claim. Keep in step with
-- migrations/sqlite/0006_grants_and_secrets.sql.
--
-- `queue` is '' for "every queue" rather than NULL, so that the primary key
-- makes the same grant in the same scope one row.
-- `value` is the grant in its canonical text form, written by the client
-- (http: `scheme://host:port/path-prefix`). `kind` is checked by the code
-- that reads it, not here, so that a new kind needs no table rebuild
-- (SQLite cannot change a CHECK in place).

CREATE TABLE module_grants (
    module_name text        NOT NULL CHECK (module_name <> ''),
    queue       text        NOT NULL DEFAULT '',
    kind        text        NOT NULL CHECK (kind <> ''),
    value       text        NOT NULL CHECK (value <> ''),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (module_name, queue, kind, value)
);

-- Secrets, sealed by the client (ChaCha20-Poly1305 under the operator's
-- key, the name as associated data): the database never holds a value in
-- clear. `key_id` names the key (a hash of it), so that a value sealed
-- under another key is reported as such rather than as tampered with.
CREATE TABLE secrets (
    name        text        PRIMARY KEY CHECK (name <> ''),
    key_id      text        NOT NULL,
    nonce       bytea       NOT NULL,
    ciphertext  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
