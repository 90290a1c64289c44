#!/bin/sh
# Entrypoint of the gitdeploy image: wait for the database, migrate (one service only), then run
# the container's command (gunicorn or the worker) as PID 1's child via exec, so SIGTERM reaches it.
#
# Only the service with RUN_MIGRATIONS=true (web, in docker-compose.yml) migrates and creates the
# superuser. Every other service (the worker) waits until the database is fully migrated instead:
# two processes running `migrate` at once can both try to create the same table and one crashes,
# and a worker started on an unmigrated schema would fail on its first query.
set -eu

cd "$(dirname "$0")/.."

DB_WAIT_TIMEOUT="${DB_WAIT_TIMEOUT:-60}"
# The web service migrates while the worker waits, so the worker's wait must cover the migrations.
MIGRATION_WAIT_TIMEOUT="${MIGRATION_WAIT_TIMEOUT:-300}"

case "${RUN_MIGRATIONS:-false}" in
    true | 1 | yes | on)
        python manage.py wait_for_db --timeout "$DB_WAIT_TIMEOUT"
        # migrate also creates/updates the repository configured by GIT_URL / REPO_DIR.
        python manage.py migrate --noinput
        # Idempotent: creates DJANGO_SUPERUSER_USERNAME when it is set and absent, else does nothing.
        python manage.py ensure_superuser
        ;;
    false | 0 | no | off | "")
        python manage.py wait_for_db --migrated --timeout "$MIGRATION_WAIT_TIMEOUT"
        ;;
    *)
        echo "entrypoint: RUN_MIGRATIONS=${RUN_MIGRATIONS} is not a boolean: use true or false" >&2
        exit 2
        ;;
esac

# A bind-mounted ../repo created by Docker itself belongs to root; say so now rather than in the
# first SyncRun's log.
if [ -n "${REPO_DIR:-}" ] && [ -d "$REPO_DIR" ] && [ ! -w "$REPO_DIR" ]; then
    echo "entrypoint: warning: REPO_DIR=$REPO_DIR is not writable by uid $(id -u);" \
        "on the host run: sudo chown -R $(id -u):$(id -g) <project>/repo" >&2
fi

exec "$@"
