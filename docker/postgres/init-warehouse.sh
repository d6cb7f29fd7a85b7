#!/bin/sh
# Run by the official postgres image, as the superuser, on the first start of an empty volume
# (files in /docker-entrypoint-initdb.d run once, against a temporary socket-only server).
# One role per job, none of them the superuser:
#   DAGSTER_PG_USER    Dagster's storage: owns Dagster's database (POSTGRES_DB), nothing else
#   COVID_DB_USER      the pipeline: owns the warehouse schemas covid_19_raw and covid_19
#   COVID_READER_USER  analysts: reads those schemas, including tables created later
set -eu
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v dagster_db="$POSTGRES_DB" -v dagster="$DAGSTER_PG_USER" -v dagster_password="$DAGSTER_PG_PASSWORD" \
  -v warehouse="$WAREHOUSE_PG_DB" -v pipeline="$COVID_DB_USER" -v pipeline_password="$COVID_DB_PASSWORD" \
  -v reader="$COVID_READER_USER" -v reader_password="$COVID_READER_PASSWORD" <<'SQL'
CREATE ROLE :"dagster" LOGIN PASSWORD :'dagster_password';
CREATE ROLE :"pipeline" LOGIN PASSWORD :'pipeline_password';
CREATE ROLE :"reader" LOGIN PASSWORD :'reader_password';

ALTER DATABASE :"dagster_db" OWNER TO :"dagster";
REVOKE ALL ON DATABASE :"dagster_db" FROM PUBLIC;

CREATE DATABASE :"warehouse";
REVOKE ALL ON DATABASE :"warehouse" FROM PUBLIC;
GRANT CONNECT, CREATE, TEMPORARY ON DATABASE :"warehouse" TO :"pipeline";
GRANT CONNECT ON DATABASE :"warehouse" TO :"reader";
\connect :"warehouse"
CREATE SCHEMA covid_19_raw AUTHORIZATION :"pipeline";
CREATE SCHEMA covid_19 AUTHORIZATION :"pipeline";
GRANT USAGE ON SCHEMA covid_19_raw, covid_19 TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"pipeline" IN SCHEMA covid_19_raw, covid_19 GRANT SELECT ON TABLES TO :"reader";
SQL
