#!/bin/sh
# The part of the official postgres image's entrypoint that compose.yaml uses: on an empty PGDATA,
# initdb with POSTGRES_USER / POSTGRES_PASSWORD (scram-sha-256), run /docker-entrypoint-initdb.d/*.sql
# and *.sh against a server that listens on no TCP port, then start the real server on every
# interface. Extra arguments after `postgres` are passed on (e.g. -c max_connections=200).
set -eu

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

if [ "${1:-postgres}" = "postgres" ]; then
    [ "$#" -gt 0 ] && shift
else
    exec "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --no-instructions >/dev/null
    rm -f "$pwfile"
    # Password logins from the compose network (initdb only allows the loopback addresses).
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" \
        -w start >/dev/null
    if [ "$POSTGRES_DB" != "postgres" ]; then
        psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) echo "running $f"
                   psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" \
                       -d "$POSTGRES_DB" -f "$f" ;;
            *.sh) echo "running $f"
                  # shellcheck disable=SC1090  # the deployment's init scripts, sourced as the official image does
                  . "$f" ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL initialised in $PGDATA"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
