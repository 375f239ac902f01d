"""Design 2 of the paper: fine-tune an ImageNet backbone with a new classifier head.

Two phases: (1) train the head with the backbone frozen; (2) unfreeze the
backbone from a chosen block at a lower learning rate. A killed run resumes:
Keras' BackupAndRestore keeps the last finished epoch of each phase, and a
finished phase leaves its weights behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from bloodlib import CLASS_INDEX, CLASSES
from bloodlib.core import config
from bloodlib.core.hashing import sha256_file, sha256_rows
from bloodlib.core.io import atomic_path, read_json, write_json
from bloodlib.data import split
from bloodlib.data.pipeline import make_dataset
from bloodlib.models import backbones, features
from bloodlib.models.saved import save_classifier, sidecar_path
from bloodlib.train.callbacks import (
    atomic_backup,
    average_swaps,
    fit_quietly,
    history_logger,
    on_classifier,
)
from bloodlib.train.devices import choose_precision, get_strategy
from bloodlib.train.network import (
    build_classifier,
    compile_model,
    float32_copy,
    learning_rate_finetune,
    set_trainable,
)
from bloodlib.train.recipe import (
    CHECKPOINT_MODE,
    CHECKPOINT_MONITOR,
    FinetuneConfig,
    FinetuneResult,
)


def _datasets(cfg: FinetuneConfig, train: pd.DataFrame, val: pd.DataFrame, batch: int):

    index = CLASS_INDEX
    k = len(CLASSES)

    def one_hot(ds):
        return ds.map(lambda x, y: (x, tf.one_hot(y, k)))

    tr = make_dataset(
        train["path"].tolist(),
        train["label"].map(index).to_numpy(),
        image_size=cfg.size,
        batch_size=batch,
        shuffle=True,
        augment=cfg.augment,
        augment_domain=cfg.augment_domain,
        augment_stain=cfg.augment_stain,
        seed=cfg.seed,
        cache=cfg.cache_images,
    )
    va = make_dataset(
        val["path"].tolist(),
        val["label"].map(index).to_numpy(),
        image_size=cfg.size,
        batch_size=batch,
        cache=cfg.cache_images,
    )
    return one_hot(tr), one_hot(va)


def load_history(train_dir: str | Path, epochs_head: int | None = None) -> pd.DataFrame:
    """The epoch log of both phases (CSV, one row per epoch), with a ``phase`` column."""
    path = Path(train_dir) / "history.csv"
    empty = pd.DataFrame(columns=["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "phase"])
    # Keras' CSVLogger (used before the atomic logger) created the file before the first epoch
    # ended: a run killed early could leave it empty.
    if not path.is_file() or path.stat().st_size == 0:
        return empty
    hist = pd.read_csv(path)
    if hist.empty:
        return empty
    # A resumed epoch is logged again: keep its last record.
    hist = hist.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    if epochs_head is None:
        meta = Path(train_dir) / "config.json"
        epochs_head = read_json(meta)["epochs_head"] if meta.is_file() else 0
    hist["phase"] = np.where(hist["epoch"] < epochs_head, "head", "fine-tune")
    return hist


def time_to_accuracy(history: pd.DataFrame, target: float) -> float | None:
    """Training seconds until validation accuracy first reached ``target`` (None: never).

    Reads the ``seconds`` column :func:`train` logs per epoch (the wall time at the end of
    that epoch, in the process that ran it); None as well when the history has no timings.
    """
    if "seconds" not in history.columns or history.empty:
        return None
    hit = history[history["val_accuracy"] >= target]
    if hit.empty or pd.isna(hit["seconds"].iloc[0]):
        return None
    return float(hit["seconds"].iloc[0])


def train(
    cfg: FinetuneConfig,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    run_dir: str | Path,
    name: str | None = None,
    *,
    verbose: int = 2,
) -> FinetuneResult:
    """Fine-tune and save ``run_dir/models/<name>.keras`` with its sidecar.

    ``train_df`` / ``val_df`` need ``path`` and ``label`` columns (a split CSV).
    Re-running after an interruption resumes from the last finished epoch; a
    run whose model already exists with the same config returns at once.
    """

    name = name or f"{cfg.backbone}_finetune"
    run_dir = Path(run_dir)
    model_path = run_dir / "models" / f"{name}.keras"
    train_dir = run_dir / "train" / name
    _start_or_resume(train_dir, model_path, training_identity(cfg, train_df, val_df))
    done_path = train_dir / "done.json"
    if model_path.is_file() and done_path.is_file():
        done = read_json(done_path)
        return FinetuneResult(
            model_path,
            load_history(train_dir),
            done["best_val_accuracy"],
            done["train_seconds"],
            True,
        )

    # An interrupted cell must not leave the kernel in another precision.
    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _train_and_save(cfg, train_df, val_df, model_path, train_dir, verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _hashes(df: pd.DataFrame) -> list[str]:
    """Content hashes of a split frame's files: its ``sha256`` column, else hashed here."""
    known = df["sha256"].fillna("").astype(str) if "sha256" in df.columns else None
    return [
        (known.iloc[i] if known is not None else "") or sha256_file(path)
        for i, path in enumerate(df["path"])
    ]


