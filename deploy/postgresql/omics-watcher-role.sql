-- The database role of omics-watcher: only the rights the daemon and its CLI need.
--
-- Run once, as an administrator (on TencentDB for PostgreSQL: the account created with the
-- instance), connected to the database the watcher will use (created beforehand, e.g.
-- `CREATE DATABASE omics_watcher;`):
--
--   psql "host=HOST port=5432 dbname=omics_watcher user=ADMIN sslmode=verify-full sslrootcert=ca.pem" \
--        -v password="$(cat database_password)" -f deploy/postgresql/omics-watcher-role.sql
--
-- What the role gets, and why:
-- - LOGIN and nothing else at the role level: not a superuser, cannot create databases or
--   roles, no replication, no row-level security bypass; at most 50 connections (each daemon
--   opens a pool of at most 10 plus one for its lease; the CLI one each).
-- - CONNECT on this database, and one schema of its own, omics_watcher, which it owns: the
--   daemon (and a writing CLI command) creates and migrates its tables there, under an
--   advisory lock, so replicas starting together migrate once. Its search_path is that schema,
--   so it never touches (or needs) the public schema.
-- Everything else is the server's default for any role: advisory locks, its own session
-- settings (idle_in_transaction_session_timeout, lock_timeout, application_name).
\set ON_ERROR_STOP on

CREATE ROLE omics_watcher LOGIN PASSWORD :'password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    CONNECTION LIMIT 50;
GRANT CONNECT ON DATABASE :"DBNAME" TO omics_watcher;
CREATE SCHEMA omics_watcher AUTHORIZATION omics_watcher;
ALTER ROLE omics_watcher IN DATABASE :"DBNAME" SET search_path = omics_watcher;
-- PostgreSQL 15 already keeps PUBLIC from creating objects in the public schema; older
-- servers (and databases created from an old template) need this:
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
