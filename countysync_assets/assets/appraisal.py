"""The appraisal-district pipeline: one asset per stage, partitioned by tax year.

``appraisal_archives`` (download: retried, resumed, verified, skipped when unchanged) ->
``appraisal_files`` (safe extraction, published by rename) -> ``appraisal_parsed`` (each member
parsed by its layout and staged in the database, batch by batch with checkpoints; rejects with
their reasons) -> ``property_records``, ``owners``, ``building_details``, ``extra_features`` (the
staged release merged into the tables in one transaction, with their checks). Big data passes
between stages as files on disk and staged rows, never as a frame through Dagster.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    Backoff,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TimeWindowPartitionsDefinition,
    asset,
    multi_asset,
)

from countysync_assets.appraisal.archives import ArchiveError, extract
from countysync_assets.appraisal.records import LayoutMismatch
from countysync_assets.appraisal.staging import MemberFile, stage_files
from countysync_assets.appraisal.tables import AppraisalImportError
from countysync_assets.resources.appraisal_release import AppraisalDatabase, AppraisalRelease
from countysync_assets.resources.district_config import TABLES, District, DistrictConfigError
from countysync_assets.resources.release_downloader import (
    DownloadError,
    ReleaseDownloader,
    recorded_sha256,
)

GROUP = "appraisal"
# tax years; the current year is open (districts publish and re-publish during the year)
TAX_YEARS = TimeWindowPartitionsDefinition(cron_schedule="0 0 1 1 *", start="2000", fmt="%Y",
                                           end_offset=1)
# network and server trouble that outlasts the downloader's own retries: try the step again
RETRY = RetryPolicy(max_retries=3, delay=60, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
EXTRACTED_FROM = ".extracted-from.sha256"  # in an extracted folder: the archive's SHA-256


@contextmanager
def _fails_with_its_reason() -> Iterator[None]:
    """A bad district file, archive or layout fails the step with its own one-line message
    (what the UI and the CLI show, not a wrapped traceback) and is not retried: trying the
    same release again cannot help."""
    try:
        yield
    except (DistrictConfigError, ArchiveError, LayoutMismatch, AppraisalImportError) as err:
        raise Failure(str(err), allow_retries=False) from None


def _year(context: AssetExecutionContext, district: District) -> int:
    """The partition's tax year, refused if the district published nothing that year."""
    year = int(context.partition_key)
    if year < district.first_year:
        raise Failure(f"{district.name} publishes releases from {district.first_year}; "
                      f"{year} has none. Choose a later tax year.", allow_retries=False)
    return year


@asset(group_name=GROUP, partitions_def=TAX_YEARS, retry_policy=RETRY, kinds={"http"},
       description="The district's release files for the tax year, downloaded and verified.")
def appraisal_archives(context: AssetExecutionContext, appraisal_release: AppraisalRelease,
                       downloader: ReleaseDownloader) -> MaterializeResult:
    with _fails_with_its_reason():
        district = appraisal_release.district()
    year = _year(context, district)
    started = time.monotonic()
    try:
        done = downloader.fetch_all(
            [(f.name, f.url_for(year), appraisal_release.archive(district, f, year),
              f.sha256.get(year)) for f in district.files], context.log.info)
    except DownloadError as err:  # the step is retried later only if trying again can help
        raise Failure(str(err), allow_retries=err.transient) from None
    seconds = time.monotonic() - started
    moved = sum(d.bytes for d in done if not d.skipped)
    return MaterializeResult(metadata={
        "files": MetadataValue.md("\n".join(
            f"- `{d.name}`: {d.bytes:,} bytes, SHA-256 `{d.sha256}`"
            + (" (unchanged, not downloaded)" if d.skipped else f" ({d.seconds:.1f} s)")
            for d in done)),
        "bytes": sum(d.bytes for d in done), "bytes_downloaded": moved,
        "unchanged_files": sum(d.skipped for d in done), "seconds": round(seconds, 2),
        "mb_per_second": round(moved / max(seconds, 1e-6) / 1e6, 2),
        "release_sha256": appraisal_release.digest(district, year)})


@asset(group_name=GROUP, partitions_def=TAX_YEARS, deps=[appraisal_archives],
       description="The members the district file names, extracted safely from the archives.")
def appraisal_files(context: AssetExecutionContext,
                    appraisal_release: AppraisalRelease) -> MaterializeResult:
    district = appraisal_release.district()
    year = _year(context, district)
    listed, extracted = [], 0
    for file in district.files:
        archive = appraisal_release.archive(district, file, year)
        digest = recorded_sha256(archive)
        folder = appraisal_release.extracted(district, file, year)
        marker = folder / EXTRACTED_FROM
        if not (marker.exists() and marker.read_text() == digest):
            with _fails_with_its_reason():
                extract(archive, file.kind, file.patterns, folder, appraisal_release.limits())
            marker.write_text(digest)
            extracted += 1
        else:
            context.log.info(f"{file.name}: already extracted from this archive.")
        listed += [f"{p.name} ({p.stat().st_size:,} bytes)" for p in sorted(folder.iterdir())
                   if p.name != EXTRACTED_FROM]
    return MaterializeResult(metadata={"members": MetadataValue.md(
        "\n".join(f"- {m}" for m in listed)), "archives_extracted": extracted})


