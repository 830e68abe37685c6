"""Cost metrics shared by all workers of a study: one measurement per architecture and hardware.

Latency is an objective, and two processes measuring the same student differ by a few percent on a busy machine
(``bench/latency_stability.py``). Keeping the first measurement in the study, under a key that names the
architecture, the hardware (GPU name, or CPU model and threads), the input and the torch version, makes every
trial of that architecture on that hardware report the same latency, so the Pareto front orders architectures,
not measurement noise; the other workers also skip the measurement.
"""

from __future__ import annotations

import optuna

from storage import claim_study_attr

_PREFIX = "cost:"


class StudyCosts:
    """A :class:`objectives.CostStore` in the study's system attributes (``cost:<key>``), read through a local copy."""

    def __init__(self, study: optuna.Study) -> None:
        self._storage = study._storage
        self._study_id = study._study_id
        self._local: dict[str, dict[str, float]] = {}

    def get(self, key: str, /) -> dict[str, float] | None:
        if key not in self._local:
            stored = self._storage.get_study_system_attrs(self._study_id).get(_PREFIX + key)
            if stored is None:
                return None
            self._local[key] = stored
        return self._local[key]

    def setdefault(self, key: str, value: dict[str, float], /) -> dict[str, float]:
        """Store ``value`` unless another worker stored one first; then keep theirs."""
        if key not in self._local:
            self._local[key] = claim_study_attr(self._storage, self._study_id, _PREFIX + key, value)
        return self._local[key]
