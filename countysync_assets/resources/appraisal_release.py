"""Where a district's release lives on this machine, and the database its tables load into.

``AppraisalRelease`` names the district file and the working folder (downloads and
extractions, ``<work_dir>/<district>/<year>/``); ``AppraisalDatabase`` opens the target
database: a SQLite file per district under the export folder by default, or the PostgreSQL
database of ``COUNTYSYNC_APPRAISAL_DB_URL`` (a schema per district). The URL is passed as an
``EnvVar``, so a password in it never reaches the UI or the logs.
"""

import hashlib
from functools import cache
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from countysync_assets.appraisal.archives import Limits
from countysync_assets.appraisal.records import BLOCK_BYTES
from countysync_assets.appraisal.tables import AppraisalTables
from countysync_assets.resources.district_config import (
    PACKAGED_DISTRICTS,
    District,
    ReleaseFile,
    load_district,
)
from countysync_assets.resources.release_downloader import recorded_sha256


class AppraisalRelease(ConfigurableResource):
    """The district file and the folder its downloads and extracted files go into."""

    district_file: str = Field(default=str(PACKAGED_DISTRICTS / "hcad.yaml"))
    work_dir: str = "data/appraisal"
    max_extract_bytes: int = Field(default=Limits.max_bytes, gt=0)
    max_compression_ratio: float = Field(default=Limits.max_ratio, gt=1)
    block_bytes: int = Field(default=BLOCK_BYTES, ge=1024, description=(
        "bytes of a file parsed and staged per batch (one checkpoint each)"))

    def district(self) -> District:
        return load_district(self.district_file)

    def folder(self, district: District, year: int) -> Path:
        return Path(self.work_dir) / district.district / str(year)

    def archive(self, district: District, file: ReleaseFile, year: int) -> Path:
        """Where a release file is downloaded to: ``archives/<name>.<kind>``."""
        return self.folder(district, year) / "archives" / f"{file.name}.{file.kind}"

    def extracted(self, district: District, file: ReleaseFile, year: int) -> Path:
        """The folder a release file's members are extracted into."""
        return self.folder(district, year) / "files" / file.name

    def limits(self) -> Limits:
        return Limits(max_bytes=self.max_extract_bytes, max_ratio=self.max_compression_ratio)

    def digest(self, district: District, year: int) -> str:
        """One SHA-256 for the release: of its archives' SHA-256s, as the downloads recorded."""
        digests = [recorded_sha256(self.archive(district, f, year)) for f in district.files]
        return hashlib.sha256(" ".join(digests).encode()).hexdigest()


@cache
def _engine(url: str) -> Engine:
    """One engine (one connection pool) per database for the life of the process."""
    return create_engine(url, pool_pre_ping=True)


class AppraisalDatabase(ConfigurableResource):
    """The database the appraisal tables load into (SQLite by default, or PostgreSQL)."""

    url: str | None = Field(default=None, description="SQLAlchemy URL; unset: a SQLite file "
                            "per district under export_dir/appraisal")
    export_dir: str = "exports"

    def tables(self, district: District) -> AppraisalTables:
        """The district's tables, created where missing."""
        if self.url:
            try:
                url = make_url(self.url)
            except ArgumentError:
                raise ValueError("COUNTYSYNC_APPRAISAL_DB_URL is not a SQLAlchemy URL; use e.g. "
                                 "postgresql+psycopg://user@host/dbname") from None
            if url.get_backend_name() not in ("sqlite", "postgresql"):
                raise ValueError(f"the appraisal tables load into SQLite or PostgreSQL, not "
                                 f"{url.get_backend_name()}; set COUNTYSYNC_APPRAISAL_DB_URL.")
        else:
            path = Path(self.export_dir) / "appraisal" / f"{district.district}.sqlite"
            path.parent.mkdir(parents=True, exist_ok=True)
            url = make_url(f"sqlite:///{path}")
        tables = AppraisalTables(_engine(url.render_as_string(hide_password=False)), district)
        tables.create()
        return tables
