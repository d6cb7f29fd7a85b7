#!/bin/sh
# Run by the official postgres image on the first start of an empty volume (files in
# /docker-entrypoint-initdb.d run once, against a temporary socket-only server): the
# warehouse gets its own database beside Dagster's (POSTGRES_DB), owned by the same role.
set -eu
: "${WAREHOUSE_PG_DB:?WAREHOUSE_PG_DB is not set (docker-compose.yml passes it from .env)}"
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v warehouse="$WAREHOUSE_PG_DB" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'warehouse', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'warehouse')\gexec
SQL
