#!/bin/sh
# Run once by the postgres image when its data volume is new (/docker-entrypoint-initdb.d):
# a database and role "optuna" for the searchers' Optuna studies (LENSTUNE_OPTUNA_STORAGE,
# docs/cluster.md), apart from MLflow's. Skipped when OPTUNA_DB_PASSWORD is empty (compose
# requires it).
set -eu
if [ -z "${OPTUNA_DB_PASSWORD:-}" ]; then
    echo "postgres-init-optuna: OPTUNA_DB_PASSWORD is empty: no optuna database"
    exit 0
fi
psql -v ON_ERROR_STOP=1 -v pw="$OPTUNA_DB_PASSWORD" \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE optuna LOGIN PASSWORD :'pw';
CREATE DATABASE optuna OWNER optuna;
SQL
echo "postgres-init-optuna: database optuna, owned by role optuna"
