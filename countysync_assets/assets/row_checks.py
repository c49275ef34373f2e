"""Which rows of a sync window can be published, and why the others cannot.

Every source row ends in the outputs or in ``parcel_rejects`` with its reasons; one bad row
never holds back the rest of its window, and every output gets the same good rows, so the
outputs agree with each other. A value is published exactly as the source holds it or not at
all: nothing is defaulted, clipped or guessed. The checks are vectorized; Python only touches
the rows that fail, to word their reasons.
"""

from datetime import timedelta

import numpy as np
import pandas as pd
from dagster import TimeWindow

from countysync_assets.assets.asset_metadata import PARCEL_COLUMNS
from countysync_assets.resources.master_parcels_source import CURSOR_PROBLEM, short

# figures that cannot be below zero (an area, money)
NON_NEGATIVE = ("acres", "land_value", "improvement_value", "assessed_value")
# columns every published row has (the key, what GIS users search by, the cursor)
REQUIRED = ("id", "parcel_id")
INT64 = 2**63
KIND = {name: kind.split(":")[0] for name, kind in PARCEL_COLUMNS.items()}


class Verbatim(str):
    """Words put into a reason as they are (a value would be quoted and shortened)."""


class Problems:
    """The reasons found per row, in the order the checks ran."""

    def __init__(self, index: pd.Index):
        self.reasons: dict[object, list[str]] = {}
        self.index = index

    def add(self, flagged: pd.Series, reason: str, values: pd.Series | None = None) -> None:
        """Record ``reason`` for the rows where ``flagged`` is true; its ``{}`` is each row's
        value (worded only for these rows: a clean batch costs no Python per row)."""
        for row in flagged.index[flagged.to_numpy(dtype=bool)]:
            value = values[row] if values is not None else None
            text = reason if values is None else reason.format(
                value if isinstance(value, Verbatim) else short(value))
            self.reasons.setdefault(row, []).append(text)

    def rejected(self) -> pd.Series:
        return pd.Series(self.index.isin(list(self.reasons)), index=self.index)

    def reason(self, index: pd.Index) -> pd.Series:
        return pd.Series(["; ".join(self.reasons[row]) for row in index], index=index,
                         dtype=object)


def _numbers(column: str, values: pd.Series, problems: Problems, whole: bool) -> pd.Series:
    """``values`` as numbers (Int64 for whole numbers, float64 otherwise); a value that is
    present but not a finite number (of the right kind) is a problem."""
    numbers = pd.to_numeric(values, errors="coerce") if values.dtype == object \
        else values.astype("float64" if values.dtype.kind == "f" else values.dtype)
    nan_value = _is_nan_float(values)
    problems.add(values.notna() & ~nan_value & numbers.isna(),
                 f"{column} {{}} is not a number", values)
    as_float = numbers.astype("float64")
    problems.add(pd.Series(np.isinf(as_float), index=values.index),
                 f"{column} {{}} is infinite", values)
    problems.add(nan_value, f"{column} is NaN (not a number)")
    finite = pd.Series(np.isfinite(as_float), index=values.index)
    if whole:
        fraction = finite & (as_float != np.round(as_float))
        problems.add(fraction, f"{column} {{}} is not a whole number", values)
        huge = finite & (as_float.abs() >= INT64)
        problems.add(huge, f"{column} {{}} is too large for a 64-bit integer", values)
        usable = finite & ~fraction & ~huge
        result = pd.Series(pd.NA, index=values.index, dtype="Int64")
        result[usable] = numbers[usable].astype("int64") if numbers.dtype.kind != "O" \
            else numbers[usable].astype("float64").astype("int64")
        numbers = result
    else:
        numbers = as_float.where(finite)
    if column in NON_NEGATIVE:
        problems.add((numbers < 0).fillna(False).astype(bool),
                     f"{column} {{}} is negative", values)
    return numbers


def _is_nan_float(values: pd.Series) -> pd.Series:
    """A float NaN the source returned as a value (PostgreSQL 'NaN'), not a NULL."""
    if values.dtype != object:
        return pd.Series(False, index=values.index)  # the driver's NULLs became NaN here
    return values.map(lambda v: isinstance(v, float) and v != v).astype(bool)


def _text(column: str, values: pd.Series, problems: Problems) -> pd.Series:
    """``values`` as text: numbers SQLite stored in a text column become their text; bytes
    that are not UTF-8 and NUL characters (which GeoPackage and GeoJSON cannot hold) are
    problems."""
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        raw_bytes = values.map(lambda v: isinstance(v, bytes | bytearray | memoryview))
        problems.add(raw_bytes, f"{column} {{}} is not valid UTF-8 text (fix the text "
                     "encoding in the master table)", values)
        values = values.map(lambda v: v if v is None or isinstance(v, str | bytes) else
                            (None if isinstance(v, float) and v != v else str(v)))
        values = values.where(~raw_bytes, None)
    # one search of the batch's text joined (in C); value by value only where it finds one
    if "\x00" in "".join(values.dropna()):
        nul = values.str.contains("\x00", regex=False, na=False).astype(bool)
        problems.add(nul, f"{column} contains a NUL character (\\x00), which the GeoPackage, "
                     "GeoJSON and CSV outputs cannot hold")
    return values


def check_rows(frame: pd.DataFrame, window: TimeWindow) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to publish, with their columns typed; rejects: id as text, parcel_id,
    updated_at, reason) for the rows ``frame`` read from the source for ``window``."""
    problems = Problems(frame.index)
    typed = {}
    for column in frame.columns:
        kind = KIND.get(column)
        if kind in ("integer", "float"):
            typed[column] = _numbers(column, frame[column], problems, kind == "integer")
        elif kind == "string":
            typed[column] = _text(column, frame[column], problems)
        if column in REQUIRED:
            problems.add(frame[column].isna(), f"{column} is NULL (required)")
    cursor = frame["updated_at"]
    if CURSOR_PROBLEM in frame:
        problem = frame[CURSOR_PROBLEM]
        problems.add(problem.notna(), "{}", problem.dropna().map(Verbatim))
    outside = cursor.notna() & ((cursor < window.start) | (cursor >= window.end))
    problems.add(outside, f"updated_at reads as {{}} but the source sorts it in the window "
                 f"from {window.start:%Y-%m-%d %H:%M} UTC (stored as text in another form)",
                 cursor[outside].map(Verbatim))
    ids = typed.get("id", frame["id"])
    shared = ids.notna() & ids.duplicated(keep=False)
    counts = ids[shared].value_counts()
    problems.add(shared, "{}", ids[shared].astype(object).map(lambda i: Verbatim(
        f"id {i} is shared by {counts.get(i, 0)} rows: each parcel row needs its own id")))

    rejected = problems.rejected()
    good = frame.assign(**typed).loc[~rejected].drop(columns=[CURSOR_PROBLEM], errors="ignore")
    good["id"] = good["id"].astype("int64")
    bad = frame.loc[rejected]
    rejects = pd.DataFrame({
        "id": bad["id"].map(lambda v: None if v is None or v != v else str(plain_id(v))),
        "parcel_id": bad["parcel_id"].map(lambda v: v if isinstance(v, str) else None)
        if "parcel_id" in bad else None,
        # a time that could not be read sorts where the source put it: in this window
        "updated_at": bad["updated_at"].fillna(window.end - timedelta(microseconds=1))
        .astype("datetime64[us, UTC]"),
        "reason": problems.reason(bad.index),
    }).reset_index(drop=True)
    return good.reset_index(drop=True), rejects


def plain_id(value: object) -> object:
    """An id as the source wrote it: a whole float (SQLite REAL 42.0) as 42."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value
