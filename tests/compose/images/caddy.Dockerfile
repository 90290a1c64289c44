# Stand-in for the official caddy:2.x-alpine (no registry here): Debian bookworm's Caddy 2.6 with the
# official image's paths (/etc/caddy/Caddyfile, /data, /config). It proves the Caddyfile and the
# https profile's wiring, not the newer Caddy release the official image ships.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends caddy ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV XDG_CONFIG_HOME=/config \
    XDG_DATA_HOME=/data
EXPOSE 80 443 443/udp
WORKDIR /srv
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
