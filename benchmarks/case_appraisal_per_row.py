"""The seed's importer, as its revamp plan describes the old way: extract the ZIP, read
real_acct.txt with csv.DictReader (undecodable bytes ignored, as the seed opened its files),
coerce each field in Python (a bad number becomes 0, as the seed defaulted it), insert in
batches of 10,000 with the driver's executemany, one commit."""

import csv
from pathlib import Path

import sqlalchemy as sa

from benchmarks.appraisal import TABLE, extract_real_acct, real_acct_layout
from countysync_assets.resources.district_config import Column

BATCH = 10_000
SQL_TYPES = {"text": "TEXT", "integer": "BIGINT", "decimal": "DOUBLE PRECISION", "date": "TEXT"}


def coerce(column: Column, value: str | None) -> object:
    value = (value or "").strip()
    try:
        if column.type == "integer":
            return int(float(value)) if value else 0
        if column.type == "decimal":
            return float(value) if value else 0.0
    except ValueError:
        return 0
    return value.zfill(column.zero_pad) if column.zero_pad else value


def run(step: str, workdir: Path, archive: str, url: str) -> None:
    layout = real_acct_layout()
    path = extract_real_acct(Path(archive), workdir)
    engine = sa.create_engine(url)
    names = [c.name for c in layout.columns]
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    insert = (f"INSERT INTO {TABLE} ({', '.join(names)}) "
              f"VALUES ({', '.join(marker for _ in names)})")
    connection = engine.raw_connection()
    cursor = connection.cursor()
    cursor.execute(f"CREATE TABLE {TABLE} ("
                   + ", ".join(f"{c.name} {SQL_TYPES[c.type]}" for c in layout.columns)
                   + f", PRIMARY KEY ({', '.join(layout.key)}))")
    with open(path, encoding=layout.encoding, errors="ignore", newline="") as handle:
        batch = []
        for record in csv.DictReader(handle, delimiter=layout.delimiter, quoting=csv.QUOTE_NONE):
            batch.append(tuple(coerce(c, record.get(c.name)) for c in layout.columns))
            if len(batch) == BATCH:
                cursor.executemany(insert, batch)
                batch.clear()
        if batch:
            cursor.executemany(insert, batch)
    connection.commit()
    connection.close()
    engine.dispose()
