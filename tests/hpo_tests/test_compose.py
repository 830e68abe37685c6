"""docker-compose.yml cannot run here (no Docker engine): check it parses and runs real `hpo` commands."""

from pathlib import Path

import yaml

from hpo._cli import _parser

ROOT = Path(__file__).parents[2]


def test_compose_services_run_valid_hpo_commands_on_shipped_examples() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["postgres"]["ports"] == ["127.0.0.1:5432:5432"]  # published on loopback only
    assert "healthcheck" in services["postgres"]
    commands = [s["command"] for s in services.values() if s.get("build") == "."]
    assert commands
    for command in commands:
        args = _parser().parse_args(command)
        if hasattr(args, "config"):
            assert (ROOT / args.config).is_file()
    assert (ROOT / "Dockerfile").read_text().count('ENTRYPOINT ["hpo"]') == 1
