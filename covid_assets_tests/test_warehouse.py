"""Where the warehouse is: from the deployment's environment only, and safe whatever the password holds."""

from __future__ import annotations

import psycopg
import pytest

from covid_assets.storage.warehouse import SessionLimits, WarehouseConnectError, configured_database_url, connect

AWKWARD_PASSWORD = "p%40ss@w/rd:' \\ x"  # a % escape, @, /, :, a quote, a backslash and a space


def parts_of(url: str, password: str) -> dict[str, str]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return {
        "COVID_DB_HOST": info["host"],
        "COVID_DB_PORT": str(info.get("port") or ""),
        "COVID_DB_NAME": info["dbname"],
        "COVID_DB_USER": info["user"],
        "COVID_DB_PASSWORD": password,
    }


def test_the_warehouse_by_parts_keeps_an_awkward_password_intact(warehouse_url: str) -> None:
    built = configured_database_url(parts_of(warehouse_url, AWKWARD_PASSWORD))
    assert psycopg.conninfo.conninfo_to_dict(built)["password"] == AWKWARD_PASSWORD
    with psycopg.connect(built) as conn:  # and it reaches the same database
        assert conn.execute("SELECT current_database()").fetchone()[0] == psycopg.conninfo.conninfo_to_dict(warehouse_url)["dbname"]


def test_covid_db_url_wins_and_no_configuration_means_embedded() -> None:
    assert configured_database_url({"COVID_DB_URL": "postgresql+psycopg://a@h/db", "COVID_DB_HOST": "other"}) == "postgresql://a@h/db"
    assert configured_database_url({}) is None


def test_the_example_password_is_refused() -> None:
    with pytest.raises(ValueError, match="COVID_DB_PASSWORD is still the example password"):
        configured_database_url({"COVID_DB_HOST": "db", "COVID_DB_USER": "u", "COVID_DB_PASSWORD": "change-me"})


@pytest.mark.parametrize("url", ["postgresql://u:secret%pw@127.0.0.1:1/db", "postgresql://u:secretpw@127.0.0.1:1/db"])
def test_a_connection_error_never_quotes_the_password(url: str) -> None:
    with pytest.raises(WarehouseConnectError) as error:
        connect(url, SessionLimits(lock_timeout_s=1, statement_timeout_s=1))
    assert "secret" not in str(error.value) and "cannot connect to the warehouse" in str(error.value)
