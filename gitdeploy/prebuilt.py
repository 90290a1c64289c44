"""The webhook's statements, built once per process instead of compiled by the ORM per request.

Django compiles a queryset into SQL each time one runs. For the four statements of a webhook (the
repository by slug, the redelivery look-up, the run's insert-or-join, the Delivery insert), the
compiling took more CPU than the rest of the request together (issue 12; BENCHMARKS.md). Here each
model's column list, converters and INSERT are built once per database connection settings from
its ``_meta``, and run through Django's own connection, so they take part in its transactions and
its execute wrappers (``CaptureQueriesContext`` sees them), and rows come back as model instances
converted exactly as a queryset's are.

For the hot path only; the rest of the project uses the ORM. What these skip, on purpose: the save
signals (no gitdeploy model has receivers, and ``tests/test_prebuilt.py`` fails if one appears),
deferred fields and ``select_related``.

On PostgreSQL, outside a transaction, ``cursor()`` prepares these statements: each is parsed and
planned once per connection, and its values are sent beside it instead of quoted into it. For the
push's one statement (a 12 KB text with 65 values) that saved 40 % of its time, in PostgreSQL and in
the web process (BENCHMARKS.md). A connection pooler that does not keep prepared statements
(PgBouncer in transaction mode before 1.21, or with max_prepared_statements = 0) fails such a
statement before it runs; ``cursor()`` then runs it again unprepared and prepares nothing more in
that process. DB_PREPARED_STATEMENTS=false says so from the start.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections, models

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=models.Model)

# Set when a prepared statement failed the way a pooler makes it fail: from then on this process
# prepares nothing (a statement runs unprepared rather than fail on every other connection).
_pooler_drops_prepared_statements = False


def cursor():
    """connection.cursor() for the statements built here. On PostgreSQL outside a transaction, one
    whose statements are prepared on their first run on the connection (psycopg names and keeps
    them); a statement a pooler lost is run again unprepared. In a transaction it is the plain
    cursor: a failed statement there cannot be run again."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    # None: psycopg prepares nothing (DB_PREPARED_STATEMENTS=false, or Django's own default).
    if _pooler_drops_prepared_statements or connection.connection.prepare_threshold is None:
        return connection.cursor()
    with connection.wrap_database_errors:
        # Django's own step from a driver cursor to its wrapper (the debug one when queries are
        # logged), as connection.cursor() takes it.
        return connection._prepare_cursor(  # type: ignore[attr-defined]
            _prepared_cursor_class()(connection.connection)
        )


@functools.cache
def _prepared_cursor_class() -> Any:
    import psycopg
    from django.db.backends.postgresql import base as postgresql

    # Django's psycopg 3 cursor with server-side binding (defined only under psycopg 3).
    server_binding: Any = postgresql.ServerBindingCursor

    # What a pooler's server connections give back for a statement psycopg prepared on another
    # one (it does not exist there) or that another client prepared under the same name; both
    # fail before the statement runs.
    lost = (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement)

    from psycopg import _queries

    class ConvertedOnce(_queries.PostgresQuery):
        """psycopg turns a statement's %s into $1... each time it runs, except for statements of
        up to 4 KB and 50 values, which it caches (ORMs generate longer ones that rarely repeat).
        The push's statement is longer, and the same on every push: converting it took 0.3 ms
        of the web's CPU per push. Here each of prebuilt's statements is converted once."""

        __slots__ = ()

        def convert(self, query, vars):
            if vars is None or not isinstance(query, str):
                return super().convert(query, vars)
            encoding = self._tx.encoding
            converted = _converted_statement(query, encoding)
            self.query, self._want_formats, self._order, self._parts = converted
            self.dump(vars)

    class PreparedCursor(server_binding):
        _query_cls = ConvertedOnce

        def _convert_query(self, query, params=None):
            # psycopg remembers the query it sent for Django's debug cursor (last_executed_query:
            # DEBUG's log, CaptureQueriesContext), but not when it runs a prepared one: this does.
            self._query = converted = super()._convert_query(query, params)
            return converted

        def execute(self, query, params=None, *, prepare=None, binary=None):
            global _pooler_drops_prepared_statements
            if _pooler_drops_prepared_statements:
                return super().execute(query, params, prepare=False, binary=binary)
            try:
                return super().execute(query, params, prepare=True, binary=binary)
            except lost as exc:
                if self.connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    raise
                _pooler_drops_prepared_statements = True
                logger.warning(
                    "a prepared statement was lost between statements (%s): a connection pooler "
                    "in transaction mode? This process prepares no more statements; set "
                    "DB_PREPARED_STATEMENTS=false to say so from the start",
                    exc.sqlstate,
                )
                return super().execute(query, params, prepare=False, binary=binary)

    return PreparedCursor


@functools.lru_cache(maxsize=64)  # prebuilt's statements: a handful, each the same every time
def _converted_statement(query: str, encoding: str) -> Any:
    from psycopg import _queries

    return _queries._query2pg_nocache(query.encode(encoding), encoding)


