"""Property-based test: mutated shipped configs are either valid or one clear line (exit 2), never a traceback.

Hypothesis mutates the example configs (keys deleted or renamed, values replaced by wrong types, extreme and
non-finite numbers, unicode, huge lists) and runs ``hpo validate`` on each: in-process through the CLI's ``main``
(hundreds of subprocesses would take minutes on a small CI machine), and a few fixed mutants through a real process.
The example count is fixed and the generation derandomised, so CI sees the same cases on every run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo._cli import main

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))

WEIRD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 1e-12, -0.0]),
    st.text(max_size=20),
    st.sampled_from(["", "é", "名前", "🙂", "\u202e", "a/b", "..", "x" * 600, "nan", "inf", "-.inf", "1e999"]),
    st.lists(st.integers(), max_size=4),
    st.builds(lambda: list(range(5_000))),  # a huge list (a new one each time: mutants must not share it)
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) to a value inside a parsed config."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list) and len(node) <= 100:  # not into huge lists
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutants(draw: st.DrawFn) -> dict:
    """A shipped example with one to three mutations."""
    config = copy.deepcopy(yaml.safe_load(draw(st.sampled_from(EXAMPLES)).read_text()))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(config)
        path = draw(st.sampled_from(paths))
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["delete", "rename", "replace", "replace", "replace"]))
        if action == "delete":
            del parent[last]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(last)
        else:
            parent[last] = draw(WEIRD_VALUES)
        if not _paths(config):
            break
    return config


def _validate(config: Any, path: Path) -> tuple[int, str]:
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", "--no-data", str(path)])  # the config's checks; opening data is tested apart
    return code, err.getvalue()


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(config=mutants())
def test_mutated_configs_are_valid_or_one_line(config: dict, tmp_path: Path) -> None:
    code, err = _validate(config, tmp_path / "mutant.yaml")
    assert code in (0, 2), err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= (0 if code == 0 else 1), err
    if code == 2:
        assert err.startswith("hpo: error: "), err


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda c: c["train"].__setitem__("lr", float("nan")), "hpo: error: train.lr: must be a finite number"),
        (lambda c: c.__setitem__("seed", -1), "hpo: error: seed: must be in [0, 2**32)"),
        (lambda c: c.__setitem__("name", "名前/.."), "hpo: error: name: must be 1-128 letters"),
        (lambda c: c["search_space"].__setitem__("train.lr", list(range(20_000))), "hpo: error: search_space.train.lr"),
    ],
)
def test_a_few_mutants_through_a_real_process(tmp_path: Path, mutate: Any, error: str) -> None:
    config = yaml.safe_load((Path(__file__).parents[3] / "examples" / "quickstart.yaml").read_text())
    mutate(config)
    path = tmp_path / "mutant.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "hpo._cli", "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(error), result.stderr
