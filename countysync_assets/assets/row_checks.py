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


class Problems:
    """The reasons found per row, in the order the checks ran."""

    def __init__(self, index: pd.Index):
        self.reasons: dict[object, list[str]] = {}
        self.index = index

    def add(self, flagged: pd.Series, words: pd.Series) -> None:
        """Record ``words`` (a reason per row) for the rows where ``flagged`` is true."""
        for row, text in words[flagged].items():
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
    present = values.notna() & ~_is_nan_float(values)
    words = values.map(short)
    problems.add(present & numbers.isna(), f"{column} " + words + " is not a number")
    as_float = numbers.astype("float64")
    problems.add(np.isinf(as_float), f"{column} " + words + " is infinite")
    problems.add(_is_nan_float(values), pd.Series(f"{column} is NaN (not a number)",
                                                  index=values.index))
    finite = np.isfinite(as_float)
    if whole:
        fraction = finite & (as_float != np.round(as_float))
        problems.add(fraction, f"{column} " + words + " is not a whole number")
        huge = finite & (as_float.abs() >= INT64)
        problems.add(huge, f"{column} " + words + " is too large for a 64-bit integer")
        usable = finite & ~fraction & ~huge
        result = pd.Series(pd.NA, index=values.index, dtype="Int64")
        result[usable] = numbers[usable].astype("int64") if numbers.dtype.kind != "O" \
            else numbers[usable].astype("float64").astype("int64")
        numbers = result
    else:
        numbers = as_float.where(finite)
    if column in NON_NEGATIVE:
        problems.add((numbers < 0).fillna(False).astype(bool),
                     f"{column} " + words + " is negative")
    return numbers


def _is_nan_float(values: pd.Series) -> pd.Series:
    """A float NaN the source returned as a value (PostgreSQL 'NaN'), not a NULL."""
    if values.dtype.kind == "f":
        return pd.Series(False, index=values.index)  # the driver's NULLs became NaN here
    return values.map(lambda v: isinstance(v, float) and v != v)


def _text(column: str, values: pd.Series, problems: Problems) -> pd.Series:
    """``values`` as text: numbers SQLite stored in a text column become their text; bytes
    that are not UTF-8 and NUL characters (which GeoPackage and GeoJSON cannot hold) are
    problems."""
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        raw_bytes = values.map(lambda v: isinstance(v, bytes | bytearray | memoryview))
        problems.add(raw_bytes, f"{column} " + values.map(short)
                     + " is not valid UTF-8 text (fix the text encoding in the master table)")
        values = values.map(lambda v: v if v is None or isinstance(v, str | bytes) else
                            (None if isinstance(v, float) and v != v else str(v)))
        values = values.where(~raw_bytes, None)
    nul = values.str.contains("\x00", regex=False).fillna(False).astype(bool)
    problems.add(nul, pd.Series(f"{column} contains a NUL character (\\x00), which the "
                                "GeoPackage, GeoJSON and CSV outputs cannot hold",
                                index=values.index))
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
            problems.add(frame[column].isna(), pd.Series(f"{column} is NULL (required)",
                                                         index=frame.index))
    cursor = frame["updated_at"]
    if CURSOR_PROBLEM in frame:
        problems.add(frame[CURSOR_PROBLEM].notna(), frame[CURSOR_PROBLEM].fillna(""))
    outside = cursor.notna() & ((cursor < window.start) | (cursor >= window.end))
    problems.add(outside, "updated_at reads as " + cursor.astype(str) + " but the source "
                 "sorts it in the window from " + f"{window.start:%Y-%m-%d %H:%M} UTC (it is "
                 "stored as text in another form)")
    ids = typed.get("id", frame["id"])
    shared = ids.notna() & ids.duplicated(keep=False)
    counts = ids[shared].map(ids[shared].value_counts())
    problems.add(shared, "id " + ids.astype(str) + " is shared by " + counts.astype(str)
                 .reindex(frame.index, fill_value="") + " rows: each parcel row needs its own id")

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
