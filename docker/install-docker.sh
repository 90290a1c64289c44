#!/bin/sh
# Install Docker Engine and the compose plugin on a fresh Amazon Linux 2023 or Ubuntu host.
# Idempotent: run it again and it only makes sure the service is enabled and the user is in the group.
#
#   sudo sh docker/install-docker.sh
#
# Amazon Linux 2023 ships docker in its own repository but no compose or buildx plugin: those come
# from their GitHub releases, pinned here and checked against the published checksums.
set -eu

COMPOSE_VERSION="${COMPOSE_VERSION:-v2.32.4}"
BUILDX_VERSION="${BUILDX_VERSION:-v0.20.1}"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

log() {
    printf 'install-docker: %s\n' "$*"
}

die() {
    printf 'install-docker: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root: sudo sh $0"
[ -r /etc/os-release ] || die "/etc/os-release is missing: unknown distribution"
# shellcheck disable=SC1091  # provided by the distribution
. /etc/os-release

# download URL DEST: fetch to a temporary file first, so a failed download never leaves half a file.
download() {
    curl -fsSL --retry 3 -o "$2.part" "$1"
    mv "$2.part" "$2"
}

install_plugin() {
    name="$1" url="$2" sums_url="$3" asset="$4"
    target="$PLUGIN_DIR/$name"
    if [ -x "$target" ]; then
        log "$name already installed"
        return 0
    fi
    mkdir -p "$PLUGIN_DIR"
    tmp="$(mktemp -d)"
    download "$url" "$tmp/$asset"
    download "$sums_url" "$tmp/sums"
    expected="$(awk -v a="$asset" '{ sub(/^\*/, "", $2) } $2 == a { print $1 }' "$tmp/sums")"
    actual="$(sha256sum "$tmp/$asset" | awk '{ print $1 }')"
    if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then
        die "checksum mismatch for $asset"
    fi
    install -m 0755 "$tmp/$asset" "$target"
    rm -rf "$tmp"
    log "installed $name into $PLUGIN_DIR"
}

install_amazon_linux() {
    if ! command -v docker >/dev/null 2>&1; then
        dnf install -y docker
    fi
    case "$(uname -m)" in
        x86_64) compose_arch=x86_64 buildx_arch=amd64 ;;
        aarch64) compose_arch=aarch64 buildx_arch=arm64 ;;
        *) die "unsupported architecture $(uname -m)" ;;
    esac
    compose_asset="docker-compose-linux-$compose_arch"
    install_plugin docker-compose \
        "https://github.com/docker/compose/releases/download/$COMPOSE_VERSION/$compose_asset" \
        "https://github.com/docker/compose/releases/download/$COMPOSE_VERSION/checksums.txt" \
        "$compose_asset"
    buildx_asset="buildx-$BUILDX_VERSION.linux-$buildx_arch"
    install_plugin docker-buildx \
        "https://github.com/docker/buildx/releases/download/$BUILDX_VERSION/$buildx_asset" \
        "https://github.com/docker/buildx/releases/download/$BUILDX_VERSION/checksums.txt" \
        "$buildx_asset"
}

install_ubuntu() {
    if ! dpkg-query -W -f='${Status}' docker-compose-plugin 2>/dev/null | grep -q "ok installed"; then
        apt-get update
        apt-get install -y ca-certificates curl
        install -m 0755 -d /etc/apt/keyrings
        download https://download.docker.com/linux/ubuntu/gpg /etc/apt/keyrings/docker.asc
        chmod a+r /etc/apt/keyrings/docker.asc
        echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc]" \
            "https://download.docker.com/linux/ubuntu ${UBUNTU_CODENAME:-$VERSION_CODENAME} stable" \
            >/etc/apt/sources.list.d/docker.list
        apt-get update
        apt-get install -y docker-ce docker-ce-cli containerd.io docker-buildx-plugin \
            docker-compose-plugin
    else
        log "docker-compose-plugin already installed"
    fi
}

case "${ID:-}" in
    amzn) install_amazon_linux ;;
    ubuntu) install_ubuntu ;;
    *) die "unsupported distribution ${ID:-unknown}: install Docker by hand (docs.docker.com/engine/install)" ;;
esac

systemctl enable --now docker

# The user who ran sudo may use docker without sudo from their next login on.
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    if id -nG "$SUDO_USER" | tr ' ' '\n' | grep -qx docker; then
        log "$SUDO_USER is already in the docker group"
    else
        usermod -aG docker "$SUDO_USER"
        log "added $SUDO_USER to the docker group: log out and back in (or run: newgrp docker)"
    fi
fi

docker --version
docker compose version
log "done"
