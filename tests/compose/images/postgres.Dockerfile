# Stand-in for the official postgres:17 (no registry here): Debian bookworm's PostgreSQL 15 server
# with an entrypoint that honours POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB and initialises
# /var/lib/postgresql/data only when it is empty, as the official image does. It does not prove
# anything PostgreSQL 17 specific, nor the official entrypoint's other variables.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && rm -rf /var/lib/postgresql/15 /etc/postgresql/15/main
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME /var/lib/postgresql/data
# Fast shutdown, like the official image: open connections do not hold a restart up.
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
