#!/bin/sh
# Initialise the data folder on first start (user, password and database from POSTGRES_*), then
# run the server in the foreground, listening on every address with password authentication.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > "$password_file"
    # As the official image: UTF-8, trust on the local socket, passwords over the network.
    # (Without a locale, initdb would make SQL_ASCII databases in this bare image.)
    "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$password_file" \
        --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 \
        >/dev/null
    rm -f "$password_file"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "host all all ::/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        PGPASSWORD=$POSTGRES_PASSWORD "$bin/createdb" -h /var/run/postgresql -U "$POSTGRES_USER" \
            "$POSTGRES_DB"
    fi
    "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*'
