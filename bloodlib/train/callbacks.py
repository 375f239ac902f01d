"""Keras callbacks that survive a killed run: an atomic epoch log, atomic backups for
resuming, the weight average swapped in for validation, and phase 1 run on cached features.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from bloodlib.core.io import atomic_path, write_json, write_with


def on_classifier(callbacks: list, model, head) -> list:
    """Run phase-1 callbacks (history log, best checkpoint) against the full classifier.

    The head trains in its own small model; before each epoch-end callback sees it, its
    weights are copied into ``model``, so the checkpoint holds a whole model and the history
    has the same columns as image epochs.
    """

    class Sync(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            model.get_layer("head").set_weights(head.get_layer("head").get_weights())
            for cb in callbacks:
                cb.set_model(model)
                cb.on_epoch_end(epoch, logs)

    return [Sync()]


def fit_quietly(model, *args: Any, **kwargs: Any):
    """``model.fit`` without Keras' notice that a tf.data input ignores ``shuffle``.

    Our datasets shuffle themselves (``pipeline.make_dataset``); the notice would only
    clutter notebook outputs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`shuffle=True` was passed", category=UserWarning)
        return model.fit(*args, **kwargs)


def history_logger(path: Path, start: float | None = None):
    """A CSV log of epochs that rewrites ``path`` atomically after each epoch.

    With ``start`` (a ``time.perf_counter()`` reading), each row also records ``seconds``:
    the training wall time at the end of that epoch, in this process (time to accuracy).

    Keras' CSVLogger appends in place: a kill mid-write leaves a torn line, and a second
    writer interleaves its epochs. Here each epoch replaces the whole (small) file.
    """

    class AtomicCSVLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
            if start is not None:
                row["seconds"] = round(time.perf_counter() - start, 1)
            old = None
            if path.is_file() and path.stat().st_size > 0:
                old = pd.read_csv(path)
            rows = pd.DataFrame([row]) if old is None else pd.concat([old, pd.DataFrame([row])])
            write_with(path, lambda tmp: rows.to_csv(tmp, index=False), suffix=".csv")

    return AtomicCSVLogger()


def average_swaps() -> tuple[list, list]:
    """Callbacks before and after the checkpoint and the log, for ``ema_momentum``.

    Keras' ``SwapEMAWeights`` puts the average in the model while validating; at an epoch's
    end the first list puts it in again (for the checkpoint) and the second takes it out, so
    the backup that follows, which must come after the log and the checkpoint (a backed-up
    epoch is logged and checkpointed), saves the raw weights the next epoch trains on.
    """

    class AtEpochEnd(keras.callbacks.SwapEMAWeights):
        """Swaps the weights and their average at each epoch's end, and at no other time."""

        def on_epoch_end(self, epoch, logs=None):
            self._swap_variables()

        def on_test_begin(self, logs=None):
            pass

        def on_test_end(self, logs=None):
            pass

        def on_predict_begin(self, logs=None):
            pass

        def on_predict_end(self, logs=None):
            pass

    return [keras.callbacks.SwapEMAWeights(), AtEpochEnd()], [AtEpochEnd()]


def atomic_backup(path: Path):

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        """BackupAndRestore whose files are replaced atomically.

        Keras writes the backup in place, so a kill during the save (a killed notebook, a
        closed laptop) leaves a corrupt .h5 that stops the resume; its double checkpoint
        does not help on a phase's first save. Weights go first, then the epoch count: a
        kill between the two repeats one epoch rather than skipping one.
        """

        def _save_model(self):
            os.makedirs(self.backup_dir, exist_ok=True)
            with atomic_path(self._weights_path, suffix=".weights.h5") as tmp:
                self.model.save_weights(tmp)
            write_json(
                self._training_metadata_path,
                {"epoch": self._current_epoch, "batch": self._last_batch_seen},
            )

    return AtomicBackupAndRestore(str(path))
