"""countysync: keeps county GIS staging data in step with the master parcel database.

A ``.env`` file in the working directory (or the file ``COUNTYSYNC_ENV_FILE`` names) is loaded
first, before partitions and resources read their settings; variables already set in the
environment win over it.
"""

import os

from dotenv import find_dotenv, load_dotenv

load_dotenv(os.environ.get("COUNTYSYNC_ENV_FILE") or find_dotenv(usecwd=True))
