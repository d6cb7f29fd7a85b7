#!/bin/sh
# Runs once, on the first start of an empty volume: the warehouse gets its own database
# beside Dagster's (POSTGRES_DB), owned by the same role.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v warehouse="$WAREHOUSE_PG_DB" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'warehouse', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'warehouse')\gexec
SQL
