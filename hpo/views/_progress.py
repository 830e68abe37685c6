"""Progress bars of ``hpo run`` / ``hpo worker`` on a terminal: trials finished of the study budget, and the steps of
the model training now (teacher or trial) with its loss and last validation accuracy.

The CLI turns them on only when stderr is a terminal; a log file or a pipe gets the plain log lines. ``hpo train``
shows a bar per evaluation pass the same way (plain logs get its INFO lines).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class Progress:
    """Two bars: the study's finished trials of its budget, and the steps of the current training run."""

    def __init__(self, budget: int | None, finished: int = 0, file: TextIO | None = None) -> None:
        self.file = file or sys.stderr
        self.trials = tqdm(
            total=budget, initial=finished, desc="trials", unit="trial", position=0, file=self.file, leave=True
        )
        self.steps: tqdm | None = None
        self.val_accuracy: float | None = None
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()  # log lines print above the bars instead of through them

    def on_step(self, step: int, total: int, loss: float | None, val_accuracy: float | None) -> None:
        """The ``objectives.StepCallback`` of the current run."""
        bar = self.steps
        if bar is None:
            return
        if bar.total != total:
            bar.reset(total=total)
        if val_accuracy is not None:
            self.val_accuracy = val_accuracy
        if loss is not None or val_accuracy is not None:
            shown = {}
            if loss is not None:
                shown["loss"] = f"{loss:.4f}"
            if self.val_accuracy is not None:
                shown["val_acc"] = f"{self.val_accuracy:.4f}"
            bar.set_postfix(shown, refresh=False)
        bar.update(step - bar.n)

    @contextlib.contextmanager
    def training(self, label: str) -> Iterator[None]:
        """Show a step bar for ``label`` (e.g. ``trial 3``) while every ``train`` call in the block runs."""
        self.steps = tqdm(desc=label, unit="step", position=1, file=self.file, leave=False)
        self.val_accuracy = None
        try:
            from objectives import report_steps  # torch: only once a trial runs

            with report_steps(self.on_step):
                yield
        finally:
            self.steps.close()
            self.steps = None

    def finished(self, count: int) -> None:
        """The study now has ``count`` finished trials (from every worker)."""
        self.trials.update(count - self.trials.n)

    def close(self) -> None:
        if self.steps is not None:
            self.steps.close()
        self.trials.close()
        self._redirect.__exit__(None, None, None)


@contextlib.contextmanager
def evaluation_bars(file: TextIO | None = None) -> Iterator[None]:
    """A bar for each evaluation pass (rows done of the pass) of the models trained or scored in the block, in place
    of the INFO lines that ``objectives.report_evaluation`` otherwise logs."""
    from objectives import report_evaluation  # torch: only once a model is evaluated

    bar: tqdm | None = None

    def on_batch(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="evaluating", unit="row", file=file or sys.stderr, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            bar = None

    with logging_redirect_tqdm(), report_evaluation(on_batch):
        try:
            yield
        finally:
            if bar is not None:
                bar.close()
