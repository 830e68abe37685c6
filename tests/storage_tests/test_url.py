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


def test_engine_options_per_backend() -> None:
    assert engine_kwargs("sqlite:///x.db") == {"connect_args": {"timeout": 60}}
    assert engine_kwargs("postgresql+psycopg://h/db")["pool_pre_ping"] is True
