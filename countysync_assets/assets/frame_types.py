"""Dagster types (dagster-pandas) for the tables GIS staff open: checked on every output and
shown in the UI, so a broken key or timestamp fails the step before anything is published."""

import pandas as pd
from dagster import DagsterType, TypeCheck
from dagster_pandas import PandasColumn, create_dagster_pandas_dataframe_type


def _parcel_frame(name: str, description: str, *columns: PandasColumn):
    return create_dagster_pandas_dataframe_type(
        name=name,
        description=description,
        columns=[
            PandasColumn.integer_column("id", non_nullable=True, unique=True),
            # present and never null; its dtype (microsecond UTC) is set by the source resource
            PandasColumn.exists("updated_at", non_nullable=True),
            *columns,
        ],
    )


WorkingFrame = _parcel_frame(
    "WorkingFrame", "One row per parcel: unique id, owner, address, use code.",
    PandasColumn.string_column("parcel_id", non_nullable=True),
)
StatsFrame = _parcel_frame(
    "StatsFrame", "One row per parcel: unique id and non-negative assessment figures.",
    PandasColumn.numeric_column("acres", min_value=0, ignore_missing_vals=True),
    PandasColumn.numeric_column("assessed_value", min_value=0, ignore_missing_vals=True),
)


def check_frame(frame_type: DagsterType, frame: pd.DataFrame) -> TypeCheck:
    """``frame_type``'s check of one batch. Not ``dagster.check_dagster_type``: that creates a
    Dagster instance and a run on every call (~0.15 s each, twice per batch); dagster-pandas'
    frame checks do not use the context it builds."""
    return frame_type.type_check(None, frame)
