"""Watches the district for a new or re-published release of the current tax year.

Districts publish no feed: the sensor asks the server for each release file's ETag,
Last-Modified and size (a HEAD request, or the file's size and time for ``file://``) and
requests an import of the year when any differs from what was last downloaded. STOPPED by
default, deliberately: it calls an outside server every few hours, which a county turns on
knowingly (Automation in the UI).
"""

from datetime import UTC, datetime

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    sensor,
)

from countysync_assets.assets.appraisal import GROUP
from countysync_assets.resources.appraisal_release import AppraisalRelease
from countysync_assets.resources.release_downloader import ReleaseDownloader

appraisal_job = define_asset_job(
    "appraisal_import", selection=AssetSelection.groups(GROUP),
    description="Download, extract, parse and load a tax year's release of the district.")


@sensor(job=appraisal_job, minimum_interval_seconds=6 * 3600,
        default_status=DefaultSensorStatus.STOPPED,
        description="Import the current tax year's release when the district publishes or "
                    "re-publishes it.")
def appraisal_release_sensor(context: SensorEvaluationContext,
                             appraisal_release: AppraisalRelease,
                             downloader: ReleaseDownloader) -> RunRequest | SkipReason:
    district = appraisal_release.district()
    year = datetime.now(UTC).year
    published, changed = [], []
    for file in district.files:
        signature = downloader.signature(file.url_for(year))
        if signature is None:
            return SkipReason(f"{district.name} has not published {file.name} for {year} yet.")
        published.append(signature)
        if signature != downloader.recorded(appraisal_release.archive(district, file, year)):
            changed.append(file.name)
    if not changed:
        return SkipReason(f"The {year} release is unchanged since it was downloaded.")
    context.log.info(f"{year}: new or re-published: {', '.join(changed)}.")
    return RunRequest(partition_key=str(year), run_key=f"{year}:{'|'.join(published)}")
