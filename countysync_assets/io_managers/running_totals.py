"""Running totals of a SQLite table, kept in step by triggers, for county-wide summaries.

An input with ``metadata={"aggregate": {"by": column, "values": {name: [function, column]}}}``
(functions ``count`` and ``sum``) asks for totals per ``by`` value. Over the whole table they
come from a small totals table that SQLite triggers update with every insert, update and
delete, in the same transaction as the rows themselves: a sync that changes 100 parcels costs
100 trigger steps, not a GROUP BY over the county. The table is built once, by one GROUP BY,
the first time the totals are asked for (and rebuilt if the requested totals change).
"""

import sqlite3

from countysync_assets.io_managers.publishing import quote

FUNCTIONS = ("count", "sum")
ROWS = "_rows"  # rows per group: a group whose rows are all gone is removed


def check_aggregate(aggregate: dict) -> None:
    """Refuse a malformed ``aggregate`` input with a message that says what is expected."""
    values = aggregate.get("values") if isinstance(aggregate, dict) else None
    if not isinstance(aggregate, dict) or not isinstance(aggregate.get("by"), str) or \
            not isinstance(values, dict) or not values:
        raise ValueError(f"Input metadata aggregate={aggregate!r} must look like "
                         '{"by": "use_code", "values": {"parcel_count": ["count", "*"]}}.')
    for name, (function, _column) in values.items():
        if function.lower() not in FUNCTIONS:
            raise ValueError(f"Aggregate {name!r} uses {function!r}; the functions are "
                             f"{', '.join(FUNCTIONS)}.")


def group_by_sql(table: str, aggregate: dict) -> str:
    """``SELECT by, count(..) AS name, sum(..) AS name ... FROM table`` (no GROUP BY yet)."""
    parts = [quote(aggregate["by"])] + [
        f"{function.lower()}({'*' if column == '*' else quote(column)}) AS {quote(name)}"
        for name, (function, column) in aggregate["values"].items()]
    return f"SELECT {', '.join(parts)} FROM {quote(table)}"


def _contribution(function: str, column: str, row: str) -> str:
    """What one row (``NEW`` or ``OLD``) adds to a total."""
    if function.lower() == "count":
        return "1" if column == "*" else f"({row}.{quote(column)} IS NOT NULL)"
    return f"ifnull({row}.{quote(column)}, 0)"


def totals_table(conn: sqlite3.Connection, table: str, aggregate: dict) -> str:
    """The name of ``table``'s running totals for ``aggregate``, creating them (one GROUP BY
    and three triggers, in one transaction) if they do not exist yet."""
    by, values = aggregate["by"], aggregate["values"]
    totals = f"{table}_totals_by_{by}"
    wanted = [by, ROWS, *values]
    if [row[1] for row in conn.execute(f"PRAGMA table_info({quote(totals)})")] == wanted:
        return totals
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"DROP TABLE IF EXISTS {quote(totals)}")
        for event in ("insert", "update", "delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS {quote(f'{totals}_on_{event}')}")
        select = group_by_sql(table, aggregate).replace(
            " FROM ", f", count(*) AS {quote(ROWS)} FROM ", 1)
        conn.execute(f"CREATE TABLE {quote(totals)} AS SELECT {', '.join(map(quote, wanted))} "
                     f"FROM ({select} GROUP BY {quote(by)})")
        columns = [ROWS, *values]

        def add(row: str, sign: str) -> str:
            amounts = ["1", *(_contribution(f, c, row) for f, c in values.values())]
            changes = ", ".join(f"{quote(c)} = {quote(c)} {sign} {a}"
                                for c, a in zip(columns, amounts, strict=True))
            return f"UPDATE {quote(totals)} SET {changes} WHERE {quote(by)} IS {row}.{quote(by)};"

        insert_group = (f"INSERT INTO {quote(totals)} ({', '.join(map(quote, wanted))}) "
                        f"SELECT NEW.{quote(by)}, {', '.join('0' for _ in columns)} WHERE NOT "
                        f"EXISTS (SELECT 1 FROM {quote(totals)} WHERE {quote(by)} IS "
                        f"NEW.{quote(by)});")
        drop_empty = f"DELETE FROM {quote(totals)} WHERE {quote(ROWS)} <= 0;"
        watched = ", ".join(quote(c) for c in {by, *(c for _, c in values.values())} - {"*"})
        for event, on, body in (
            ("insert", "INSERT", f"{insert_group} {add('NEW', '+')}"),
            ("update", f"UPDATE OF {watched}",
             f"{add('OLD', '-')} {insert_group} {add('NEW', '+')} {drop_empty}"),
            ("delete", "DELETE", f"{add('OLD', '-')} {drop_empty}"),
        ):
            conn.execute(f"CREATE TRIGGER {quote(f'{totals}_on_{event}')} AFTER {on} ON "
                         f"{quote(table)} FOR EACH ROW BEGIN {body} END")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return totals
