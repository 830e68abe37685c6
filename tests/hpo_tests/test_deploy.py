"""deploy/kubernetes and deploy/slurm cannot run here (no cluster): parse them, run their hpo command lines through
the real CLI parser, and run the sbatch script itself as Slurm would start it (one CPU worker, no GPU)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from sqlalchemy.engine import make_url

from hpo._cli import _parser
from hpo.execution import create
from hpo.study import config_from_dict
from tests.hpo_tests.execution_tests.test_workers import synthetic

ROOT = Path(__file__).parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SECRET_EXAMPLE = ROOT / "deploy" / "kubernetes-secret.example.yaml"
SBATCH = ROOT / "deploy" / "slurm" / "worker.sbatch"
VERSION = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def manifests(*paths: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object in ``paths`` (default: what ``kubectl apply -f deploy/kubernetes/`` applies), by
    (kind, name), each file read with yaml.safe_load_all."""
    out = {}
    for path in paths or sorted(KUBE.glob("*.yaml")):
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


def pod(objects: dict, kind: str, name: str) -> dict[str, Any]:
    return objects[kind, name]["spec"]["template"]["spec"]


def container(objects: dict, kind: str, name: str) -> dict[str, Any]:
    (only,) = pod(objects, kind, name)["containers"]
    return only


