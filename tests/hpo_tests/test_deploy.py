"""deploy/kubernetes and deploy/slurm cannot run here (no cluster): parse them, run their hpo command lines through
the real CLI parser, and run the sbatch script itself as Slurm would start it (one CPU worker, no GPU)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from sqlalchemy.engine import make_url

from hpo._cli import _parser
from hpo.execution import create
from hpo.study import config_from_dict
from tests.hpo_tests.execution_tests.test_workers import synthetic

ROOT = Path(__file__).parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SBATCH = ROOT / "deploy" / "slurm" / "worker.sbatch"


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object shipped, by (kind, name), each file read with yaml.safe_load_all."""
    out = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"], doc["metadata"]["name"]] = doc
    return out


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def container(objects: dict, kind: str, name: str) -> dict[str, Any]:
    (only,) = objects[kind, name]["spec"]["template"]["spec"]["containers"]
    return only


def test_kubernetes_manifests_run_hpo_with_the_url_from_the_secret_and_no_password() -> None:
    objects = manifests()
    secret = objects["Secret", "hpo-database"]
    url = secret["stringData"]["url"]
    assert make_url(url).get_backend_name() == "postgresql"

    for kind, name, command in (
        ("Job", "hpo-db-upgrade", "db"),
        ("Deployment", "hpo-worker", "worker"),
        ("Deployment", "hpo-dashboard", "dashboard"),
    ):
        spec = container(objects, kind, name)
        args = _parser().parse_args(spec["args"])  # the image's entrypoint is hpo
        assert args.command == command and "--storage" not in spec["args"]  # no URL on a command line
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in spec["env"]}
        assert env["HPO_STORAGE"] == {"name": "hpo-database", "key": "url"}
        assert env["PGPASSWORD"] == {"name": "hpo-database", "key": "password", "optional": True}

    assert _parser().parse_args(container(objects, "Job", "hpo-db-upgrade")["args"]).db_command == "upgrade"
    workers = objects["Deployment", "hpo-worker"]
    worker = container(objects, "Deployment", "hpo-worker")
    args = _parser().parse_args(worker["args"])
    assert args.study is None and not args.until_idle  # a pool that waits for new studies
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert workers["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60  # time to re-queue a trial
    (mount,) = worker["volumeMounts"]
    volumes = {v["name"]: v for v in workers["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert objects["PersistentVolumeClaim", claim]["spec"]["accessModes"] == ["ReadWriteMany"]  # shared teacher

    dashboard = _parser().parse_args(container(objects, "Deployment", "hpo-dashboard")["args"])
    service = objects["Service", "hpo-dashboard"]["spec"]
    assert service["type"] == "ClusterIP" and service["ports"][0]["targetPort"] == dashboard.port
    assert service["selector"] == objects["Deployment", "hpo-dashboard"]["spec"]["template"]["metadata"]["labels"]

    for value in (s for doc in objects.values() for s in strings(doc)):
        if "://" in value:
            assert make_url(value).password is None, value  # no password in any manifest
    assert "password" not in secret["stringData"]


def sbatch_options() -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", SBATCH.read_text(), re.MULTILINE))


def test_sbatch_is_an_array_of_one_gpu_pool_workers_until_idle() -> None:
    options = sbatch_options()
    assert re.fullmatch(r"\d+-\d+", options["array"]) and options["gres"] == "gpu:1"
    assert options["signal"].startswith("B:TERM@")  # SIGTERM before the time limit: the trial is re-queued
    (line,) = [line for line in SBATCH.read_text().splitlines() if line.startswith("exec hpo ")]
    assert line.endswith(' "$@"')  # the script's own arguments go to hpo worker
    args = _parser().parse_args(shlex.split(line.removesuffix(' "$@"'))[2:])
    assert (args.command, args.study, args.until_idle, args.gpus) == ("worker", None, True, "all")
    assert "--storage" not in line  # the URL comes from HPO_STORAGE
    assert subprocess.run(["bash", "-n", str(SBATCH)], check=False).returncode == 0


def test_sbatch_script_runs_a_pool_worker_until_no_study_has_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    for name in ("one", "two"):
        create(config_from_dict(synthetic(name, n_trials=2)), url)
    env = {
        **os.environ,
        "HPO_STORAGE": url,
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # hpo on PATH, as the script says
    }
    if not torch.cuda.is_available():  # a node without a visible GPU is refused, not served on the CPU
        refused = subprocess.run(["bash", str(SBATCH)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        assert refused.returncode == 2 and "hpo: error: --gpus: all asks for GPUs" in refused.stderr, refused.stderr
    result = subprocess.run(  # the CPU asked for explicitly: arguments after the script go to hpo worker
        ["bash", str(SBATCH), "--gpus", "none"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no study has budget left; leaving (--until-idle)" in result.stderr
    for name in ("one", "two"):
        assert [t.state.name for t in optuna.load_study(study_name=name, storage=url).trials] == ["COMPLETE"] * 2

    missing = subprocess.run(
        ["bash", str(SBATCH)], env={"PATH": env["PATH"]}, capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0 and "export HPO_STORAGE" in missing.stderr
