"""The operational duties of a load step, the same for every dataset: why a run stops, and what it records.

Only the load step knows why a run stops, so it does two things no other step can:

* a run that fails on a transient source error (HTTP 5xx/429, a timeout, a dropped connection) asks
  Dagster's run retries for one more attempt (`ask_for_one_retry`), which waits
  `COVID_RETRY_DELAY_S` before asking the source again (`wait_if_retrying`); a refusal (bad rows,
  a shrinking source, a failed check) is never retried;
* a run that finds the source unchanged writes nothing and records a confirmation of every table
  of its job (`confirm_unchanged`, see freshness.py), the evidence of the last load carried
  forward on the raw table, and tags the run `SOURCE_UNCHANGED_TAG`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from dagster import AssetExecutionContext, AssetKey, Failure

from covid_assets.freshness import confirmation_materializations
from covid_assets.settings import env_float
from covid_assets.sources.socrata.errors import SocrataError

__all__ = [
    "RETRY_DELAY_ENV",
    "RETRY_NUMBER_TAG",
    "RETRY_REASON_TAG",
    "RETRY_TAGS",
    "SOURCE_UNCHANGED_TAG",
    "TRANSIENT_SOURCE_ERROR",
    "ask_for_one_retry",
    "confirm_unchanged",
    "job_tables",
    "source_failure",
    "wait_if_retrying",
]

SOURCE_UNCHANGED_TAG = "covid/source_unchanged"
# Run retries (dagster.yaml `run_retries`) retry nothing by default; a run that failed on a transient
# source error carries these tags, which Dagster reads when it records the failure, so exactly that
# run is retried once. The retry inherits them, and with them the reason it waits first.
RETRY_REASON_TAG = "covid/retry_reason"
TRANSIENT_SOURCE_ERROR = "transient_source_error"
RETRY_TAGS = {
    "dagster/max_retries": "1",
    "dagster/retry_on_asset_or_op_failure": "true",
    RETRY_REASON_TAG: TRANSIENT_SOURCE_ERROR,
}
RETRY_NUMBER_TAG = "dagster/retry_number"  # set by Dagster on the runs its retries launch
RETRY_DELAY_ENV = "COVID_RETRY_DELAY_S"
DEFAULT_RETRY_DELAY_S = 300.0
OFFLINE_HINT = (
    " No complete answer came back from the API: check the network, or load a local export instead "
    "(SOCRATA_SOURCE_FILE, or SOCRATA_OFFLINE=1 for the declared exports: `./dev offline`)."
)


def source_failure(context: AssetExecutionContext, error: SocrataError) -> Failure:
    """The run's failure for a source error, with a hint when no answer came back; a transient one asks for a retry."""
    hint = OFFLINE_HINT if error.status is None and error.transient else ""
    if error.transient:
        ask_for_one_retry(context)
    return Failure(description=f"{error}{hint}", metadata={"transient": error.transient})


def ask_for_one_retry(context: AssetExecutionContext) -> None:
    """Tag this run so that Dagster's run retries re-execute it once (and a retry, not again)."""
    if context.run.tags.get(RETRY_NUMBER_TAG) is None:
        context.instance.add_run_tags(context.run_id, RETRY_TAGS)
        context.log.warning("The source failed with a transient error: Dagster will retry this run once.")


def wait_if_retrying(context: AssetExecutionContext) -> None:
    """A retry of a transient source failure waits before asking the source again (the delay run retries lack)."""
    tags = context.run.tags
    if tags.get(RETRY_NUMBER_TAG) is None or tags.get(RETRY_REASON_TAG) != TRANSIENT_SOURCE_ERROR:
        return
    delay_s = env_float(RETRY_DELAY_ENV, DEFAULT_RETRY_DELAY_S, maximum=3600)
    context.log.info(
        f"Automatic retry of run {context.run.parent_run_id}, which failed on a transient source error: "
        f"waiting {delay_s:g} s ({RETRY_DELAY_ENV}) before asking the source again."
    )
    time.sleep(delay_s)


def job_tables(context: AssetExecutionContext, first: Sequence[AssetKey]) -> list[AssetKey]:
    """The tables the run's job materializes: `first` (the raw and base table), then the others it selects."""
    layer = context.job_def.asset_layer
    others = sorted(
        (key for key in layer.selected_asset_keys if key not in first and layer.asset_graph.get(key).is_materializable),
        key=lambda key: key.to_user_string(),
    )
    return [*first, *others]


def confirm_unchanged(
    context: AssetExecutionContext,
    evidence_text: str,
    evidence: Mapping[str, object],
    *,
    tables: Sequence[AssetKey],
    raw_key: AssetKey,
    source_key: AssetKey,
) -> None:
    """Write nothing, skip downstream, and record for every table that it still matches the source."""
    message = (
        f"Source unchanged since the last load ({evidence_text}): no table rewritten, downstream assets skipped; "
        "every table is confirmed current."
    )
    context.log.info(message)
    events = confirmation_materializations(
        context.instance, context.run_id, message, evidence, table_keys=tables, raw_key=raw_key, source_key=source_key
    )
    for event in events:
        context.log_event(event)
    context.instance.add_run_tags(context.run_id, {SOURCE_UNCHANGED_TAG: "true"})