@dataclasses.dataclass(frozen=True)
class Table:
    """One model's statements for one database vendor."""

    table: str  # quoted
    columns: str  # every concrete column, quoted, in the order from_db() expects them
    attnames: tuple[str, ...]
    # (index in the row, converters) for the columns whose values Django converts after reading.
    converters: tuple[tuple[int, Any, tuple[Callable, ...]], ...]
    insert_fields: tuple[models.Field, ...]
    insert_columns: str  # INSERT INTO table (columns), for the values of insert_values()
    pk_column: str  # quoted

    @property
    def insert_into(self) -> str:
        """INSERT INTO table (columns) VALUES (%s, ...)."""
        return f"{self.insert_columns} VALUES ({', '.join(['%s'] * len(self.insert_fields))})"


def table(model: type[models.Model], database: Any = None) -> Table:
    """model's statements for the database of `database` (a connection; by default this
    thread's)."""
    if database is None:
        database = _this_threads_connection()
    return _table(model, database.alias, database.vendor)


def _this_threads_connection() -> Any:
    """The default database's connection of this thread. `django.db.connection` is a proxy that
    looks it up again at every attribute; the field methods called per value (get_db_prep_save,
    the converters) read several: 59 look-ups a push, 25 once these found it once (cProfile)."""
    return connections[DEFAULT_DB_ALIAS]


@functools.cache
def _table(model: type[models.Model], alias: str, vendor: str) -> Table:
    meta, quote = model._meta, connection.ops.quote_name
    fields = meta.concrete_fields
    converters = []
    for index, field in enumerate(fields):
        col = field.get_col(meta.db_table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            converters.append((index, col, tuple(found)))
    # As Model.save() inserts: every concrete column but an auto primary key.
    insert_fields = tuple(f for f in meta.local_concrete_fields if f is not meta.auto_field)
    table_name = quote(meta.db_table)
    return Table(
        table=table_name,
        columns=", ".join(quote(str(f.column)) for f in fields),
        attnames=tuple(f.attname for f in fields),
        converters=tuple(converters),
        insert_fields=insert_fields,
        insert_columns=(
            # Names come from _meta; every value is a parameter.
            f"INSERT INTO {table_name} ({', '.join(quote(str(f.column)) for f in insert_fields)})"
        ),
        pk_column=quote(str(meta.pk.column)),
    )


def from_row(model: type[ModelT], row: Sequence[Any]) -> ModelT:
    """A model instance from a row of table(model).columns, as a queryset would build it."""
    database = _this_threads_connection()
    spec = table(model, database)
    values = list(row[: len(spec.attnames)])
    for index, col, converters in spec.converters:
        for convert in converters:
            values[index] = convert(values[index], col, database)
    return model.from_db(database.alias, spec.attnames, values)


def get(model: type[ModelT], column: str, value: Any) -> ModelT | None:
    """The row whose `column` (unique, indexed) equals `value`: filter(column=value).first()."""
    sql = _select_by(model, connection.alias, connection.vendor, column)
    with cursor() as statement:
        statement.execute(sql, [value])
        row = statement.fetchone()
    return from_row(model, row) if row is not None else None


@functools.cache
def _select_by(model: type[models.Model], alias: str, vendor: str, column: str) -> str:
    spec = _table(model, alias, vendor)
    return f"SELECT {spec.columns} FROM {spec.table} WHERE {quoted(model, column)} = %s LIMIT 1"  # noqa: S608


def quoted(model: type[models.Model], name: str) -> str:
    """The quoted column of a model's field."""
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or not field.column:
        raise ValueError(f"{model.__name__}.{name} has no column")
    return connection.ops.quote_name(field.column)


def insert(instance: models.Model) -> None:
    """instance.save(force_insert=True) for a new row with an automatic primary key: the same
    pre_save (auto_now_add) and value preparation, one INSERT ... RETURNING, no signals."""
    if instance.pk is not None:
        raise ValueError("prebuilt.insert() inserts new rows only")
    spec = table(type(instance))
    with cursor() as statement:
        statement.execute(f"{spec.insert_into} RETURNING {spec.pk_column}", insert_values(instance))
        instance.pk = statement.fetchone()[0]
    instance._state.adding = False
    instance._state.db = connection.alias


def insert_values(instance: models.Model, computed: Collection[str] = ()) -> list[Any]:
    """The parameters of table(model).insert_into for a new instance, prepared as save() would;
    without the fields named in `computed` (attnames), whose values the statement computes
    (insert_select)."""
    database = _this_threads_connection()
    return [
        f.get_db_prep_save(f.pre_save(instance, True), database)
        for f in table(type(instance), database).insert_fields
        if f.attname not in computed
    ]


def insert_select(model: type[models.Model], computed: Mapping[str, str]) -> str:
    """INSERT INTO table (columns) SELECT ...: a parameter for each column, but for the fields in
    `computed` (attname -> an SQL expression over the statement's own rows), for an insert whose
    values partly come from the rest of the statement. Add FROM and its parameters:
    insert_values(instance, computed)."""
    spec = table(model)
    unknown = set(computed) - {f.attname for f in spec.insert_fields}
    if unknown:
        raise ValueError(f"{model.__name__} inserts no {', '.join(sorted(unknown))}")
    values = [computed.get(f.attname, "%s") for f in spec.insert_fields]
    return f"{spec.insert_columns} SELECT {', '.join(values)}"
