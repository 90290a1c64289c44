# Stand-in for the official python:3.11.x-slim-bookworm (no registry here): Debian's Python 3.11
# laid out the way the official image has it — python, python3 and pip in /usr/local/bin, pip
# installing into /usr/local as root, no git, no compiler. It proves the project's Dockerfile and
# the app run on Debian bookworm's Python 3.11, not the official image's exact contents.
ARG BASE
FROM ${BASE}
# This machine reaches PyPI through a proxy with its own CA: the host's bundle is trusted as well
# (it stays in the stand-in; the project's Dockerfile adds nothing for it).
COPY host-ca-certificates.crt /usr/local/share/ca-certificates/host-bundle.crt
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && update-ca-certificates \
    # The official image's Python is not Debian-managed: pip may install system-wide (PEP 668).
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/python3 /usr/local/bin/python3 \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip3
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHON_VERSION=3.11
CMD ["python3"]
