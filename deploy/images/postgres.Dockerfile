# PostgreSQL from Debian's package, standing in for the postgres image where that cannot be
# pulled: the same variables (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB), data folder
# (/var/lib/postgresql/data) and port.
ARG BASE_IMAGE=alpaca-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