def _pooled_features(model, cfg: FinetuneConfig, frames, verbose: int):
    """The frozen backbone's pooled features of each frame, and whether all came from the cache."""
    backbone = model.layers[1]  # still holding cfg.weights: phase 1 has not changed it
    if cfg.weights is None:
        # Random weights are not a fact to cache under a name: compute, keep nothing.
        xs = [
            np.asarray(
                backbone.predict(
                    make_dataset(
                        df["path"].tolist(), image_size=cfg.size, batch_size=cfg.batch_size
                    ),
                    verbose=0,
                ),
                np.float32,
            )
            for df in frames
        ]
        return xs, False
    sets = [
        features.extract(
            df["path"].tolist(),
            _hashes(df),
            cfg.backbone,
            image_size=cfg.size,
            weights=cfg.weights,
            batch_size=cfg.batch_size,
            progress=verbose > 0,
            model=backbone,
            crop=cfg.crop,
        )
        for df in frames
    ]
    return [fs.features for fs in sets], all(fs.from_cache for fs in sets)


def fit_head_on_features(
    model,
    cfg: FinetuneConfig,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    *,
    callbacks: list | None = None,
    class_weight: dict | None = None,
    verbose: int = 2,
) -> dict[str, Any]:
    """Phase 1 on cached pooled features: train ``model``'s head, leave the backbone as it is.

    The frozen backbone computes the same features every epoch (augmentation aside), so they
    are extracted once through ``features.extract`` (content-keyed cache: a re-run reads
    them back) and the head (dropout + dense softmax, the same layers as ``model``'s) is fitted
    on them; its weights are then copied into ``model``. Returns the seconds spent extracting
    and fitting, and whether the features came from the cache.
    """

    t0 = time.perf_counter()
    (x_tr, x_va), cached = _pooled_features(model, cfg, (train_df, val_df), verbose)
    t1 = time.perf_counter()
    k = len(CLASSES)
    y_tr = keras.utils.to_categorical(train_df["label"].map(CLASS_INDEX).to_numpy(), k)
    y_va = keras.utils.to_categorical(val_df["label"].map(CLASS_INDEX).to_numpy(), k)
    head_src = model.get_layer("head")
    inputs = keras.Input((x_tr.shape[1],), name="features")
    x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed, name="head_dropout")(inputs)
    outputs = keras.layers.Dense(k, activation="softmax", dtype="float32", name="head")(x)
    head = keras.Model(inputs, outputs, name="head_on_features")
    compile_model(head, cfg, cfg.learning_rate_head)
    head.fit(
        x_tr,
        y_tr,
        validation_data=(x_va, y_va),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs_head,
        shuffle=True,
        class_weight=class_weight,
        callbacks=on_classifier(callbacks or [], model, head),
        verbose=verbose,
    )
    head_src.set_weights(head.get_layer("head").get_weights())
    return {
        "feature_seconds": round(t1 - t0, 1),
        "head_seconds": round(time.perf_counter() - t1, 1),
        "features_cached": cached,
    }


def _files_digest(df: pd.DataFrame) -> str:
    """SHA-256 over a split frame's (content hash, label) rows, in order.

    The split's ``sha256`` column is used where present; other rows hash their file.
    """
    return sha256_rows(zip(_hashes(df), df["label"], strict=True))


def training_identity(cfg: FinetuneConfig, train_df: pd.DataFrame, val_df: pd.DataFrame) -> dict:
    """What a training run is: its configuration and the content of its train and val files.

    Saved as ``train/<name>/config.json``; a finished or interrupted run is reused only when
    this matches exactly.
    """
    identity = {
        **asdict(cfg),
        "train_files": _files_digest(train_df),
        "val_files": _files_digest(val_df),
    }
    for key, default in (("crop", 1.0), ("ema_momentum", 0.0), ("augment_stain", False)):
        if identity[key] == default:  # added later: models trained before it stay theirs
            del identity[key]
    return json.loads(json.dumps(identity))  # as read back from JSON: lists, not tuples


