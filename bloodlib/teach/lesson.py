"""Views of a fine-tuning run for notebook 03: the model as a table, what each phase trains,
the learning-rate schedule, the best epoch, and the run put into words.

Everything here reads what :mod:`bloodlib.train.finetune` builds and logs; nothing trains. Keras is
only touched through the model objects passed in (and imported on first use), so importing
this module is cheap (``bloodlib.teach.plots`` uses :func:`best_epoch`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bloodlib.train.recipe import CHECKPOINT_MODE, CHECKPOINT_MONITOR


def _params(weights: list[Any]) -> int:
    return int(sum(math.prod(int(d) for d in w.shape) for w in weights))


def _is_model(layer: Any) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs")


def _shape(layer: Any) -> str:
    try:
        return str(tuple(layer.output.shape[1:]))
    except (AttributeError, ValueError):  # a layer used at several places has no single output
        return ""


def layer_table(model: Any) -> pd.DataFrame:
    """The classifier layer by layer: the outer model, and the backbone sub-model's parts indented.

    Columns: layer, type, output shape, weights (parameters). What each training phase
    updates is :func:`trainable_by_phase`'s table.
    """
    rows = []

    def add(layer: Any, depth: int) -> None:
        rows.append(
            {
                "layer": "· " * depth + layer.name,
                "type": type(layer).__name__,
                "output shape": _shape(layer),
                "weights": _params(layer.weights),
            }
        )

    for layer in model.layers:
        add(layer, 0)
        if _is_model(layer):
            for inner in layer.layers:
                if type(inner).__name__ != "InputLayer":
                    add(inner, 1)
    return pd.DataFrame(rows)


def trainable_by_phase(model: Any, cfg: Any) -> pd.DataFrame:
    """What each phase of :func:`bloodlib.train.finetune.train` trains, on ``model`` (left in phase 1).

    Columns: phase, trainable tensors, trainable parameters, frozen parameters,
    BatchNorm layers (trainable / total).
    """
    from bloodlib.train.network import set_trainable  # lazy: it imports Keras (see above)

    base = model.layers[1].layers[-1]  # the backbone network inside "<backbone>_features"
    batchnorms = [layer for layer in base.layers if type(layer).__name__ == "BatchNormalization"]
    rows = []
    for phase, label in (
        (1, "1: head only"),
        (2, f"2: fine-tune from block {cfg.unfreeze_from_block}"),
    ):
        tensors = set_trainable(model, cfg, phase)
        trainable = _params(model.trainable_weights)
        bn_trainable = sum(
            bool(layer.trainable) and bool(model.layers[1].trainable) for layer in batchnorms
        )
        rows.append(
            {
                "phase": label,
                "trainable tensors": tensors,
                "trainable parameters": trainable,
                "frozen parameters": _params(model.weights) - trainable,
                "BatchNorm layers trained": f"{bn_trainable} of {len(batchnorms)}",
            }
        )
    set_trainable(model, cfg, 1)
    return pd.DataFrame(rows)


def steps_per_epoch(cfg: Any, n_train: int) -> int:
    """Optimizer steps per epoch, as :func:`bloodlib.train.finetune.train` runs them (one device)."""
    n = min(n_train, cfg.max_train_images) if cfg.max_train_images else n_train
    return max(1, math.ceil(n / cfg.batch_size))


def learning_rate_curve(cfg: Any, n_train: int) -> pd.DataFrame:
    """The learning rate at every optimizer step of both phases.

    Columns: step (counted over both phases), epochs (training progress in epochs), phase,
    learning_rate. Phase 2 uses :func:`bloodlib.train.network.learning_rate_finetune`, the
    schedule training itself uses; its optimizer starts counting steps at 0.
    """
    from bloodlib.train.network import learning_rate_finetune  # lazy: Keras (see above)

    steps = steps_per_epoch(cfg, n_train)
    head = np.full(steps * cfg.epochs_head, float(cfg.learning_rate_head))
    schedule = learning_rate_finetune(cfg, steps)
    n2 = steps * cfg.epochs_finetune
    if callable(schedule):
        fine = np.array([float(schedule(i)) for i in range(n2)], dtype=np.float64)
    else:
        fine = np.full(n2, float(schedule))
    lr = np.concatenate([head, fine])
    step = np.arange(len(lr))
    return pd.DataFrame(
        {
            "step": step,
            "epochs": step / steps,
            "phase": ["head"] * len(head) + ["fine-tune"] * n2,
            "learning_rate": lr,
        }
    )


def best_epoch(
    history: pd.DataFrame, monitor: str = CHECKPOINT_MONITOR, mode: str = CHECKPOINT_MODE
) -> tuple[int, float] | None:
    """The epoch the best-weights checkpoint keeps, numbered as Keras prints it (from 1).

    Keras saves only on a strict improvement, so on ties the first epoch wins. ``history``
    is a CSVLogger log (``epoch`` counted from 0); None when ``monitor`` was never logged.
    """
    if monitor not in history.columns or not history[monitor].notna().any():
        return None
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    h = history.reset_index(drop=True)
    values = h[monitor].astype(float)
    i = int(values.idxmax() if mode == "max" else values.idxmin())
    epoch = int(h["epoch"].iloc[i]) + 1 if "epoch" in h.columns else i + 1
    return epoch, float(values.iloc[i])


def training_sentence(history: pd.DataFrame, cfg: Any) -> str:
    """What the run did, from its log: epochs run, the best epoch kept, what fine-tuning added."""
    planned = cfg.epochs_head + cfg.epochs_finetune
    if history.empty:
        return "No epoch was logged: the run was stopped before its first epoch finished."
    best = best_epoch(history)
    ran = len(history)
    parts = [f"The run logged {ran} of the {planned} planned epochs"]
    if ran < planned and cfg.epochs_finetune and (history["phase"] == "fine-tune").any():
        parts[0] += (
            f" (early stopping ended it: validation accuracy had not improved for "
            f"{cfg.early_stopping_patience} epochs)"
        )
    text = parts[0] + "."
    if best is not None:
        epoch, value = best
        phase = history.loc[history["epoch"] + 1 == epoch, "phase"].iloc[0]
        text += (
            f" Validation accuracy peaked at {value:.1%} in epoch {epoch} ({phase} phase); the "
            f"saved model holds that epoch's weights, because the checkpoint keeps the highest "
            f"{CHECKPOINT_MONITOR}."
        )
    head = history[history["phase"] == "head"]
    fine = history[history["phase"] == "fine-tune"]
    if len(head) and len(fine):
        a, b = float(head["val_accuracy"].max()), float(fine["val_accuracy"].max())
        if b > a:
            text += f" Fine-tuning raised the best validation accuracy from {a:.1%} to {b:.1%}."
        elif b < a:
            text += (
                f" Fine-tuning did not beat the head alone ({b:.1%} against {a:.1%}); "
                "on a small validation split a few cells decide this."
            )
        else:
            text += f" Fine-tuning matched the head alone ({a:.1%})."
    return text
