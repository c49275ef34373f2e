"""countysync's appraisal import: one Dagster run of the appraisal assets for the benchmark's
tax year, on a real instance (the case's ``$DAGSTER_HOME``), as ``countysync appraisal-import``
runs it."""

from pathlib import Path

from dagster import DagsterInstance, materialize

from benchmarks.appraisal import YEAR
from countysync_assets.definitions import appraisal_assets
from countysync_assets.resources.appraisal_release import AppraisalDatabase, AppraisalRelease
from countysync_assets.resources.release_downloader import ReleaseDownloader


def run(step: str, workdir: Path, district_file: str, url: str) -> None:
    resources = {"appraisal_release": AppraisalRelease(district_file=district_file,
                                                       work_dir=str(workdir / "appraisal")),
                 "appraisal_db": AppraisalDatabase(url=url),
                 "downloader": ReleaseDownloader()}
    result = materialize(appraisal_assets, partition_key=str(YEAR), resources=resources,
                         instance=DagsterInstance.get())
    assert result.success, f"countysync appraisal import into {step} failed"
