import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage import DEFAULT_STORAGE_URL, engine_kwargs, redact_text, redact_url, resolve_storage_url


def test_precedence_flag_env_config_default() -> None:
    assert resolve_storage_url("sqlite:///a.db", "sqlite:///b.db", "sqlite:///c.db") == "sqlite:///a.db"
    assert resolve_storage_url(None, "sqlite:///b.db", "sqlite:///c.db") == "sqlite:///b.db"
    assert resolve_storage_url(None, "", "sqlite:///c.db") == "sqlite:///c.db"
    assert resolve_storage_url(None, None, None) == DEFAULT_STORAGE_URL == "sqlite:///hpo.db"


def test_bad_url_is_rejected_without_showing_the_password() -> None:
    with pytest.raises(ValueError, match="not a database URL") as info:
        resolve_storage_url("not a url user:s3cret@host", None, None)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://hpo:s3cret@db.example:5432/hpo",
        "mysql+pymysql://root:s3cret@127.0.0.1/test",
        "postgresql://u:s3cret%40x@h/db",
    ],
)
def test_redaction_hides_passwords(url: str) -> None:
    shown = redact_url(url)
    assert "s3cret" not in shown and "***" in shown
    assert "s3cret" not in redact_text(f"could not connect to {url}: timeout")


def test_url_without_password_is_unchanged() -> None:
    assert redact_url("sqlite:///hpo.db") == "sqlite:///hpo.db"
    assert redact_url("postgresql+psycopg://postgres@127.0.0.1:5432/test").endswith("@127.0.0.1:5432/test")


def test_engine_options_per_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine_kwargs("sqlite:///x.db") == {"connect_args": {"timeout": 60}}
    pg = engine_kwargs("postgresql+psycopg://h/db")
    assert pg["pool_pre_ping"] is True and (pg["pool_size"], pg["max_overflow"]) == (1, 0)
    assert pg["connect_args"] == {"application_name": f"hpo pid {os.getpid()}", "prepare_threshold": None}
    assert engine_kwargs("mysql+pymysql://h/db", overflow=1)["max_overflow"] == 1
    monkeypatch.setenv("HPO_DB_POOL_SIZE", "4")
    assert engine_kwargs("postgresql+psycopg://h/db")["pool_size"] == 4


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_pool_size_is_one_line_naming_the_variable(value: str, tmp_path: Path) -> None:
    env = {**os.environ, "HPO_DB_POOL_SIZE": value, "HPO_STORAGE": "postgresql+psycopg://postgres@127.0.0.1/test"}
    result = subprocess.run(
        [sys.executable, "-m", "hpo._cli", "status"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"hpo: error: HPO_DB_POOL_SIZE: must be an integer >= 1 (connections per process), got {value!r}"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://hpo@db:5432/hpo?password=s3cret",
        "mysql+pymysql://root@127.0.0.1/test?passwd=s3cret&charset=utf8mb4",
        "postgresql+psycopg://hpo@db/hpo?sslmode=verify-full&sslpassword=s3cret",
        "postgresql+psycopg://hpo:s3cret@db/hpo?sslpassword=s3cret",
        "postgresql://hpo@db/hpo?client_secret=s3cret&access_token=s3cret&Password=s3cret",
    ],
)
def test_redaction_hides_secrets_in_the_query_string(url: str) -> None:
    shown = redact_url(url)
    assert "s3cret" not in shown and "=***" in shown
    assert "s3cret" not in redact_text(f"connecting to {url} failed; retry 1/3")
    assert "s3cret" not in redact_text(f"connection to '{url}' refused")


def test_redaction_keeps_plain_parts_as_they_are() -> None:
    plain = "postgresql+psycopg://hpo@db:5432/hpo?sslmode=require&application_name=w1"
    assert redact_url(plain) == plain
    assert redact_text(f"connecting to {plain}: refused") == f"connecting to {plain}: refused"  # user kept
    assert redact_text("postgresql+psycopg://postgres@127.0.0.1:5432/test") == (
        "postgresql+psycopg://postgres@127.0.0.1:5432/test"  # was mangled into postgresql+psycopg:***@127...
    )
    assert redact_text("host=db user=hpo password=s3cret dbname=hpo") == "host=db user=hpo password=*** dbname=hpo"


def test_a_url_whose_driver_is_not_installed_names_the_extra() -> None:
    pytest.importorskip("pymysql")
    try:
        import MySQLdb  # noqa: F401 - mysql:// defaults to mysqlclient; the mysql extra installs PyMySQL
    except ImportError:
        pass
    else:
        pytest.skip("mysqlclient is installed here")
    with pytest.raises(ValueError, match=r"mysql:// needs the database driver MySQLdb.*use mysql\+pymysql://"):
        resolve_storage_url("mysql://root@127.0.0.1/test", None, None)
