# One image for the three Dagster services (code server, webserver, daemon).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

WORKDIR /opt/dagster/app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY covid_assets ./covid_assets
RUN pip install . && useradd --create-home --uid 1000 dagster \
    && mkdir -p "$DAGSTER_HOME" && chown dagster "$DAGSTER_HOME"

COPY dagster.yaml workspace.yaml "$DAGSTER_HOME"/
USER dagster
WORKDIR /opt/dagster/dagster_home
