"""The ``hpo`` command line. The only module that reads argv and environment variables."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from objectives import ConfigError
from storage import redact_text

log = logging.getLogger("hpo")


STORAGE_HELP = "storage URL (default: HPO_STORAGE, then the config, then sqlite:///hpo.db)"
MEMORY_HELP = (
    "cap on CPU data memory in MiB; a trial that needs more ends FAIL (fail_reason oom) and the worker goes on"
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
    from storage import resolve_storage_url

    try:
        return resolve_storage_url(flag, os.environ.get("HPO_STORAGE"), config_value)
    except ValueError as exc:
        raise ConfigError("--storage", str(exc).removeprefix("storage: ")) from None


def _cmd_validate(args: argparse.Namespace) -> int:
    from hpo._config import load_config
    from hpo._study import validate_search

    config = load_config(args.config)
    validate_search(config)
    print(f"{args.config}: valid ({config.objective} study {config.name!r}, {len(config.search_space)} parameters)")
    return 0


def _load(args: argparse.Namespace) -> tuple[object, str]:
    from hpo._config import load_config
    from hpo._study import validate_search

    config = load_config(args.config)
    if getattr(args, "n_trials", None) is not None:
        if args.n_trials < 1:
            raise ConfigError("--n-trials", f"must be >= 1, got {args.n_trials}")
        config.n_trials = args.n_trials
    validate_search(config)
    return config, _storage_url(args.storage, config.storage)


def _cmd_run(args: argparse.Namespace) -> int:
    from hpo._run import run
    from hpo._worker import StopFlag

    config, url = _load(args)
    _limit_memory(args.memory_limit)
    stop = StopFlag()
    stop.install()
    print(run(config, url, threads=args.threads, stop=stop, progress=sys.stderr.isatty()))
    return 0


def _cmd_create(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from hpo._run import create
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
    from hpo._slots import launch, parse_gpus, plan_slots

    url = _storage_url(args.storage)
    for flag in ("per_gpu", "procs", "n_trials"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}", f"must be >= 1, got {value}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError("--timeout", f"must be > 0 seconds, got {args.timeout}")
    if args.slot_gpu is not None or (args.gpus == "none" and args.procs == 1):
        return _run_slot(args, url)
    visible = 0
    if args.gpus != "none":
        import torch

        visible = torch.cuda.device_count()
    try:
        gpus = parse_gpus(args.gpus, visible)
    except ValueError as exc:
        raise _flag_error(exc) from None
    slots = plan_slots(gpus, args.per_gpu, args.procs, args.threads or os.cpu_count() or 1)
    child = ["--study", args.study]
    if args.n_trials is not None:
        child += ["--n-trials", str(args.n_trials)]
    if args.timeout is not None:
        child += ["--timeout", str(args.timeout)]
    if args.memory_limit is not None:
        child += ["--memory-limit", str(args.memory_limit)]
    return launch(slots, child, url)


def _flag_error(exc: ValueError) -> ConfigError:
    """A ``--flag: message`` ValueError of the slot helpers as the CLI's one-line error for that flag."""
    flag, _, message = str(exc).partition(": ")
    return ConfigError(flag, message)


def _limit_memory(mib: int | None) -> None:
    from hpo._slots import limit_memory

    if mib is None:
        return
    try:
        limit_memory(mib)
    except ValueError as exc:
        raise _flag_error(exc) from None


