# The test's git server (tests/compose/docker-compose.test.yml): git daemon (public case), git
# http-backend behind Basic auth (private HTTPS-token case, served as plain HTTP on the compose
# network) and sshd (deploy-key case). Test-only; never part of the production stack.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-server python3 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/sshd \
    && useradd --uid 2000 --create-home --shell /usr/bin/git-shell git \
    && usermod -p '*' git
COPY gitserver.py gitserver-start.sh /usr/local/bin/
CMD ["/usr/local/bin/gitserver-start.sh"]
