"""docker-compose.yml cannot run here (no Docker engine): check it parses and runs real `hpo` commands."""

from pathlib import Path

import yaml

from hpo import load_config
from hpo._cli import _parser

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
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]

    create = _parser().parse_args(services["create"]["command"])
    assert create.command == "create"
    load_config(ROOT / create.config)  # a shipped example, valid
    worker = _parser().parse_args(services["worker"]["command"])
    assert (worker.command, worker.study, worker.gpus) == ("worker", None, "all")  # a pool: every study
    for service in ("create", "dashboard", "worker"):
        assert "HPO_STORAGE" in services[service]["environment"]
        assert "--storage" not in services[service].get("command", [])  # no password on a command line
    assert 'ENTRYPOINT ["hpo"]' in (ROOT / "Dockerfile").read_text()
