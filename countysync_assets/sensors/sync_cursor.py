"""The change sensor's cursor, stored by Dagster as JSON.

It holds the high-water mark at the source's full precision (text, so SQL Server's 100 ns
ticks survive; a float or a millisecond timestamp would not), the key of the row at the mark
(ties on equal timestamps), a digest per partition of the rows in the look-back window (to
notice late-committing rows behind the mark), and the runs requested but not yet succeeded.
"""

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

CURSOR_VERSION = 1


@dataclass
class PendingRun:
    """A requested run that has not succeeded yet: retried until it does."""

    first: str  # first partition key
    last: str  # last partition key (== first for a single partition)
    attempt: int
    requested_at: float  # unix seconds


@dataclass
class SyncCursor:
    watermark: str | None = None  # newest cursor value synced, as the source has it
    watermark_utc: str | None = None  # the same instant in UTC (microseconds), ISO 8601
    watermark_id: str | int | None = None  # key of the row at the watermark
    digests: dict[str, str] = field(default_factory=dict)  # partition -> look-back digest
    pending: dict[str, PendingRun] = field(default_factory=dict)  # run key -> request
    source_rows: int | None = None  # rows in the source table at the last tick
    unplaced_rows: int | None = None  # rows no window can hold, at the last tick
    generation: int = 0  # times the sensor started over (a reload): keeps run keys new
    lookback_rows: int = 0  # rows in the look-back window at the last tick

    def run_key(self, text: str) -> str:
        """A run key for ``text``, new for each generation (the daemon skips a key it ran)."""
        return f"{text}~{self.generation}" if self.generation else text

    @classmethod
    def from_json(cls, text: str | None) -> "SyncCursor":
        """The cursor Dagster stored; an empty one (new or reset in the UI) syncs everything."""
        if not text:
            return cls()
        data = json.loads(text)
        if data.get("version") != CURSOR_VERSION:
            raise ValueError(
                f"The sensor cursor has format version {data.get('version')!r}; this countysync "
                f"reads version {CURSOR_VERSION}. Reset the cursor in the Dagster UI (Sensors -> "
                "source_changes_sensor -> Set cursor value, empty) to re-sync from the start."
            )
        pending = {key: PendingRun(**run) for key, run in data.get("pending", {}).items()}
        return cls(data.get("watermark"), data.get("watermark_utc"), data.get("watermark_id"),
                   data.get("digests", {}), pending, data.get("source_rows"),
                   data.get("unplaced_rows"), data.get("generation", 0),
                   data.get("lookback_rows", 0))

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = CURSOR_VERSION
        return json.dumps(data, sort_keys=True)

    @property
    def watermark_time(self) -> datetime | None:
        """The watermark as a UTC datetime (microseconds), for time-window arithmetic."""
        return datetime.fromisoformat(self.watermark_utc) if self.watermark_utc else None
