"""The peer a data engineer would pick: dlt's sql_database source, incremental on updated_at,
merged on id into SQLite. Tabular only: dlt writes no GeoPackage or GeoJSON."""

import os
from pathlib import Path

import dlt
import pandas as pd
from dlt.sources.sql_database import sql_table

WORKING = ["id", "parcel_id", "owner", "use_code", "situs_address", "updated_at"]
STATS = ["id", "use_code", "acres", "land_value", "improvement_value", "assessed_value",
         "tax_year", "updated_at"]


# SQLite has one writer: dlt's parallel load jobs (one per table) wait on each other's lock,
# and at 1M rows a merge outlasts SQLite's busy timeout ("database is locked").
os.environ["LOAD__WORKERS"] = "1"


def run(step: str, workdir: Path, source_url: str, partitions: str) -> None:
    window = {}
    if step.startswith("backfill"):
        first, last = partitions.split("...")
        window = {"initial_value": pd.Timestamp(first).to_pydatetime(),
                  "end_value": (pd.Timestamp(last) + pd.Timedelta(days=1)).to_pydatetime()}
    resources = [
        sql_table(credentials=source_url, table="MasterParcels", backend="pyarrow",
                  included_columns=columns, write_disposition="merge", primary_key="id",
                  incremental=dlt.sources.incremental("updated_at", **window),
                  ).with_name(name)
        for name, columns in (("working", WORKING), ("stats", STATS))
    ]
    pipeline = dlt.pipeline(
        pipeline_name="countysync_bench", pipelines_dir=str(workdir / "dlt_pipelines"),
        # primary keys, as a data engineer would set them: without one, dlt's merge deletes
        # by a correlated subquery over the staging table that scans it for every stored row
        destination=dlt.destinations.sqlalchemy(f"sqlite:///{workdir / 'dlt.sqlite'}",
                                                create_primary_keys=True),
        dataset_name="main")
    pipeline.run(resources)
