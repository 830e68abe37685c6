"""Where studies and their artifacts live: storage URLs, the Optuna study storage, the artifact directory.

This package never imports torch.
"""

from storage._artifacts import ArtifactDir
from storage._rdb import (
    FAIL_REASON,
    PAUSED_ATTR,
    LostWorkerCallback,
    claim_study_attr,
    create_storage,
    driver_error,
    first_starts,
    is_storage_error,
    schema_exists,
    set_heartbeat,
    set_paused,
    start_trial,
    timed_out,
    trial_counts,
    upgrade_schema,
)
from storage._url import (
    DEFAULT_STORAGE_URL,
    engine_kwargs,
    redact_text,
    redact_url,
    resolve_storage_url,
    validate_storage_url,
)

__all__ = [
    "DEFAULT_STORAGE_URL",
    "FAIL_REASON",
    "PAUSED_ATTR",
    "ArtifactDir",
    "LostWorkerCallback",
    "claim_study_attr",
    "create_storage",
    "driver_error",
    "engine_kwargs",
    "first_starts",
    "is_storage_error",
    "redact_text",
    "redact_url",
    "resolve_storage_url",
    "schema_exists",
    "set_heartbeat",
    "set_paused",
    "start_trial",
    "timed_out",
    "trial_counts",
    "upgrade_schema",
    "validate_storage_url",
]
