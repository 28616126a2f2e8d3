#!/bin/sh
# The official postgres image's contract, on Debian's PostgreSQL: on an empty $PGDATA, initdb a UTF8
# cluster whose superuser is $POSTGRES_USER (default postgres) with password $POSTGRES_PASSWORD, create
# $POSTGRES_DB (default: the user's name), run /docker-entrypoint-initdb.d/*.sh (executable: run; else
# sourced) and *.sql as that user on a server that only listens on a private socket (so a healthcheck
# with pg_isready fails until initialisation is over), then serve on every address with password
# (scram-sha-256) authentication over TCP.
set -eu

case "${1:-postgres}" in -*) set -- postgres "$@" ;; esac
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "error: POSTGRES_PASSWORD is not set: the database would be open to anyone who reaches it" >&2
        exit 1
    fi
    export POSTGRES_USER POSTGRES_DB
    init_socket=$(mktemp -d)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$init_socket/pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$init_socket/pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
    rm -f "$init_socket/pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$init_socket" start >/dev/null
    export PGHOST="$init_socket" PGUSER="$POSTGRES_USER"
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -q --dbname postgres --set db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case "$file" in
            *.sh) if [ -x "$file" ]; then "$file"; else . "$file"; fi ;;
            *.sql) psql -v ON_ERROR_STOP=1 -q --dbname "$POSTGRES_DB" -f "$file" ;;
            *.sql.gz) gunzip -c "$file" | psql -v ON_ERROR_STOP=1 -q --dbname "$POSTGRES_DB" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    unset PGHOST PGUSER
    rmdir "$init_socket"
    echo "docker-entrypoint: database $POSTGRES_DB initialised; starting PostgreSQL"
fi
exec "$@"
