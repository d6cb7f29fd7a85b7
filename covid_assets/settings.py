"""Operational settings read from the environment (`.env.example` lists them), checked on load.

A deployment changes how often things happen here, never where anything connects: those targets
and secrets are read by the resources themselves (see resources.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def env_float(
    name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None, environ: Mapping[str, str] | None = None
) -> float:
    """The variable as a number within [minimum, maximum]; unset or empty = `default`."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value != value or value < minimum or (maximum is not None and value > maximum):  # NaN fails too
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"at least {minimum:g}"
        raise ValueError(f"{name}={raw!r} must be {bound}")
    return value


def env_flag(name: str, default: bool = True, environ: Mapping[str, str] | None = None) -> bool:
    """On unless the variable says 0/false/no/off (any case); unset or empty = `default`."""
    raw = (os.environ if environ is None else environ).get(name, "").strip().lower()
    return default if not raw else raw not in FALSE_WORDS


def env_knobs(knobs: Mapping[str, tuple[str, Callable[[str], object]]]) -> dict[str, object]:
    """Resource knob -> its variable, converted; unset or empty variables are left out (the default holds)."""
    values = {}
    for name, (variable, convert) in knobs.items():
        if raw := os.getenv(variable, "").strip():
            try:
                values[name] = convert(raw)
            except ValueError:
                raise ValueError(f"{variable}={raw!r} is not a valid {convert.__name__}") from None
    return values
