"""The README runs as written: every `hpo` command line in its code blocks parses with the current CLI, and every
study config in it validates."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from hpo import config_from_dict
from hpo._cli import _parser

README = Path(__file__).resolve().parents[2] / "README.md"

PLACEHOLDERS = {"URL": "sqlite:///hpo.db", "N": "2", "NAME": "quickstart", "SECONDS": "5", "DIR": "out", "MIB": "512"}
"""Values for the upper-case placeholders of the usage lines (``--storage URL``, ``--n-trials N``)."""


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, indented ones (in list items) included."""
    blocks = re.findall(r"^( *)```(\w*)\n(.*?)^\1```", text, flags=re.MULTILINE | re.DOTALL)
    return [(lang, "\n".join(line[len(indent) :] for line in body.splitlines())) for indent, lang, body in blocks]


def command_lines(text: str) -> list[str]:
    """Every ``hpo ...`` line of the code blocks (a ``$ `` prompt stripped)."""
    lines = []
    for _, body in code_blocks(text):
        for line in body.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("hpo "):
                lines.append(line)
    return lines


def argv(line: str) -> list[str]:
    """The arguments of a usage line: ``# comments`` dropped, ``[optional]`` parts included, placeholders filled."""
    words = shlex.split(line, comments=True)[1:]
    words = [w.strip("[]") for w in words if w.strip("[]")]
    return [PLACEHOLDERS.get(w, w) for w in words]


def test_every_hpo_command_in_the_readme_parses() -> None:
    lines = command_lines(README.read_text())
    assert len(lines) >= 20  # the usage block, the study views, export/train, workers, bring your own data
    parser = _parser()
    for line in lines:
        try:
            parser.parse_args(argv(line))
        except SystemExit:
            pytest.fail(f"README command does not parse with the current CLI: {line}")


def test_a_wrong_flag_would_be_caught() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(argv("hpo train best.yaml --out student/ --steps-factor 0.5"))


def test_every_study_config_in_the_readme_validates() -> None:
    configs = [yaml.safe_load(body) for lang, body in code_blocks(README.read_text()) if lang == "yaml"]
    studies = [c for c in configs if isinstance(c, dict) and "name" in c]
    assert studies
    for study in studies:
        config_from_dict(study)
