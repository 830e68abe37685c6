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
    from hpo._pruners import make_pruner
    from hpo._samplers import make_sampler

    config = load_config(args.config)
    n = len(config.directions)
    make_sampler(config.sampler.name, config.sampler.options, config.search_space, config.seed, n)
    make_pruner(config.pruner.name, config.pruner.options, n)
    print(f"{args.config}: valid ({config.objective} study {config.name!r}, {len(config.search_space)} parameters)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hpo._config import load_config
    from hpo._run import run

    config = load_config(args.config)
    if args.n_trials is not None:
        if args.n_trials < 1:
            raise ConfigError("--n-trials", f"must be >= 1, got {args.n_trials}")
        config.n_trials = args.n_trials
    url = _storage_url(args.storage, config.storage)
    print(run(config, url, threads=args.threads))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from hpo._status import status

    print(status(_storage_url(args.storage), args.study))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpo", description="Hyperparameter search for fine-tuning and distillation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="create or load a study and run its trials here")
    run.add_argument("config", help="YAML study config")
    run.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then the config, then sqlite:///hpo.db)")
    run.add_argument("--n-trials", type=int, help="study trial budget (finished trials), overriding the config")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="trial counts by state and the best values")
    status.add_argument("--storage", help="storage URL (default: HPO_STORAGE, then sqlite:///hpo.db)")
    status.add_argument("--study", help="study name (default: every study in the storage)")
    status.set_defaults(func=_cmd_status)

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
