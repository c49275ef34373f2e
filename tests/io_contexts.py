"""Real Dagster IO manager contexts for a partitioned, keyed asset (as the assets declare)."""

from dagster import PartitionKeyRange, build_input_context, build_output_context, build_resources

from countysync_assets.assets.asset_metadata import storage_metadata
from countysync_assets.partitions import PARTITIONS

COLUMNS = {"id": "integer: key", "name": "string: a value", "updated_at": "timestamp: cursor"}
# No resources, built once: given none, every context builds them again, with a Dagster
# instance of its own (~25 ms; most of a property test's time, which makes hundreds)
NO_RESOURCES = build_resources({}).__enter__()  # held for the whole session


def output_context(asset: str = "things", first: str = "2026-05-28", last: str | None = None,
                   metadata: dict | None = None):
    """The context Dagster gives ``handle_output`` for partitions first..last of ``asset``."""
    return build_output_context(
        asset_key=asset,
        asset_partitions_def=PARTITIONS,
        asset_partition_key_range=PartitionKeyRange(first, last or first),
        definition_metadata=metadata or storage_metadata(COLUMNS, ["sqlite"]),
        resources=NO_RESOURCES,
    )


def input_context(asset: str = "things", first: str = "2026-05-28", last: str | None = None,
                  metadata: dict | None = None, input_metadata: dict | None = None):
    """The context Dagster gives ``load_input`` for partitions first..last of ``asset``
    (``metadata``: the asset's; ``input_metadata``: the reading asset's, on its input)."""
    upstream = output_context(asset, first, last, metadata)
    return build_input_context(
        asset_key=asset,
        asset_partitions_def=PARTITIONS,
        asset_partition_key_range=PartitionKeyRange(first, last or first),
        upstream_output=upstream,
        definition_metadata=input_metadata,
    )


def logged(context) -> dict:
    """The output metadata an IO manager logged, as plain values."""
    return {k: getattr(v, "value", v) for k, v in context.get_logged_metadata().items()}