def _start_or_resume(train_dir: Path, model_path: Path, identity: dict) -> None:
    """Keep ``train_dir`` when it holds this very training; otherwise start afresh.

    The old state (history, checkpoints, backups, the finished model) is moved aside in one
    rename, then deleted, so two configurations never mix epochs in one history.csv and a
    kill midway leaves either the old state or none.
    """
    for stale in train_dir.parent.glob(f".{train_dir.name}.stale-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while discarding
    meta_path = train_dir / "config.json"
    try:
        current = read_json(meta_path)
    except (OSError, ValueError):
        current = None
    if current == identity:
        return
    if train_dir.exists():
        stale = train_dir.with_name(f".{train_dir.name}.stale-{os.getpid()}-{time.time_ns()}")
        os.replace(train_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
    model_path.unlink(missing_ok=True)
    sidecar_path(model_path).unlink(missing_ok=True)
    train_dir.mkdir(parents=True, exist_ok=True)
    write_json(meta_path, identity)


@dataclass
class _Logs:
    """What both phases write to ``train_dir``: the best checkpoint, the epoch log, TensorBoard.

    ``start`` is this process's clock at the start of training: the history's ``seconds``
    and the sidecar's ``train_seconds`` count from it (a resumed run counts its own part).
    """

    train_dir: Path
    epochs_head: int
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        prior = load_history(self.train_dir, self.epochs_head)
        self.resumed = len(prior) > 0
        best_so_far = float(prior[CHECKPOINT_MONITOR].max()) if len(prior) else None
        self.best_path = self.train_dir / "best.weights.h5"
        self.checkpoint = keras.callbacks.ModelCheckpoint(
            self.best_path,
            monitor=CHECKPOINT_MONITOR,
            mode=CHECKPOINT_MODE,
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_so_far,
        )

    def history(self):
        return history_logger(self.train_dir / "history.csv", self.start)

    def common(self) -> list:
        """The callbacks of every image epoch (both phases)."""
        return [
            self.checkpoint,
            self.history(),
            keras.callbacks.TensorBoard(self.train_dir / "tensorboard", profile_batch=0),
            keras.callbacks.TerminateOnNaN(),
        ]


def _train_and_save(
    cfg: FinetuneConfig,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    model_path: Path,
    train_dir: Path,
    verbose: int,
) -> FinetuneResult:
    """Both phases (resuming where a previous process stopped), then the model and sidecar."""
    config.set_seeds(cfg.seed)
    if cfg.max_train_images and len(train_df) > cfg.max_train_images:
        train_df = train_df.sample(cfg.max_train_images, random_state=cfg.seed)
    precision = choose_precision(cfg.precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = get_strategy()
    batch = cfg.batch_size * strategy.num_replicas_in_sync
    data = _datasets(cfg, train_df, val_df, batch)
    steps = int(np.ceil(len(train_df) / batch))
    with strategy.scope():
        model = build_classifier(cfg)
    class_weight = _class_weight(cfg, train_df)
    logs = _Logs(train_dir, cfg.epochs_head)
    fit = {"class_weight": class_weight, "verbose": verbose}
    with strategy.scope():
        set_trainable(model, cfg, phase=1)
        compile_model(model, cfg, cfg.learning_rate_head)
    _phase1(model, cfg, strategy, (train_df, val_df), data, logs, fit)
    if cfg.epochs_finetune > 0:
        _phase2(model, cfg, strategy, data, steps, logs, fit)
    train_seconds = time.perf_counter() - logs.start
    _keep_best(model, logs.best_path)
    history = load_history(train_dir, cfg.epochs_head)
    best_val = float(history["val_accuracy"].max()) if len(history) else float("nan")
    keras.mixed_precision.set_global_policy("float32")
    save_model(
        model,
        cfg,
        model_path,
        precision=precision,
        train_images=len(train_df),
        val_images=len(val_df),
        trained_on=split.trained_on(_with_hashes(train_df), _with_hashes(val_df)),
        metrics={
            "best_val_accuracy": best_val,
            "train_seconds": round(train_seconds, 1),
            **_phase1_record(train_dir),
        },
    )
    write_json(
        train_dir / "done.json", {"best_val_accuracy": best_val, "train_seconds": train_seconds}
    )
    return FinetuneResult(model_path, history, best_val, train_seconds, logs.resumed)


def _class_weight(cfg: FinetuneConfig, train_df: pd.DataFrame) -> dict[int, float] | None:
    """ "balanced" weights of the classes present in training (``cfg.class_weights``), else None."""
    if not cfg.class_weights:
        return None
    y = train_df["label"].map(CLASS_INDEX).to_numpy()
    present = np.unique(y)
    w = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(v) for c, v in zip(present, w, strict=True)}


def _phase1(model, cfg, strategy, frames, data, logs: _Logs, fit: dict) -> None:
    """The head alone, on images or on cached features; a finished phase 1 is loaded instead."""
    train_dir = logs.train_dir
    phase1_path = train_dir / "phase1.weights.h5"
    if phase1_path.is_file():
        with warnings.catch_warnings():
            # The file also holds phase 1's finished optimizer state, which phase 2 replaces.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(phase1_path)
        return
    if cfg.epochs_head <= 0:
        return
    if cfg.head_on_features:
        with strategy.scope():
            seconds = fit_head_on_features(
                model, cfg, *frames, callbacks=[logs.checkpoint, logs.history()], **fit
            )
        write_json(train_dir / "phase1.json", seconds)
    else:
        fit_quietly(
            model,
            data[0],
            validation_data=data[1],
            epochs=cfg.epochs_head,
            callbacks=[*logs.common(), atomic_backup(train_dir / "backup_phase1")],
            **fit,
        )
    with atomic_path(phase1_path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)


def _phase2(model, cfg, strategy, data, steps: int, logs: _Logs, fit: dict) -> None:
    """Unfreeze from the chosen block, lower the learning rate, stop early on validation."""
    with strategy.scope():
        set_trainable(model, cfg, phase=2)
        compile_model(model, cfg, learning_rate_finetune(cfg, steps), ema=True)
    model._initial_epoch = None  # BackupAndRestore of phase 1 set it; phase 2 has its own
    # With an average: validation runs on it, the checkpoint saves it, and the backup, last,
    # saves the raw weights (the optimizer holds the average), so a resume goes on exactly.
    swap_in, swap_out = average_swaps() if cfg.ema_momentum else ([], [])
    fit_quietly(
        model,
        data[0],
        validation_data=data[1],
        initial_epoch=cfg.epochs_head,
        epochs=cfg.epochs_head + cfg.epochs_finetune,
        callbacks=[
            *swap_in,
            *logs.common(),
            *swap_out,
            atomic_backup(logs.train_dir / "backup_phase2"),
            keras.callbacks.EarlyStopping(
                monitor=CHECKPOINT_MONITOR,
                mode=CHECKPOINT_MODE,
                patience=cfg.early_stopping_patience,
            ),
        ],
        **fit,
    )


def _keep_best(model, best_path: Path) -> None:
    """The best epoch's weights, if its checkpoint is readable."""
    if not best_path.is_file():
        return
    try:
        model.load_weights(best_path)
    except OSError as exc:  # killed while Keras wrote it in place: keep the last weights
        warnings.warn(
            f"best checkpoint unreadable ({exc}); keeping the last epoch's weights",
            stacklevel=3,
        )


def _with_hashes(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(sha256=_hashes(df))


def _phase1_record(train_dir: Path) -> dict[str, Any]:
    """The head-on-features phase's timings (``phase1.json``), when phase 1 ran that way."""
    path = train_dir / "phase1.json"
    return {"head_on_features": read_json(path)} if path.is_file() else {}


def save_model(model, cfg: FinetuneConfig, model_path: str | Path, **extra: Any) -> Path:
    """Save a classifier in Keras format (atomically) with its bound JSON sidecar.

    A model trained under mixed precision is saved as a float32 copy (same weights): its
    bfloat16/float16 layers would otherwise be saved with it, which the TensorFlow Lite
    engine cannot convert and the sidecar's ``precision`` would contradict.
    """
    model_path = Path(model_path)
    model = float32_copy(model, cfg)
    bb = backbones.get(cfg.backbone)
    return save_classifier(
        model,
        model_path,
        {
            "name": model_path.stem,
            "method": "finetune",
            "backbone": cfg.backbone,
            "classes": list(CLASSES),
            "image_size": cfg.size,
            "input": "RGB float32 0..255, resized; preprocessing is inside the model",
            "preprocessing": bb.preprocessing,
            "weights": cfg.weights,
            "weights_origin": bb.weights_origin if cfg.weights == "imagenet" else str(cfg.weights),
            "precision": "float32",
            "config": asdict(cfg),
            **extra,
        },
    )