@asset(group_name=GROUP, partitions_def=TAX_YEARS, deps=[appraisal_files],
       description="Each member parsed by its layout and staged batch by batch, with "
                   "checkpoints; unusable records go to the rejects table with their reason.")
def appraisal_parsed(context: AssetExecutionContext, appraisal_release: AppraisalRelease,
                     appraisal_db: AppraisalDatabase) -> MaterializeResult:
    district = appraisal_release.district()
    year = _year(context, district)
    tables = appraisal_db.tables(district)
    state = tables.begin_import(year, appraisal_release.digest(district, year))
    if state is None:
        context.log.info(f"The {year} release is the one already loaded: nothing to import.")
        return MaterializeResult(metadata={"unchanged_release": True})
    context.log.info(f"{'Resuming' if state.resumed else 'Starting'} import {state.import_id} "
                     f"of {district.name} {year}.")
    pending = []
    for file, member, layout in district.members():
        offset, line, done = tables.checkpoint(state.import_id, member.path)
        if done:
            continue
        if offset:
            context.log.info(f"{member.path}: resuming after line {line:,}.")
        pending.append(MemberFile(appraisal_release.extracted(district, file, year) / member.path,
                                  member.path, member.table, layout, offset, line))
    with _fails_with_its_reason():
        staged = stage_files(tables.engine.url.render_as_string(hide_password=False), district,
                             state.import_id, year, pending, appraisal_release.block_bytes)
    summary = {}
    for name, done in staged.items():
        tables.finish_file(state.import_id, name)
        summary[name] = {"rows": done.rows, "rejects": done.rejects,
                         "seconds": round(done.seconds, 2),
                         "rows_per_second": round(done.rows / max(done.seconds, 1e-6))}
        context.log.info(f"{name}: {done.rows:,} records staged, {done.rejects:,} rejects, "
                         f"{done.seconds:.1f} s.")
    return MaterializeResult(metadata={
        "import_id": state.import_id, "resumed": state.resumed,
        "rows": sum(s["rows"] for s in summary.values()),
        "rejects": sum(s["rejects"] for s in summary.values()),
        "files": MetadataValue.json(summary)})


def _checks(table: str) -> list[AssetCheckSpec]:
    return [AssetCheckSpec("keys_unique", asset=table, description="one row per key and year"),
            AssetCheckSpec("required_present", asset=table,
                           description="no required field is empty"),
            AssetCheckSpec("rows_accounted", asset=table, description=(
                "records read = rejected + duplicates + loaded: no record lost"))]


@multi_asset(
    specs=[AssetSpec(t, group_name=GROUP, deps=["appraisal_parsed"],
                     description=f"The district's {t.replace('_', ' ')}, current for each tax "
                                 "year; rows gone from a full release are marked removed.")
           for t in TABLES],
    check_specs=[c for t in TABLES for c in _checks(t)],
    partitions_def=TAX_YEARS)
def appraisal_tables(context: AssetExecutionContext, appraisal_release: AppraisalRelease,
                     appraisal_db: AppraisalDatabase):
    """Merge the staged release into every table in one transaction, then check each table."""
    district = appraisal_release.district()
    year = _year(context, district)
    tables = appraisal_db.tables(district)
    pending = tables.newest(year, "staging")
    counts = tables.merge(pending, year) if pending is not None else {}
    loaded = pending if pending is not None else tables.newest(year, "loaded")
    figures = tables.figures(loaded, year) if loaded is not None else {}
    for table in TABLES:
        if table not in figures:
            yield MaterializeResult(asset_key=table, metadata={
                "loaded": False, "note": f"{district.name} has no file for this table"})
            for spec in _checks(table):
                yield AssetCheckResult(asset_key=table, check_name=spec.name, passed=True,
                                       metadata={"note": "not loaded by this district"})
            continue
        f = figures[table]
        kept = f["staged"] - f.get("duplicates", 0)
        yield MaterializeResult(asset_key=table, metadata={
            "import_id": loaded, "changed": table in counts,
            "dagster/row_count": f["current_rows"], "records_read": f["lines"],
            "rejects": f["reject_lines"], **{k: f[k] for k in (
                "duplicates", "inserted", "updated", "unchanged", "removed") if k in f}})
        yield AssetCheckResult(asset_key=table, check_name="keys_unique",
                               passed=f["duplicate_keys"] == 0,
                               metadata={"duplicate_keys": f["duplicate_keys"]})
        yield AssetCheckResult(asset_key=table, check_name="required_present",
                               passed=f["required_missing"] == 0,
                               metadata={"rows_missing_a_required_field": f["required_missing"]})
        accounted = f["lines"] - f["reject_lines"] - f.get("duplicates", 0)
        loaded_rows = f["current_rows"] if f["full_release"] else kept
        yield AssetCheckResult(
            asset_key=table, check_name="rows_accounted", passed=accounted == loaded_rows,
            severity=AssetCheckSeverity.ERROR,
            metadata={"records_read": f["lines"], "rejected": f["reject_lines"],
                      "duplicates": f.get("duplicates", 0), "loaded": loaded_rows})
