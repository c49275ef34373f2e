"""The source resource as configured by the environment (``.env`` is loaded first).

Every string setting is passed as a Dagster ``EnvVar``, so the UI shows the variable's name,
never its value: the password and a URL holding one stay out of the UI, logs and run storage.
Numbers and flags hold no secret and are passed as values, checked when the code loads.
"""

import os

from dagster import EnvVar

from countysync_assets.resources.master_parcels_source import MasterParcelsSource

# field of MasterParcelsSource -> environment variable
STRING_SETTINGS = {
    "url": "COUNTYSYNC_SOURCE_URL",
    "host": "COUNTYSYNC_SOURCE_HOST",
    "database": "COUNTYSYNC_SOURCE_DATABASE",
    "user": "COUNTYSYNC_SOURCE_USER",
    "password": "COUNTYSYNC_SOURCE_PASSWORD",
    "odbc_driver": "COUNTYSYNC_SOURCE_ODBC_DRIVER",
    "demo_path": "COUNTYSYNC_DEMO_SOURCE_PATH",
    "table": "COUNTYSYNC_SOURCE_TABLE",
    "db_schema": "COUNTYSYNC_SOURCE_SCHEMA",
    "key_column": "COUNTYSYNC_SOURCE_KEY_COLUMN",
    "cursor_column": "COUNTYSYNC_SOURCE_CURSOR_COLUMN",
    "geometry_column": "COUNTYSYNC_SOURCE_GEOMETRY_COLUMN",
    "source_timezone": "COUNTYSYNC_SOURCE_TIMEZONE",
}
INT_SETTINGS = {
    "port": "COUNTYSYNC_SOURCE_PORT",
    "srid": "COUNTYSYNC_SOURCE_SRID",
    "batch_size": "COUNTYSYNC_SOURCE_BATCH_SIZE",
}
BOOL_SETTINGS = {
    "encrypt": "COUNTYSYNC_SOURCE_ENCRYPT",
    "trust_server_certificate": "COUNTYSYNC_SOURCE_TRUST_SERVER_CERTIFICATE",
}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _flag(variable: str) -> bool:
    value = os.environ[variable].strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"{variable}={os.environ[variable]!r} is not a yes/no value; use "
                         "true or false.")
    return value in _TRUE


def whole_number(variable: str, default: int | None = None) -> int:
    """The whole number in environment variable ``variable`` (``default`` if unset)."""
    value = os.environ.get(variable) or str(default)
    if not value.strip().isdigit():
        raise ValueError(f"{variable}={value!r} is not a whole number.")
    return int(value)


def source_from_env(as_env_vars: bool = True) -> MasterParcelsSource:
    """A ``MasterParcelsSource`` with each setting that is present in the environment.

    For Dagster the settings stay ``EnvVar`` references, resolved at run time; outside Dagster
    (the CLI) pass ``as_env_vars=False`` to get a resource that can be used at once.
    """
    settings: dict = {}
    for field, variable in STRING_SETTINGS.items():
        if os.environ.get(variable):
            settings[field] = EnvVar(variable) if as_env_vars else os.environ[variable]
    for field, variable in INT_SETTINGS.items():
        if os.environ.get(variable):
            # plain numbers, not EnvVar: no secret, and checked (batch size > 0) at load time
            settings[field] = whole_number(variable)
    for field, variable in BOOL_SETTINGS.items():
        if os.environ.get(variable):
            settings[field] = _flag(variable)
    return MasterParcelsSource(**settings)
