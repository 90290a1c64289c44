#!/usr/bin/env bash
# `make compose-test`: the compose stack run for real on a Docker engine on this machine.
#
# 1. Installs what is missing (docker.io, debootstrap, Debian's docker-compose 1.29).
# 2. Uses the Docker engine that answers on DOCKER_HOST (or the default socket); when none answers,
#    starts its own dockerd (state cached under $CACHE_DIR) and stops it again on exit.
# 3. Builds stand-ins for the base images (there is no registry to pull from): a Debian bookworm
#    root file system from debootstrap, imported with `docker import`, and on it Debian's Python
#    3.11, PostgreSQL and Caddy, tagged with the exact names docker/Dockerfile and
#    docker/docker-compose.yml use. See tests/compose/images/*.Dockerfile for what each stand-in
#    does not prove. Each is rebuilt only when its recipe (package list, Dockerfile) changes.
# 4. Runs tests/compose/stack_test.py, which builds the real image, brings the stack up from a
#    fresh .env and asserts what docs/ec2.md promises; it always ends with `down -v`.
#
# Every wait is bounded; the exit status is non-zero when anything fails.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/compose"
CACHE_DIR="${COMPOSE_TEST_CACHE:-/var/cache/gitdeploy-compose-test}"
RUN_DIR="/run/gitdeploy-compose-test"
PROJECT="${COMPOSE_TEST_PROJECT:-gitdeploy-compose-test}"
SUITE=bookworm
PYTHON="${COMPOSE_TEST_PYTHON:-$ROOT/.venv/bin/python}"
# The legacy builder: Debian's engine 20.10 has no buildx, and the project's Dockerfile needs none.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0 GIT_TERMINAL_PROMPT=0

step() { printf '\n==> compose-test: %s\n' "$*"; }
die() { printf 'compose-test: FAIL: %s\n' "$*" >&2; exit 1; }
started_dockerd=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if docker info >/dev/null 2>&1; then
        # Whatever the driver left behind (it runs `down -v` itself; this covers a crash of it).
        local label="label=com.docker.compose.project=$PROJECT"
        docker container ls -aq --filter "$label" | xargs -r docker container rm -f >/dev/null 2>&1 || true
        docker network ls -q --filter "$label" | xargs -r docker network rm >/dev/null 2>&1 || true
        docker volume ls -q --filter "$label" | xargs -r docker volume rm -f >/dev/null 2>&1 || true
    fi
    if [ -n "$started_dockerd" ]; then
        step "stopping the dockerd this test started (pid $started_dockerd)"
        kill -TERM "$started_dockerd" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$started_dockerd" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$started_dockerd" 2>/dev/null || true
        # What dockerd leaves behind on exit: its namespace handle and the docker0 bridge.
        umount "$RUN_DIR/exec/netns/default" 2>/dev/null || true
        ip link delete docker0 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "system packages"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v git >/dev/null || need+=(git)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x "$PYTHON" ] || die "$PYTHON is missing: run \`make install-test\` first (make compose-test does)"

step "Docker engine"
mkdir -p "$CACHE_DIR" "$RUN_DIR"
if ! docker info >/dev/null 2>&1; then
    export DOCKER_HOST="unix://$RUN_DIR/docker.sock"
    if ! docker info >/dev/null 2>&1; then
        dockerd --data-root "$CACHE_DIR/docker" --exec-root "$RUN_DIR/exec" \
            -H "$DOCKER_HOST" --pidfile "$RUN_DIR/dockerd.pid" >"$CACHE_DIR/dockerd.log" 2>&1 &
        started_dockerd=$!
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$started_dockerd" 2>/dev/null || { tail -20 "$CACHE_DIR/dockerd.log"; die "dockerd exited"; }
            sleep 0.5
        done
        docker info >/dev/null 2>&1 || { tail -20 "$CACHE_DIR/dockerd.log"; die "dockerd did not answer within 30 s"; }
        echo "started dockerd (pid $started_dockerd, log $CACHE_DIR/dockerd.log)"
    fi
fi
echo "engine $(docker version --format '{{.Server.Version}}') at ${DOCKER_HOST:-the default socket}"

# --- stand-in base images ---------------------------------------------------------------------
mirror="$(sed -n 's/^URIs: *//p; s/^deb \(\[[^]]*\] \)\?\(http[^ ]*\) bookworm main.*/\2/p' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -m1 '/debian/\?$' || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
recipe_hash() { cat "$@" | sha256sum | cut -c1-16; }

base_key="$(printf '%s\n' "$SUITE" "$mirror" minbase ca-certificates | sha256sum | cut -c1-16)"
BASE="gitdeploy-test/$SUITE:$base_key"
step "stand-in base: $BASE (debootstrap $SUITE from $mirror)"
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    rootfs="$CACHE_DIR/rootfs-$base_key"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$mirror" \
        >"$CACHE_DIR/debootstrap.log" 2>&1 || { tail -30 "$CACHE_DIR/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi

context="$(mktemp -d)"
cp "$HERE"/images/* "$context"/
cp /etc/ssl/certs/ca-certificates.crt "$context/host-ca-certificates.crt"
build_standin() {  # build_standin TAG DOCKERFILE [FILES...]: rebuilt only when the recipe changes
    local tag="$1" dockerfile="$2"
    shift 2
    local key
    key="$(printf '%s\n' "$BASE" | cat - "$context/$dockerfile" "${@/#/$context/}" | sha256sum | cut -c1-16)"
    if [ "$(docker image inspect --format '{{index .Config.Labels "gitdeploy.test.recipe"}}' "$tag" 2>/dev/null)" = "$key" ]; then
        echo "$tag: cached ($key)"
        return
    fi
    echo "$tag: building ($key)"
    docker build --quiet --network host --build-arg "BASE=$BASE" --label "gitdeploy.test.recipe=$key" \
        -t "$tag" -f "$context/$dockerfile" "$context" >/dev/null
}
step "stand-in images (names from docker/Dockerfile and docker/docker-compose.yml)"
python_tag="$(sed -n 's/^FROM \(python:[^ ]*\).*/\1/p' "$ROOT/docker/Dockerfile" | head -1)"
postgres_tag="$(sed -n 's/^ *image: *\(postgres:[^ ]*\).*/\1/p' "$ROOT/docker/docker-compose.yml" | head -1)"
caddy_tag="$(sed -n 's/^ *image: *\(caddy:[^ ]*\).*/\1/p' "$ROOT/docker/docker-compose.yml" | head -1)"
if [ -z "$python_tag" ] || [ -z "$postgres_tag" ] || [ -z "$caddy_tag" ]; then
    die "base image names not found"
fi
build_standin "$python_tag" python.Dockerfile host-ca-certificates.crt
build_standin "$postgres_tag" postgres.Dockerfile postgres-entrypoint.sh
build_standin "$caddy_tag" caddy.Dockerfile
build_standin gitdeploy-test/gitserver:latest gitserver.Dockerfile gitserver.py gitserver-start.sh
rm -rf "$context"

step "the stack (tests/compose/stack_test.py)"
export COMPOSE_TEST_PROJECT="$PROJECT"
# A bound on the whole walk (each of its waits has its own): SIGINT lets it run `down -v` first.
timeout --signal=INT --kill-after=120 "${COMPOSE_TEST_TIMEOUT:-1800}" "$PYTHON" "$HERE/stack_test.py" "$@"