def _run_slot(args: argparse.Namespace, url: str) -> int:
    from hpo._run import run_slot
    from hpo._worker import StopFlag

    _limit_memory(args.memory_limit)
    stop = StopFlag()
    stop.install()
    ran = run_slot(
        url,
        args.study,
        gpu=args.slot_gpu,
        threads=args.threads or os.cpu_count() or 1,
        max_trials=args.n_trials,
        timeout=args.timeout,
        stop=stop,
        # Bars only for one process writing to a terminal (slots started by hpo worker share their parent's).
        progress=args.slot_gpu is None and sys.stderr.isatty(),
    )
    log.info("worker %d ran %d trials%s", os.getpid(), ran, " (stopped)" if stop.requested else "")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpo._constraints import parse_constraint
    from hpo._export import export, front_table
    from hpo._study import load_study
    from objectives import METRICS
    from storage import create_storage

    for flag, metric in (("--objective", args.objective), ("--prefer", args.prefer)):
        if metric is not None and metric not in METRICS:
            raise ConfigError(flag, f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if args.objective is not None and (args.pick or args.prefer):
        raise ConfigError("--objective", "choose either --objective METRIC or --pick ... --prefer METRIC, not both")
    picks = [parse_constraint(text, "--pick") for text in args.pick]
    study, _ = load_study(create_storage(_storage_url(args.storage), create_tables=False), args.study)
    if args.list:
        print(front_table(study, picks))
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
        f"{k}={v:.4g}" for k, v in job.source.metrics.items() if k in ("accuracy", "f1", "latency_ms", "size_mb")
    )
    print(
        f"trial {trial.number} ({shown}) -> {args.out}: {job.train.max_steps} steps; run: hpo train {args.out} --out DIR"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpo._config import load_job
    from hpo._training import train_job

    job = load_job(args.job)
    if args.seeds < 1:
        raise ConfigError("--seeds", f"must be >= 1, got {args.seeds}")
    result = train_job(job, Path(args.out), threads=args.threads, seeds=args.seeds)
    print(f"{args.out}: model, tokenizer, metrics.json and README.md (model card)")
    print(Path(args.out, "README.md").read_text().split("```")[1].strip())
    print(result["student"], "on the test split:", f"accuracy {result['test'][result['student']]['accuracy']:.4f}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import time

    from hpo._status import status
    from storage import redact_url, schema_exists

    url = _storage_url(args.storage)
    if not schema_exists(url):
        raise ConfigError("--storage", f"{redact_url(url)} has no studies; run hpo create or hpo run first")
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
    from pathlib import Path

    import optuna

    from hpo._report import write_report
    from storage import create_storage, redact_url, schema_exists

    url = _storage_url(args.storage)
    if not schema_exists(url):
        raise ConfigError("--storage", f"{redact_url(url)} has no studies; run hpo create or hpo run first")
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
    from hpo._dashboard import serve

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", f"must be 0-65535, got {args.port}")
    try:
        serve(_storage_url(args.storage), args.host, args.port)
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
    run.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
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

    worker = sub.add_parser("worker", help="run trials of an existing study (one process per GPU slot or CPU proc)")
    worker.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    worker.add_argument("--study", required=True, help="study name (created with hpo create)")
    worker.add_argument("--gpus", default="none", help="all, none (default) or indices like 0,1,3")
    worker.add_argument("--per-gpu", type=int, default=1, help="worker processes per GPU (small students)")
    worker.add_argument("--procs", type=int, default=1, help="worker processes on a CPU-only node")
    worker.add_argument("--n-trials", type=int, help="trials each process runs at most (the study budget rules)")
    worker.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    worker.add_argument("--threads", type=int, help="torch CPU threads per process (default: cores / processes)")
    worker.add_argument("--memory-limit", type=int, metavar="MIB", help=MEMORY_HELP + " (per process)")
    worker.add_argument("--slot-gpu", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(func=_cmd_worker)

    status = sub.add_parser("status", help="trial counts by state and the best values")
    status.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    status.add_argument("--study", help="study name (default: every study in the storage)")
    status.add_argument(
        "--watch", type=float, nargs="?", const=5.0, metavar="SECONDS", help="refresh every SECONDS (default 5)"
    )
    status.set_defaults(func=_cmd_status)

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
    dashboard.set_defaults(func=_cmd_dashboard)

    export = sub.add_parser("export", help="write a trial as a full-training job for hpo train")
    export.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    export.add_argument("--study", required=True, help="study name")
    export.add_argument("--out", help="YAML file to write")
    export.add_argument("--objective", help="pick the best trial by this metric, e.g. accuracy")
    export.add_argument("--pick", action="append", default=[], help="a bound, e.g. 'latency_ms <= 3' (repeatable)")
    export.add_argument("--prefer", help="among feasible Pareto points, the best by this metric")
    export.add_argument("--list", action="store_true", help="print the Pareto front first")
    export.add_argument("--steps-factor", type=float, default=4.0, help="full training steps / trial steps (4)")
    export.add_argument("--patience", type=int, default=3, help="early stopping: validations without improvement")
    export.set_defaults(func=_cmd_export)

    train = sub.add_parser("train", help="full training of an exported job: model dir, metrics.json, model card")
    train.add_argument("job", help="YAML job written by hpo export")
    train.add_argument("--out", required=True, help="output model directory")
    train.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    train.add_argument(
        "--seeds", type=int, default=1, help="train the students with N seeds; the card reports mean ± std (1)"
    )
    train.set_defaults(func=_cmd_train)

    validate = sub.add_parser("validate", help="check a config without running anything")
    validate.add_argument("config", help="YAML study config")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script."""
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hpo: error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # an unknown study name
        print(f"hpo: error: {exc.args[0]}", file=sys.stderr)
        return 2
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        from hpo._worker import StorageUnavailable, TooManyFailures

        if isinstance(exc, StorageUnavailable):
            print(f"hpo: error: --storage: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, TooManyFailures):
            print(f"hpo: error: {exc}", file=sys.stderr)
            return 1
        if not isinstance(exc, SQLAlchemyError):
            raise
        first = str(exc).strip().splitlines()[0]
        print(f"hpo: error: --storage: database error: {redact_text(first)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
