"""`manage.py wait_for_db`: block until the database answers (and, with --migrated, is migrated).

The container entrypoint runs this before anything touches the database, because `docker compose up`
starts the app while Postgres may still be initialising its volume. The web service migrates; the
worker only waits with --migrated, so the two never run `migrate` against each other.
"""

import time

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import Error as DatabaseError


class Command(BaseCommand):
    help = "Wait until the database accepts connections (with --migrated: and is fully migrated)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="Give up (exit status 1) after this many seconds (default: 60).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="Seconds between attempts (default: 1).",
        )
        parser.add_argument(
            "--migrated",
            action="store_true",
            help="Also wait until every migration has been applied (by another process).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args, timeout, interval, migrated, database, **options) -> None:
        connection = connections[database]
        deadline = time.monotonic() + timeout
        last_reason = ""
        while True:
            reason = self._not_ready_reason(connection, migrated)
            if reason is None:
                self.stdout.write("Database is ready" + (" and migrated." if migrated else "."))
                return
            if reason != last_reason:
                # One line per change of state, not one per attempt: the log stays readable.
                self.stderr.write(f"Waiting for the database: {reason}")
                last_reason = reason
            if time.monotonic() + interval > deadline:
                raise CommandError(f"Database not ready after {timeout:g} s: {reason}")
            time.sleep(interval)

    @staticmethod
    def _not_ready_reason(connection, migrated: bool) -> str | None:
        try:
            connection.ensure_connection()
            if migrated:
                executor = MigrationExecutor(connection)
                plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
                if plan:
                    return f"{len(plan)} migration(s) not applied yet"
            return None
        except DatabaseError as exc:
            # The first line is enough (psycopg adds hints on the next ones); it never holds the
            # password, which Django passes to the driver as a separate parameter.
            return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        finally:
            # A fresh connection per attempt: a half-open one from a restarting server would stick.
            connection.close()
