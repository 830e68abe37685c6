"""Where studies and their artifacts live: storage URLs, the Optuna study storage, the artifact store (a folder or
an object-store URL, with a per-node cache) and the leases that decide which process writes an artifact.

This package never imports torch.
"""

from storage._artifacts import CACHE_ENV, ArtifactDir, default_cache, store_protocol, store_root
from storage._lease import Leases
from storage._rdb import (
    FAIL_REASON,
    PAUSED_ATTR,
    LostWorkerCallback,
    claim_study_attr,
    create_storage,
    driver_error,
    first_starts,
    is_storage_error,
    retry_trial,
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
    POOL_SIZE_ENV,
    engine_kwargs,
    pool_size,
    redact_text,
    redact_url,
    resolve_storage_url,
    validate_storage_url,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_STORAGE_URL",
    "FAIL_REASON",
    "PAUSED_ATTR",
    "POOL_SIZE_ENV",
    "ArtifactDir",
    "Leases",
    "LostWorkerCallback",
    "claim_study_attr",
    "create_storage",
    "default_cache",
    "driver_error",
    "engine_kwargs",
    "first_starts",
    "is_storage_error",
    "pool_size",
    "redact_text",
    "redact_url",
    "resolve_storage_url",
    "retry_trial",
    "schema_exists",
    "set_heartbeat",
    "set_paused",
    "start_trial",
    "store_protocol",
    "store_root",
    "timed_out",
    "trial_counts",
    "upgrade_schema",
    "validate_storage_url",
]
