"""The dagster-pandas types checked on every batch of working and stats before it is written:
the last guard if a row check ever let a broken key or figure through."""

import pandas as pd

from countysync_assets.assets.frame_types import StatsFrame, WorkingFrame, check_frame


def frame(**columns) -> pd.DataFrame:
    base = {"id": [1, 2], "parcel_id": ["P-1", "P-2"], "acres": [1.5, 0.25],
            "assessed_value": [100_000, 250_000],
            "updated_at": pd.to_datetime(["2026-05-28", "2026-05-29"], utc=True)}
    return pd.DataFrame({**base, **columns})


def test_good_batches_pass():
    assert check_frame(WorkingFrame, frame()).success
    assert check_frame(StatsFrame, frame()).success


def test_a_duplicate_key_a_missing_parcel_id_or_a_negative_figure_fails_with_the_reason():
    duplicate = check_frame(WorkingFrame, frame(id=[7, 7]))
    assert not duplicate.success and "unique" in duplicate.description.lower()
    missing = check_frame(WorkingFrame, frame(parcel_id=["P-1", None]))
    assert not missing.success and "parcel_id" in missing.description
    negative = check_frame(StatsFrame, frame(acres=[1.0, -2.0]))
    assert not negative.success and "acres" in negative.description
