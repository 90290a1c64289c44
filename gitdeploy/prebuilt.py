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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from django.db import connection, models

ModelT = TypeVar("ModelT", bound=models.Model)


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


def table(model: type[models.Model]) -> Table:
    return _table(model, connection.alias, connection.vendor)


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
    spec = table(model)
    values = list(row[: len(spec.attnames)])
    for index, col, converters in spec.converters:
        for convert in converters:
            values[index] = convert(values[index], col, connection)
    return model.from_db(connection.alias, spec.attnames, values)


def get(model: type[ModelT], column: str, value: Any) -> ModelT | None:
    """The row whose `column` (unique, indexed) equals `value`: filter(column=value).first()."""
    sql = _select_by(model, connection.alias, connection.vendor, column)
    with connection.cursor() as cursor:
        cursor.execute(sql, [value])
        row = cursor.fetchone()
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
    with connection.cursor() as cursor:
        cursor.execute(f"{spec.insert_into} RETURNING {spec.pk_column}", insert_values(instance))
        instance.pk = cursor.fetchone()[0]
    instance._state.adding = False
    instance._state.db = connection.alias


def insert_values(instance: models.Model, computed: Collection[str] = ()) -> list[Any]:
    """The parameters of table(model).insert_into for a new instance, prepared as save() would;
    without the fields named in `computed` (attnames), whose values the statement computes
    (insert_select)."""
    return [
        f.get_db_prep_save(f.pre_save(instance, True), connection)
        for f in table(type(instance)).insert_fields
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
