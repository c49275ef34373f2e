"""countysync: keeps county GIS staging data in step with the master parcel database.

A ``.env`` file in the working directory is loaded first, before partitions and resources read
their settings; variables already set in the environment win over it.
"""

from dotenv import find_dotenv, load_dotenv

load_dotenv(find_dotenv(usecwd=True))
