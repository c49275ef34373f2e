"""When a county-wide asset rebuilds itself after the runs it depends on."""

from dagster import AutomationCondition


def once_settled(updated: AutomationCondition) -> AutomationCondition:
    """``updated`` (some dependencies were materialized) since the asset last handled it, and
    only once neither it nor its dependencies are running: one rebuild after a sync, not one
    per window or a rebuild that reads half-written outputs."""
    return (updated.since_last_handled() & ~AutomationCondition.in_progress()
            & ~AutomationCondition.any_deps_in_progress())
