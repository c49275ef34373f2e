"""Dagster resources: the master parcel database."""
