-- The gateway's two PostgreSQL roles (issue 15, docs/audit.md "Database roles").
--
--   hitl_owner  owns the schema: the migrations (`migrations/`) run as this role, and only they
--               create, alter or drop tables and triggers.
--   hitl_app    what the API, the worker and the Discord bot connect as: it may read and insert,
--               update the rows whose life changes (each migration grants those UPDATEs), and
--               nothing else. It owns no table, so it cannot ALTER, DROP or TRUNCATE one, nor
--               disable the triggers that refuse UPDATE and DELETE on the audit log (only a
--               table's owner or a superuser may), nor DELETE an approval or an audit entry.
--
-- Run once, as a superuser, in the gateway's database, before the first migration:
--
--   psql -v ON_ERROR_STOP=1 -d hitl -f deploy/postgres/roles.sql
--
-- The passwords come from the environment of psql (HITL_OWNER_DB_PASSWORD, HITL_APP_DB_PASSWORD);
-- in the compose stack the postgres image runs this file from /docker-entrypoint-initdb.d with
-- both variables set. Running it again changes nothing but the passwords.

\getenv owner_password HITL_OWNER_DB_PASSWORD
\getenv app_password HITL_APP_DB_PASSWORD

-- Refuse to create a role without a password (\getenv leaves the variable unset); run with
-- ON_ERROR_STOP so that psql stops here.
\if :{?owner_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'roles.sql: set HITL_OWNER_DB_PASSWORD for psql'; END $$;
\endif
\if :{?app_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'roles.sql: set HITL_APP_DB_PASSWORD for psql'; END $$;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hitl_owner') AS create_owner,
       NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hitl_app') AS create_app
\gset
\if :create_owner
    CREATE ROLE hitl_owner LOGIN;
\endif
\if :create_app
    CREATE ROLE hitl_app LOGIN;
\endif
ALTER ROLE hitl_owner WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS
    PASSWORD :'owner_password';
ALTER ROLE hitl_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION
    PASSWORD :'app_password';

-- The owner holds the schema the tables live in; nobody else may create objects there.
SELECT current_database() AS dbname \gset
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO hitl_owner, hitl_app;
ALTER SCHEMA public OWNER TO hitl_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO hitl_app;

-- Every table and sequence the owner creates from now on: readable and insertable by the app.
-- UPDATE is granted table by table by the migration that needs it; DELETE and TRUNCATE never.
ALTER DEFAULT PRIVILEGES FOR ROLE hitl_owner IN SCHEMA public
    GRANT SELECT, INSERT ON TABLES TO hitl_app;
ALTER DEFAULT PRIVILEGES FOR ROLE hitl_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO hitl_app;
ALTER DEFAULT PRIVILEGES FOR ROLE hitl_owner IN SCHEMA public
    GRANT EXECUTE ON FUNCTIONS TO hitl_app;
