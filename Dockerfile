# One image for the three Dagster services of docker-compose.yml (code server, webserver, daemon).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

WORKDIR /opt/dagster/app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them; at the
# versions pinned in docker/constraints.txt (docker/refresh-constraints.sh), so every build is the same.
COPY pyproject.toml docker/constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt -c constraints.txt

# Then the code location itself.
COPY README.md ./
COPY covid_assets ./covid_assets
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 dagster \
    && mkdir -p "$DAGSTER_HOME/storage" \
    && chown -R dagster "$DAGSTER_HOME"

# The instance (daemon scheduler, run queue, monitoring, retries) with the deployment's Postgres
# storage appended, and the workspace (the code server).
COPY dagster.yaml workspace.yaml docker/dagster-storage.yaml /opt/dagster/dagster_home/
RUN cat /opt/dagster/dagster_home/dagster-storage.yaml >> /opt/dagster/dagster_home/dagster.yaml \
    && rm /opt/dagster/dagster_home/dagster-storage.yaml
COPY docker/refuse-example-passwords.sh /usr/local/bin/
USER dagster
WORKDIR /opt/dagster/dagster_home
EXPOSE 3000 4000
# Every service refuses to start with a password left at the example of .env.example.
ENTRYPOINT ["/bin/sh", "/usr/local/bin/refuse-example-passwords.sh"]
