"""A code location with one asset that does nothing: what any Dagster run costs before its own work.

Measurement 6c runs it exactly as 6a and 6b run the COVID job (the same CLI, instance and executor),
so 6b minus 6c is what the unchanged COVID run adds to Dagster's floor.
"""

import dagster as dg

FLOOR_JOB = "floor_run"


@dg.asset
def nothing() -> None:
    """Writes nothing, reads nothing."""


defs = dg.Definitions(
    assets=[nothing],
    jobs=[dg.define_asset_job(FLOOR_JOB, selection=[nothing])],
    executor=dg.in_process_executor,  # as the COVID code location
)
