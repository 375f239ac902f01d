"""A fine-tuning recipe: every knob of a run (:class:`FinetuneConfig`, saved in the model's
sidecar) and what its checkpoint watches.

TensorFlow-free, so that lessons and plots can read a recipe without loading Keras.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from bloodlib.core import config

#: What the best-weights checkpoint and early stopping watch: the model kept is the epoch with
#: the highest validation accuracy (the first one, on ties), the number the study reports.
CHECKPOINT_MONITOR = "val_accuracy"
CHECKPOINT_MODE = "max"


#: Cosine decay ends at this fraction of the phase-2 learning rate, not at zero, so the
#: last epochs still learn a little.
COSINE_FINAL_FRACTION = 0.01


@dataclass
class FinetuneConfig:
    """Every knob of a fine-tuning run; saved in the model's sidecar."""

    backbone: str = "efficientnet_lite0"
    image_size: int | None = None  # None: the backbone's native size
    batch_size: int = 32
    epochs_head: int = 3
    # Phase 1 on pooled features computed once (no augmentation), not on images: the frozen
    # backbone's forward pass is paid once instead of every head epoch (seconds per epoch).
    head_on_features: bool = False
    epochs_finetune: int = 12
    learning_rate_head: float = 1e-3
    learning_rate_finetune: float = 3e-4
    schedule: str = "cosine"  # "cosine" or "constant" (phase 2)
    # Phase 2 starts its learning rate at 0 and ramps it linearly over this many epochs: the
    # freshly unfrozen backbone and a new Adam state otherwise take large first steps that
    # undo the head's fit (train accuracy fell from 76% to 38% in one epoch without it).
    warmup_epochs: float = 0.0
    optimizer: str = "adamw"  # "adamw", "adam" or "sgd"
    # Phase 2 keeps an exponential moving average of the weights (0: off); validation, the
    # checkpoint and the saved model use the average. 0.997 averages over ~330 steps (about
    # 2 epochs of the dev data): on the accurate recipe, seeds 42 / 43 98.98 / 99.19 % against
    # 99.34 / 98.76 % without; the mean did not move, so it is off by default.
    ema_momentum: float = 0.0
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    class_weights: bool = False  # "balanced" class weights
    augment: bool = True
    # Other labs' stains, cameras and magnifications (pipeline.augment_other_lab): issue 12.
    augment_domain: bool = False
    # Other labs' dyes: each cell re-stained in optical density (pipeline.restain): issue 12.
    augment_stain: bool = False
    unfreeze_from_block: int = 0  # 0: the whole backbone
    # The network sees the centre square of this fraction of the frame's side (1.0: all of
    # it). PBC's cell sits in the middle: 0.7 computes on half the pixels, cell unchanged.
    crop: float = 1.0
    train_batchnorm: bool = False  # keep BN statistics frozen: small batches, stable fine-tuning
    dropout: float = 0.2
    early_stopping_patience: int = 5
    weights: str | None = "imagenet"
    precision: str = "auto"  # "auto", "float32", "mixed_float16", "mixed_bfloat16"
    cache_images: bool = True  # keep decoded training images in memory after epoch 1
    max_train_images: int | None = None
    seed: int = config.DEFAULT_SEED
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        from bloodlib.models import backbones  # lazy: the registry imports Keras

        return int(self.image_size or backbones.get(self.backbone).input_size)

    @classmethod
    def from_sidecar(cls, config: dict[str, Any]) -> FinetuneConfig:
        """The config a sidecar recorded; keys this bloodlib does not know (older or newer
        versions) are dropped rather than failing."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})


@dataclass
class FinetuneResult:
    model_path: Path
    history: pd.DataFrame
    best_val_accuracy: float
    train_seconds: float
    resumed: bool