def dockerfile_user() -> str:
    return [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")][-1]


PODS = (
    ("Job", "hpo-db-upgrade", "db"),
    ("Deployment", "hpo-worker", "worker"),
    ("Job", "hpo-worker-batch", "worker"),
    ("Deployment", "hpo-dashboard", "dashboard"),
)


def test_kubernetes_manifests_are_valid_api_objects() -> None:
    import kubernetes_validate

    for path in [*sorted(KUBE.glob("*.yaml")), SECRET_EXAMPLE]:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)  # raises if not
    broken = manifests(KUBE / "workers.yaml")["Deployment", "hpo-worker"]
    broken["spec"]["template"]["spec"]["securityContext"]["runAsNonRooot"] = True  # the validator does check
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_pods_run_hpo_as_a_numeric_non_root_user_with_the_password_in_a_file() -> None:
    objects = manifests()
    assert not any(kind == "Secret" for kind, _ in objects)  # kubectl apply -f deploy/kubernetes/ applies none
    secret = manifests(SECRET_EXAMPLE)["Secret", "hpo-database"]
    assert make_url(secret["stringData"]["url"]).get_backend_name() == "postgresql"
    assert "password" not in secret["stringData"]  # the example holds no password
    uid, gid = (int(part) for part in dockerfile_user().split(":"))
    assert uid > 0 and gid > 0

    for kind, name, command in PODS:
        spec, main = pod(objects, kind, name), container(objects, kind, name)
        args = _parser().parse_args(main["args"])  # the image's entrypoint is hpo
        assert args.command == command and "--storage" not in main["args"]  # no URL on a command line
        assert main["image"] == f"distill-hpo:{VERSION}"  # a version, not latest
        context = spec["securityContext"]
        assert context["runAsNonRoot"] and (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
        assert context["fsGroup"] == gid  # the mounted volumes are writable (artifacts) and readable (password)
        assert main["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        assert main["resources"]["requests"]["memory"] and main["resources"]["limits"]["memory"]
        # The URL (no password) from the Secret; the password only as a file from the Secret's `password` key.
        env = {e["name"]: e for e in main["env"]}
        assert set(env) == {"HPO_STORAGE", "HPO_STORAGE_PASSWORD_FILE"}
        assert env["HPO_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": "hpo-database", "key": "url"}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in main["volumeMounts"]}
        folder, _, file = env["HPO_STORAGE_PASSWORD_FILE"]["value"].rpartition("/")
        secret_volume = mounts[folder]["secret"]
        assert secret_volume["secretName"] == "hpo-database"
        assert secret_volume["items"] == [{"key": "password", "path": file}]
        assert secret_volume["defaultMode"] == 0o440  # readable by the fsGroup, not by others

    assert _parser().parse_args(container(objects, "Job", "hpo-db-upgrade")["args"]).db_command == "upgrade"
    assert objects["Job", "hpo-db-upgrade"]["spec"]["ttlSecondsAfterFinished"] > 0  # applying again runs it again
    for value in (s for doc in [*objects.values(), secret] for s in strings(doc)):
        if "://" in value:
            assert make_url(value).password is None, value  # no password in any manifest


def test_kubernetes_workers_a_pool_deployment_and_an_indexed_job_until_idle() -> None:
    objects = manifests()
    deployment, job = objects["Deployment", "hpo-worker"], objects["Job", "hpo-worker-batch"]
    pool = _parser().parse_args(container(objects, "Deployment", "hpo-worker")["args"])
    assert (pool.study, pool.until_idle, pool.gpus) == (None, False, "all")  # a pool that waits for new studies
    batch = _parser().parse_args(container(objects, "Job", "hpo-worker-batch")["args"])
    assert (batch.study, batch.until_idle, batch.gpus) == (None, True, "all")  # leaves once no study has budget
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["completions"] == job["spec"]["parallelism"] >= 1
    assert pod(objects, "Job", "hpo-worker-batch")["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it

    for kind, name in (("Deployment", "hpo-worker"), ("Job", "hpo-worker-batch")):
        spec, worker = pod(objects, kind, name), container(objects, kind, name)
        resources = worker["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
        # A CPU limit equal to the request: the cgroup quota hpo reads for its thread count.
        assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
        assert spec["terminationGracePeriodSeconds"] >= 60  # time to re-queue a trial on SIGTERM
        volumes = {v["name"]: v for v in spec["volumes"]}
        (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v]
        pvc = objects["PersistentVolumeClaim", claim]["spec"]
        assert pvc["accessModes"] == ["ReadWriteMany"] and pvc["storageClassName"]  # shared teacher; a placeholder
    # The two workers' pods are the same but for the arguments and the Job's restart policy.
    same = {k: v for k, v in pod(objects, "Job", "hpo-worker-batch").items() if k != "restartPolicy"}
    same["containers"] = [{**container(objects, "Job", "hpo-worker-batch"), "args": pool_args(deployment)}]
    assert same == pod(objects, "Deployment", "hpo-worker")

    dashboard = _parser().parse_args(container(objects, "Deployment", "hpo-dashboard")["args"])
    service = objects["Service", "hpo-dashboard"]["spec"]
    assert service["type"] == "ClusterIP" and service["ports"][0]["targetPort"] == dashboard.port
    assert service["selector"] == objects["Deployment", "hpo-dashboard"]["spec"]["template"]["metadata"]["labels"]
    assert dashboard.host == "0.0.0.0" and dashboard.allow_host == ["hpo-dashboard"]  # the Service's name


def pool_args(deployment: dict[str, Any]) -> list[str]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only["args"]


def sbatch_options() -> dict[str, str]:
    """``#SBATCH --key=value`` as key -> value, ``#SBATCH --flag`` as flag -> ""."""
    return dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)$", SBATCH.read_text(), re.MULTILINE))


def test_sbatch_is_a_requeued_array_of_one_gpu_pool_workers_until_idle() -> None:
    options = sbatch_options()
    assert re.fullmatch(r"\d+-\d+", options["array"]) and options["gres"] == "gpu:1"
    assert options["signal"].startswith("B:TERM@")  # SIGTERM before the time limit: the trial is re-queued
    assert options["requeue"] == ""  # a task lost with its node runs again
    (line,) = [line for line in SBATCH.read_text().splitlines() if line.startswith("exec hpo ")]
    assert line.endswith(' "$@"')  # the script's own arguments go to hpo worker
    line = line.removesuffix(' "$@"').replace('"$SLURM_CPUS_PER_TASK"', options["cpus-per-task"])
    args = _parser().parse_args(shlex.split(line)[2:])
    assert (args.command, args.study, args.until_idle, args.gpus) == ("worker", None, True, "all")
    assert args.threads == int(options["cpus-per-task"])  # torch threads = the CPUs Slurm gave the task
    assert "--storage" not in line  # the URL comes from HPO_STORAGE
    assert re.search(
        r"^export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1$", SBATCH.read_text(), re.M
    )
    assert subprocess.run(["bash", "-n", str(SBATCH)], check=False).returncode == 0


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="needs the shellcheck binary (apt-get install shellcheck)"
)
def test_sbatch_script_passes_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_sbatch_script_runs_a_pool_worker_until_no_study_has_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    for name in ("one", "two"):
        create(config_from_dict(synthetic(name, n_trials=2)), url)
    env = {
        **os.environ,
        "HPO_STORAGE": url,
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_CPUS_PER_TASK": "1",
        "TMPDIR": str(tmp_path),
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
