-- The database role tagwatch runs as: it may read and append, never rewrite the record.
--
-- Run as a superuser (or the record's owner with CREATEROLE), in the record's database,
-- after the owner created the schema (`tagwatch record init` with the owner's URL), and
-- again after every upgrade that adds tables (deploy/README.md, "The record's database"):
--     psql -v ON_ERROR_STOP=1 -d tagwatch -f deploy/postgres/roles.sql
-- then give the role a password (\password tagwatch_app) and run tagwatch with
--     TAGWATCH_RECORD_URL=postgresql://tagwatch_app@HOST:5432/tagwatch
--
-- What it may do: SELECT and INSERT everywhere; UPDATE of the mutable state (chain_heads,
-- checkpoints, alert_latest, outbox); UPDATE of entries.body only, which the append-only
-- trigger allows for nothing but a retention purge. Never DELETE or TRUNCATE. Not the
-- owner of anything, so it cannot drop or disable the append-only triggers; not a
-- superuser, so it cannot set session_replication_role to skip them. Whoever holds the
-- owner's or a superuser's credentials can still rewrite the record: the signed anchors
-- (docs/RECORD.md) are what detects that.

DO $$
BEGIN
    CREATE ROLE tagwatch_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END $$;

DO $$
DECLARE
    s text := quote_ident(current_schema());
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO tagwatch_app', s);
    EXECUTE format('REVOKE CREATE ON SCHEMA %s FROM tagwatch_app', s);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %s TO tagwatch_app', s);
    EXECUTE format('REVOKE DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA %s '
                   'FROM tagwatch_app', s);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %s TO tagwatch_app', s);
END $$;

-- The record itself: append, and empty a fix body (a retention purge) only.
REVOKE UPDATE ON entries, schema_version FROM tagwatch_app;
GRANT UPDATE (body) ON entries TO tagwatch_app;
