"""The ``hpo`` command line. The only module that reads argv and environment variables."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from objectives import ConfigError
from storage import redact_text

log = logging.getLogger("hpo")


STORAGE_HELP = "storage URL (default: HPO_STORAGE, then the config, then sqlite:///hpo.db)"
ARTIFACTS_ENV = "HPO_ARTIFACTS_DIR"
ARTIFACTS_HELP = (
    "where this machine reaches the study's artifact store (a folder or URL), when not at the study's artifacts_dir: "
    "the same store mounted under another path (default: HPO_ARTIFACTS_DIR)"
)
MEMORY_HELP = (
    "cap on CPU data memory in MiB (set after CUDA starts on a GPU); a trial that needs more ends FAIL "
    "(fail_reason oom) and the worker goes on"
)


class _RedactingFormatter(logging.Formatter):
    """Every log line goes through URL password redaction."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _storage_url(flag: str | None, config_value: str | None = None) -> str:
    """The storage URL by precedence; ``HPO_STORAGE_PASSWORD_FILE`` (a file holding the password, e.g. a Docker
    secret) fills in the password of a URL that has none, so it never appears in an environment or command line."""
    from sqlalchemy.engine import make_url

    from storage import POOL_SIZE_ENV, pool_size, resolve_storage_url

    try:
        url = resolve_storage_url(flag, os.environ.get("HPO_STORAGE"), config_value)
    except ValueError as exc:
        raise ConfigError("--storage", str(exc).removeprefix("storage: ")) from None
    try:
        pool_size()
    except ValueError as exc:
        raise ConfigError(POOL_SIZE_ENV, str(exc).removeprefix(f"{POOL_SIZE_ENV}: ")) from None
    secret = os.environ.get("HPO_STORAGE_PASSWORD_FILE")
    if not secret or make_url(url).get_backend_name() == "sqlite" or make_url(url).password is not None:
        return url
    try:
        password = Path(secret).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError("HPO_STORAGE_PASSWORD_FILE", f"cannot read {secret}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("HPO_STORAGE_PASSWORD_FILE", f"{secret} is not UTF-8 text") from None
    if not password:
        raise ConfigError("HPO_STORAGE_PASSWORD_FILE", f"{secret} is empty; write the database password into it")
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def _artifacts(flag: str | None) -> str | None:
    """Where this machine reaches the artifact store, when not at the stored ``artifacts_dir``: ``--artifacts``,
    then ``HPO_ARTIFACTS_DIR``."""
    return flag or os.environ.get(ARTIFACTS_ENV) or None


def _require_studies(url: str) -> None:
    """The one line for a storage without study tables: an empty database, or a SQLite file that is not there
    (which is never created outside ``hpo create`` / ``hpo run``)."""
    from storage import redact_url, schema_exists

    if not schema_exists(url):
        raise ConfigError("--storage", f"{redact_url(url)} has no studies; run hpo create or hpo run first")


def _cmd_validate(args: argparse.Namespace) -> int:
    from hpo.study import load_config, validate_search
    from hpo.views import summarise_data, summarise_transfer

    config = load_config(args.config)
    validate_search(config)
    data = (
        None
        if args.no_data or config.objective == "synthetic"
        else summarise_data(config.data, config.task, config.teacher.model)
    )
    if data is not None and config.objective == "distill" and config.distill.transfer_files:
        data += "\n" + summarise_transfer(config.distill, config.data)
    print(f"{args.config}: valid ({config.objective} study {config.name!r}, {len(config.search_space)} parameters)")
    if data is not None:
        print(data)
    elif args.no_data:
        print(f"data {config.data.name}: not opened (--no-data)")
    return 0


def _load(args: argparse.Namespace) -> tuple[object, str]:
    """The config of ``hpo run`` / ``hpo create``, checked whole (its data opened too) before anything is written."""
    from hpo.study import load_config, validate_search
    from hpo.views import summarise_data, summarise_transfer

    config = load_config(args.config)
    if getattr(args, "n_trials", None) is not None:
        if args.n_trials < 1:
            raise ConfigError("--n-trials", f"must be >= 1, got {args.n_trials}")
        config.n_trials = args.n_trials
    validate_search(config)
    if config.objective != "synthetic":
        log.info("%s", summarise_data(config.data, config.task, config.teacher.model))
    if config.objective == "distill" and config.distill.transfer_files:
        log.info("%s", summarise_transfer(config.distill, config.data))
    return config, _storage_url(args.storage, config.storage)


def _cmd_run(args: argparse.Namespace) -> int:
    from hpo.execution import StopFlag, node_slots, run, usable_cores

    config, url = _load(args)
    # a study run by a worker process per GPU group: each of them takes the cap (this process trains nothing)
    if args.memory_limit is not None and not node_slots(config, args.threads or usable_cores()):
        from hpo.execution import resolve_device

        _start_memory(args.memory_limit, cuda=resolve_device(config.device).type == "cuda")
    stop = StopFlag()
    stop.install()
    stop.restart = _restart
    progress = sys.stderr.isatty()
    print(run(config, url, threads=args.threads, stop=stop, progress=progress, memory_limit=args.memory_limit))
    return 0


def _cmd_create(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from hpo.execution import create
    from storage import redact_url

    config, url = _load(args)
    study = create(config, url)
    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    print(f"study {config.name!r} ready on {redact_url(url)} (budget {config.n_trials}, {queued} queued trials)")
    return 0


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from storage import redact_url, upgrade_schema

    url = _storage_url(args.storage)
    before, after = upgrade_schema(url)
    print(f"{redact_url(url)}: schema {before} -> {after}")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from hpo.execution import launch, parse_gpus, plan_slots, usable_cores

    url = _storage_url(args.storage)
    for flag in ("per_gpu", "procs", "n_trials", "devices"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}", f"must be >= 1, got {value}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError("--timeout", f"must be > 0 seconds, got {args.timeout}")
    if args.poll <= 0:
        raise ConfigError("--poll", f"must be > 0 seconds, got {args.poll}")
    if args.keep < 1:
        raise ConfigError("--keep", f"must be >= 1, got {args.keep}")
    if args.study is not None and args.until_idle:
        raise ConfigError("--until-idle", "is for pool workers (without --study); a study's worker stops at its budget")
    if args.slot_gpu is not None:
        return _run_slot(args, url)
    if args.gpus == "none" and args.per_gpu is not None:
        raise ConfigError("--per-gpu", "is for GPU slots (--gpus all or indices); CPU workers take --procs N")
    if args.gpus != "none" and args.procs is not None:
        raise ConfigError("--procs", "is for CPU workers; with --gpus, --per-gpu K runs K processes per GPU")
    if args.devices is not None and args.study is not None:
        raise ConfigError("--devices", "is for pool workers; a study's worker groups its GPUs by its train.devices")
    if args.devices is not None and args.gpus == "none":
        raise ConfigError("--devices", "groups the GPUs of --gpus; a CPU worker runs a trial's ranks as processes")
    if args.gpus == "none" and (args.procs or 1) == 1:
        return _run_slot(args, url)
    visible = 0
    if args.gpus != "none":
        import torch

        visible = torch.cuda.device_count()
    try:
        gpus = parse_gpus(args.gpus, visible)
    except ValueError as exc:
        raise _flag_error(exc) from None
    devices = args.devices or 1
    if gpus and args.study is not None:
        from hpo.execution import study_devices

        devices = study_devices(url, args.study)
    try:
        slots = plan_slots(gpus, args.per_gpu or 1, args.procs or 1, args.threads or usable_cores(), devices)
    except ValueError as exc:
        raise _flag_error(exc) from None
    child = ["--study", args.study] if args.study is not None else _pool_flags(args)
    if gpus:
        child += ["--per-gpu", str(args.per_gpu or 1)]  # each slot's share of its GPU's memory
    if args.n_trials is not None:
        child += ["--n-trials", str(args.n_trials)]
    if args.timeout is not None:
        child += ["--timeout", str(args.timeout)]
    if args.memory_limit is not None:
        child += ["--memory-limit", str(args.memory_limit)]
    if args.artifacts is not None:
        child += ["--artifacts", args.artifacts]
    return launch(slots, child, url, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _pool_flags(args: argparse.Namespace) -> list[str]:
    """The pool flags of ``hpo worker``, for its slot processes."""
    return ["--poll", str(args.poll), "--keep", str(args.keep), *(["--until-idle"] if args.until_idle else [])]


def _flag_error(exc: ValueError) -> ConfigError:
    """A ``--flag: message`` ValueError of the slot helpers as the CLI's one-line error for that flag."""
    flag, _, message = str(exc).partition(": ")
    return ConfigError(flag, message)


def _start_memory(mib: int | None, *, cuda: bool, per_gpu: int = 1) -> None:
    """This process's memory set up before its first trial (:func:`hpo.execution.start_memory`)."""
    from hpo.execution import start_memory

    try:
        start_memory(cuda=cuda, per_gpu=per_gpu, mib=mib)
    except ValueError as exc:
        raise _flag_error(exc) from None


def _restart() -> None:
    """Replace this process with a fresh run of its own command line (the same process id, so a slot's parent
    keeps it): a worker whose trial hung past ``train.max_minutes`` goes on with the next trial."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def _run_slot(args: argparse.Namespace, url: str) -> int:
    from hpo.execution import StopFlag, run_slot, usable_cores

    # a slot pinned to a GPU (or to a group: "4,5,6,7") trains there; any other on the CPU (device auto) or a
    # device the study names
    gpu = None if args.slot_gpu is None else int(args.slot_gpu) if args.slot_gpu.isdigit() else args.slot_gpu
    _start_memory(args.memory_limit, cuda=args.slot_gpu is not None, per_gpu=args.per_gpu or 1)
    stop = StopFlag()
    stop.install()
    stop.restart = _restart
    if args.study is None:
        from hpo.execution import serve

        ran = serve(
            url,
            gpu=gpu,
            threads=args.threads or usable_cores(),
            keep=args.keep,
            poll=args.poll,
            until_idle=args.until_idle,
            max_trials=args.n_trials,
            timeout=args.timeout,
            stop=stop,
            artifacts=_artifacts(args.artifacts),
        )
        log.info("pool worker %d ran %d trials%s", os.getpid(), ran, " (stopped)" if stop.requested else "")
        return 0
    ran = run_slot(
        url,
        args.study,
        gpu=gpu,
        threads=args.threads or usable_cores(),
        max_trials=args.n_trials,
        timeout=args.timeout,
        stop=stop,
        # Bars only for one process writing to a terminal (slots started by hpo worker share their parent's).
        progress=args.slot_gpu is None and sys.stderr.isatty(),
        artifacts=_artifacts(args.artifacts),
    )
    log.info("worker %d ran %d trials%s", os.getpid(), ran, " (stopped)" if stop.requested else "")
    return 0


def _cmd_pause(args: argparse.Namespace) -> int:
    from hpo.study import pause
    from storage import redact_url, schema_exists

    url = _storage_url(args.storage)
    if not schema_exists(url):
        raise ConfigError("--storage", f"{redact_url(url)} has no studies; run hpo create or hpo run first")
    print(pause(url, args.name, paused=args.command == "pause"))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from hpo._export import cost_estimate, export, front_table
    from hpo.study import load_study, parse_constraint
    from objectives import ALL_METRICS
    from storage import create_storage

    for flag, metric in (("--objective", args.objective), ("--prefer", args.prefer)):
        if metric is not None and metric not in ALL_METRICS:
            raise ConfigError(flag, f"unknown metric {metric!r}; valid: {', '.join(ALL_METRICS)}")
    if args.objective is not None and (args.pick or args.prefer):
        raise ConfigError("--objective", "choose either --objective METRIC or --pick ... --prefer METRIC, not both")
    picks = [parse_constraint(text, "--pick", metrics=ALL_METRICS) for text in args.pick]
    if args.out is not None and Path(args.out).exists() and not args.force:
        raise ConfigError("--out", f"{args.out} exists; pass --force to replace it")
    url = _storage_url(args.storage)
    _require_studies(url)
    storage = create_storage(url, create_tables=False)
    study, config = load_study(storage, args.study or _only_study(storage, url))
    task_metrics = config.task_spec.metrics
    named = [("--objective", args.objective), ("--prefer", args.prefer), *(("--pick", c.metric) for c in picks)]
    for flag, metric in named:
        if metric is not None and metric not in task_metrics:
            valid = ", ".join(task_metrics)
            raise ConfigError(flag, f"{metric!r} is not a metric of this {config.task} study; valid: {valid}")
    if args.list:
        print(front_table(study, picks, task_metrics))
    if args.out is None:
        if not args.list:
            raise ConfigError("--out", "is required (the YAML file to write), unless only --list is wanted")
        return 0
    if args.objective is None and not args.pick and args.prefer is None:
        raise ConfigError(
            "--objective", "say what to pick: --objective METRIC, or --pick 'METRIC <= X' --prefer METRIC"
        )
    if args.steps_factor <= 0:
        raise ConfigError("--steps-factor", f"must be > 0, got {args.steps_factor}")
    if args.steps_factor < 1:
        log.warning(
            "--steps-factor %g makes the full training shorter than the trial it comes from; its scores may not "
            "carry over (use >= 1)",
            args.steps_factor,
        )
    trial, job = export(
        study,
        Path(args.out),
        objective=args.objective,
        picks=picks,
        prefer=args.prefer,
        steps_factor=args.steps_factor,
        patience=args.patience,
    )
    shown = ", ".join(
        f"{k}={v:.4g}"
        for k, v in job.source.metrics.items()
        if k in (*job.task_spec.metrics[:2], "latency_ms", "size_mb")
    )
    print(
        f"trial {trial.number} ({shown}) -> {args.out}: {job.train.max_steps} steps; run: hpo train {args.out} --out DIR"
    )
    print(cost_estimate(job) or f"no cost estimate: trial {trial.number} recorded no step and evaluation times")
    return 0


def _only_study(storage: object, url: str) -> str:
    """The name of the one study in ``storage``, the default of ``--study``; an error when there are several."""
    import optuna

    from storage import redact_url

    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    if len(names) != 1:
        held = f"holds {len(names)} studies ({', '.join(names)})" if names else "holds no study"
        raise ConfigError("--study", f"{redact_url(url)} {held}; name one with --study NAME")
    return names[0]


def _cmd_delete(args: argparse.Namespace) -> int:
    from hpo.study import delete_study
    from storage import create_storage, redact_url

    url = _storage_url(args.storage)
    _require_studies(url)

    def confirm(what: str) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise ConfigError("--yes", f"deleting {what} cannot be undone; pass --yes to confirm")
        return input(f"delete {what} from {redact_url(url)}? [y/N] ").strip().lower() in ("y", "yes")

    artifacts = delete_study(
        create_storage(url, create_tables=False),
        args.name,
        force=args.force,
        confirm=confirm,
        artifacts_dir=_artifacts(None),
    )
    if artifacts is None:
        print("nothing deleted")
        return 1
    print(f"deleted study {args.name!r} from {redact_url(url)}")
    if args.artifacts:
        removed = artifacts.remove()
        print(f"{'removed' if removed else 'no'} artifacts {artifacts.location}")
    elif artifacts.url is not None or artifacts.path.exists():
        print(f"its artifacts stay in {artifacts.location} (hpo delete --artifacts removes them)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from hpo._training import train_job
    from hpo.study import load_job
    from hpo.views import evaluation_bars

    job = load_job(args.job)
    if args.seeds < 1:
        raise ConfigError("--seeds", f"must be >= 1, got {args.seeds}")
    if args.adapter_only and job.student.adapter == "none":
        raise ConfigError("--adapter-only", "writes a LoRA adapter alone, and the job's student.adapter is none")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ConfigError(
            "--out", f"{args.out} exists and is not an empty directory; pass --overwrite to write into it"
        )
    with evaluation_bars() if sys.stderr.isatty() else contextlib.nullcontext():  # plain logs: INFO lines
        result = train_job(
            job,
            out,
            threads=args.threads,
            seeds=args.seeds,
            artifacts=_artifacts(args.artifacts),
            adapter_only=args.adapter_only,
        )
    print(f"{args.out}: model, tokenizer, metrics.json and README.md (model card)")
    print(Path(args.out, "README.md").read_text().split("```")[1].strip())
    quality = job.task_spec.quality
    print(result["student"], "on the test split:", f"{quality} {result['test'][result['student']][quality]:.4f}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import time

    from hpo.views import status

    url = _storage_url(args.storage)
    _require_studies(url)
    if args.watch is None:
        print(status(url, args.study))
        return 0
    if args.watch <= 0:
        raise ConfigError("--watch", f"must be > 0 seconds, got {args.watch}")
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            text = status(url, args.study)
            stamp = time.strftime("%H:%M:%S")
            print(f"{clear}{text}\n\n(refreshed {stamp}, every {args.watch:g}s; Ctrl-C to stop)", flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import optuna

    from hpo.views import write_report
    from storage import create_storage, redact_url

    url = _storage_url(args.storage)
    _require_studies(url)
    storage = create_storage(url, create_tables=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if args.study not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError("--study", f"no study named {args.study!r} in {redact_url(url)} (studies: {known})")
    study = optuna.load_study(study_name=args.study, storage=storage)
    report = write_report(study, Path(args.out), Path(args.png) if args.png else None)
    shown = sum(f.figure is not None for f in report.figures)
    print(f"{report.html}: {shown} figures ({report.html.stat().st_size / 2**20:.1f} MB, opens offline)")
    for fig in report.figures:
        if fig.figure is None:
            print(f"  {fig.title}: {fig.missing}")
    if report.pngs:
        print(f"{len(report.pngs)} PNGs in {args.png}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from hpo.views import check_allowed_host, serve

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", f"must be 0-65535, got {args.port}")
    try:
        allow = tuple(check_allowed_host(name) for name in args.allow_host)
    except ValueError as exc:
        raise _flag_error(exc) from None
    try:
        serve(_storage_url(args.storage), args.host, args.port, allow)
    except KeyboardInterrupt:
        return 0
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpo", description="Hyperparameter search for fine-tuning and distillation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="create or load a study and run its trials in this process")
    run.add_argument("config", help="YAML study config")
    run.add_argument("--storage", help=STORAGE_HELP)
    run.add_argument("--n-trials", type=int, help="study trial budget (finished trials), overriding the config")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: the cores this process may use)")
    run.add_argument("--memory-limit", type=int, metavar="MIB", help=MEMORY_HELP)
    run.set_defaults(func=_cmd_run)

    create = sub.add_parser("create", help="validate a config and create its study (idempotent)")
    create.add_argument("config", help="YAML study config")
    create.add_argument("--storage", help=STORAGE_HELP)
    create.add_argument("--n-trials", type=int, help="study trial budget (finished trials), overriding the config")
    create.set_defaults(func=_cmd_create)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="run Optuna's schema migration")
    upgrade.add_argument("--storage", help=STORAGE_HELP)
    upgrade.set_defaults(func=_cmd_db_upgrade)

    worker = sub.add_parser(
        "worker", help="run trials of a study, or of every study (a pool); one process per GPU slot or CPU proc"
    )
    worker.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    worker.add_argument(
        "--study", help="study name (created with hpo create); without it, serve every study with budget left"
    )
    worker.add_argument(
        "--gpus",
        default="none",
        help="all, none (default) or indices like 0,1,3 or 0-7: one process per listed GPU slot (per group of "
        "train.devices GPUs), running there whatever the study's device; with none, each process runs trials on "
        "the CPU (device auto) or the study's device",
    )
    worker.add_argument(
        "--per-gpu", type=int, help="worker processes per GPU (small students; each gets 1/K of its memory; 1)"
    )
    worker.add_argument("--procs", type=int, help="CPU worker processes (without --gpus; 1)")
    worker.add_argument("--n-trials", type=int, help="trials each process runs at most (the study budget rules)")
    worker.add_argument(
        "--timeout",
        type=float,
        help="seconds after which this process starts no new trial (the study's own timeout, from its first trial, "
        "holds too)",
    )
    worker.add_argument("--threads", type=int, help="torch CPU threads per process (default: cores / processes)")
    worker.add_argument("--memory-limit", type=int, metavar="MIB", help=MEMORY_HELP + " (per process)")
    worker.add_argument(
        "--until-idle", action="store_true", help="pool: exit 0 once no study has budget left (batch schedulers)"
    )
    worker.add_argument("--poll", type=float, default=5.0, help="pool: seconds between looks for new work (5)")
    worker.add_argument("--keep", type=int, default=2, help="pool: studies whose data stay loaded in memory (2)")
    worker.add_argument("--artifacts", metavar="PATH", help=ARTIFACTS_HELP)
    worker.add_argument(
        "--devices",
        type=int,
        help="pool: GPUs per trial, the listed GPUs grouped by it (serves studies with that train.devices; a study's "
        "worker takes its train.devices; 1)",
    )
    worker.add_argument("--slot-gpu", help=argparse.SUPPRESS)
    worker.set_defaults(func=_cmd_worker)

    status = sub.add_parser("status", help="trial counts by state and the best values")
    status.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    status.add_argument("--study", help="study name (default: every study in the storage)")
    status.add_argument(
        "--watch", type=float, nargs="?", const=5.0, metavar="SECONDS", help="refresh every SECONDS (default 5)"
    )
    status.set_defaults(func=_cmd_status)

    pause = sub.add_parser("pause", help="stop starting trials of a study (running ones finish)")
    resume = sub.add_parser("resume", help="start trials of a paused study again")
    for toggle in (pause, resume):
        toggle.add_argument("name", metavar="NAME", help="study name")
        toggle.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
        toggle.set_defaults(func=_cmd_pause)

    report = sub.add_parser("report", help="write a self-contained HTML report of a study (plots and tables)")
    report.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    report.add_argument("--study", required=True, help="study name")
    report.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    report.add_argument("--png", metavar="DIR", help="also write each figure as a PNG here (needs the png extra)")
    report.set_defaults(func=_cmd_report)

    dashboard = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage")
    dashboard.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)")
    dashboard.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0 picks a free one)")
    dashboard.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name the dashboard is reached by besides loopback and --host, e.g. a Service name (repeatable); "
        "other Host headers get 403",
    )
    dashboard.set_defaults(func=_cmd_dashboard)

    export_help = (
        "write a trial as a full-training job for hpo train; the pick is also recorded in the study (user "
        "attribute 'export')"
    )
    export = sub.add_parser("export", help=export_help, description=export_help)
    export.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    export.add_argument("--study", help="study name (default: the storage's only study)")
    export.add_argument("--out", help="YAML file to write (written whole or not at all)")
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.add_argument("--objective", help="pick the best trial by this metric, e.g. accuracy")
    export.add_argument("--pick", action="append", default=[], help="a bound, e.g. 'latency_ms <= 3' (repeatable)")
    export.add_argument("--prefer", help="among feasible Pareto points, the best by this metric")
    export.add_argument("--list", action="store_true", help="print the Pareto front first")
    export.add_argument("--steps-factor", type=float, default=4.0, help="full training steps / trial steps (4)")
    export.add_argument("--patience", type=int, default=3, help="early stopping: validations without improvement")
    export.set_defaults(func=_cmd_export)

    train = sub.add_parser("train", help="full training of an exported job: model dir, metrics.json, model card")
    train.add_argument("job", help="YAML job written by hpo export")
    train.add_argument("--out", required=True, help="output model directory (new or empty)")
    train.add_argument("--overwrite", action="store_true", help="write into --out even if it holds files")
    train.add_argument(
        "--adapter-only",
        action="store_true",
        help="student.adapter: write the student's weights before training and the LoRA adapter alone (OUT/adapter) "
        "instead of the adapter merged into them",
    )
    train.add_argument("--threads", type=int, help="torch CPU threads (default: the cores this process may use)")
    train.add_argument("--artifacts", metavar="PATH", help=ARTIFACTS_HELP)
    train.add_argument(
        "--seeds", type=int, default=1, help="train the students with N seeds; the card reports mean ± std (1)"
    )
    train.set_defaults(func=_cmd_train)

    validate = sub.add_parser(
        "validate", help="check a config and open its data (columns, rows, classes); nothing runs, no model loads"
    )
    validate.add_argument("config", help="YAML study config")
    validate.add_argument("--no-data", action="store_true", help="check the config only, without opening the data")
    validate.set_defaults(func=_cmd_validate)

    delete = sub.add_parser("delete", help="delete a study and its trials (refused while trials run)")
    delete.add_argument("name", help="study name")
    delete.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--force", action="store_true", help="delete even while trials are running")
    delete.add_argument(
        "--artifacts",
        action="store_true",
        help="also remove its artifacts (teacher, logits), in its store (at HPO_ARTIFACTS_DIR when set) and this "
        "machine's cache",
    )
    delete.set_defaults(func=_cmd_delete)
    return parser


def _error(message: str) -> None:
    """Print ``hpo: error: MESSAGE`` as one line: characters that are not printable (a newline or a control
    character inside a key from the config, say) are shown escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    print(f"hpo: error: {shown}", file=sys.stderr)


def _unexpected(exc: Exception, verbose: bool) -> int:
    """A bug or an unforeseen failure, not a user error: its type and message, and the traceback with ``-v``."""
    if verbose:
        log.error("unexpected error", exc_info=exc)  # through the redacting formatter
    text = str(exc).strip()
    first = redact_text(text.splitlines()[0]) if text else ""
    hint = "" if verbose else " (run with -v for the traceback)"
    _error(f"unexpected {type(exc).__name__}: {first}{hint}")
    return 1


PLAIN_LOG_SWITCHES = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
"""Environment variables that turn the progress bars of ``datasets`` and ``huggingface_hub`` off (``transformers``
reads the latter when it is imported, after this)."""


def plain_logs() -> None:
    """Progress bars off for a stderr that is not a terminal (a log file, a pipe), in this process and the worker
        processes it starts: their carriage-return redraws would flood the log. A switch set to 0 (bars asked for) keeps
    every bar on.

        A bar a library makes with tqdm directly (transformers' GGUF loader: "Converting and de-quantizing GGUF
        tensors") obeys none of them: tqdm's own defaults come from ``TQDM_*`` variables read when tqdm is imported,
        and optuna imported it before ``main`` runs. So tqdm's default ``disable=False`` becomes ``disable=None`` (off
        where the bar's file is not a terminal), as ``TQDM_DISABLE`` would have set it at import; a bar given
        ``disable`` keeps it."""
    import functools

    import tqdm.std

    if any(os.environ.get(name, "").strip().lower() in ("0", "false", "no") for name in PLAIN_LOG_SWITCHES):
        return  # the user asked for bars in this log
    for name in PLAIN_LOG_SWITCHES:
        os.environ.setdefault(name, "1")
    init = vars(tqdm.std.tqdm)["__init__"]  # tqdm's own functools.partialmethod of its TQDM_* defaults
    if isinstance(init, functools.partialmethod) and init.keywords.get("disable", False) is False:
        keywords = {**init.keywords, "disable": None}
        tqdm.std.tqdm.__init__ = functools.partialmethod(init.func, *init.args, **keywords)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script."""
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    if not sys.stderr.isatty():
        plain_logs()
    try:
        return args.func(args)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        from hpo.execution import StorageUnavailable, TooManyFailures

        if isinstance(exc, StorageUnavailable):
            _error(f"--storage: {exc}")
            return 1
        if isinstance(exc, TooManyFailures):
            _error(str(exc))
            return 1
        if not isinstance(exc, SQLAlchemyError):
            return _unexpected(exc, args.verbose)
        first = str(exc).strip().splitlines()[0]
        _error(f"--storage: database error: {redact_text(first)}")
        return 1
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
