"""The two refusals of a delivery, shared by the COVID pipeline and every declared dataset.

Both are raised before anything is written (or before the run's transaction commits), and their
messages name what was wrong precisely enough to act on: callers catch them to fail the run
without a retry (a refusal never goes away by itself).
"""

__all__ = ["InvalidRowsError", "ShrinkingSourceError"]


class InvalidRowsError(ValueError):
    """Raised with a message naming how many rows are bad and showing the first few."""


class ShrinkingSourceError(ValueError):
    """The source lost more rows (or whole series) than a full refresh may silently accept."""
