"""countysync: keeps county GIS staging data in step with the master parcel database.

A ``.env`` file in the working directory (or the file ``COUNTYSYNC_ENV_FILE`` names) is loaded
first, before partitions and resources read their settings; variables already set in the
environment win over it.

The beta and preview warnings of the Dagster features countysync chose knowingly
(dagster-pandas' typed frames, an asset's backfill policy, checks per partition, the log
file configured in dagster.yaml) are silenced: repeated in every process and run, they
buried the log lines a county's staff must read. Other warnings still show.
"""

import os
import warnings

from dotenv import find_dotenv, load_dotenv

load_dotenv(os.environ.get("COUNTYSYNC_ENV_FILE") or find_dotenv(usecwd=True))
# matched by message, so that importing the package (as the appraisal staging process does)
# does not import Dagster
warnings.filterwarnings("ignore", message=(
    r"(Class `PandasColumn`|Function `create_dagster_pandas_dataframe_type`"
    r"|Parameter `backfill_policy`"
    r"|Specifying a partitions_def on an AssetCheckSpec"
    r"|Handling yaml-defined logging configuration"
    r"|Parameter `include_sources`)"))  # Dagster's own asset selection, under `dg launch`
