"""The source sensor: new data lands within the hour instead of at the next 06:00 tick.

Every `COVID_SOURCE_POLL_MINUTES` (60) it observes the COVID source (the two small requests the runs
already make), records the observation and the publisher-staleness evaluation, and, when the data
version differs from the one it saw last, asks for a `refresh_warehouse` run keyed by that version:
one release gives exactly one run, whatever the ticks and restarts. The sensor itself is the one
every declared dataset gets (`datasets/component.py`, `dataset_sensor`); here it gets its name, its
poll interval and its on/off setting, and the job of all eight tables. The daily schedule stays the
backstop.

Silence it in the UI (Automation, `socrata_source_sensor`), with `dagster sensor stop
socrata_source_sensor`, or start deployments with `COVID_SOURCE_SENSOR_ENABLED=false`.
"""

from __future__ import annotations

from dagster import SensorDefinition

from covid_assets.assets.tables import COVID
from covid_assets.datasets.component import dataset_sensor
from covid_assets.settings import env_float

POLL_ENV = "COVID_SOURCE_POLL_MINUTES"
DEFAULT_POLL_MINUTES = 60.0


def source_sensor(job) -> SensorDefinition:
    minutes = env_float(POLL_ENV, DEFAULT_POLL_MINUTES, minimum=1 / 60, maximum=7 * 24 * 60)
    return dataset_sensor(COVID, job, minutes, name="socrata_source_sensor", poll_setting=f" ({POLL_ENV})")
