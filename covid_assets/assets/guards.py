"""Guards that stop a full refresh from replacing good data with worse data.

They run in the raw asset, before anything is written, so a refused refresh leaves every
table as it was.
"""

import hashlib
from dataclasses import dataclass

import pandas as pd

from covid_assets.assets.tables import SERIES_KEY
from covid_assets.datasets.refusals import ShrinkingSourceError


@dataclass(frozen=True)
class StoredTable:
    """What the base table holds now (row count and (state, outcome) series)."""

    row_count: int
    series: set[tuple[str, str]]


def check_not_shrinking(stored: StoredTable | None, new_rows: pd.DataFrame, max_shrink_fraction: float) -> None:
    """Raise when the new base rows are fewer than allowed, or drop a (state, outcome) series."""
    if stored is None or stored.row_count == 0:
        return
    new_count = len(new_rows)
    floor = stored.row_count * (1 - max_shrink_fraction)
    problems = []
    if new_count < floor:
        problems.append(
            f"the source has {new_count:,} rows, the stored table {stored.row_count:,} "
            f"({1 - new_count / stored.row_count:.1%} fewer; at most {max_shrink_fraction:.0%} allowed)"
        )
    new_series = set(new_rows[SERIES_KEY].drop_duplicates().itertuples(index=False, name=None))
    if lost := sorted(stored.series - new_series):
        shown = ", ".join(f"{state}/{outcome}" for state, outcome in lost[:10])
        more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
        problems.append(f"{len(lost)} (state, outcome) series disappeared: {shown}{more}")
    if problems:
        raise ShrinkingSourceError(
            "refusing to replace covid_19.covid_test_results: "
            + "; ".join(problems)
            + ". Nothing was written. If the source really shrank, re-run with run config "
            "`allow_shrink: true` for the raw asset."
        )


def content_hash(frame: pd.DataFrame) -> str:
    """A fingerprint of the delivered columns and rows (order-sensitive; Socrata order is stable by :id)."""
    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]
