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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASS_INDEX, CLASSES
from bloodlib.core import config
from bloodlib.core.hashing import sha256_file, sha256_rows
from bloodlib.core.io import atomic_path, read_json, write_json, write_with
from bloodlib.models import backbones
from bloodlib.models.saved import save_classifier, sidecar_path

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


def choose_precision(requested: str = "auto") -> str:
    """``auto``: mixed_float16 on GPUs, float32 on CPUs.

    bfloat16 is not chosen on CPUs even where they have AMX / AVX512-BF16: measured on a 2-core
    AMX Xeon, the sample profile's Lite0 fine-tune took 178 CPU-seconds in mixed_bfloat16
    against 98 in float32 (same split and seed) and was no more accurate. Ask for
    ``mixed_bfloat16`` explicitly to try it on another CPU.
    """
    import tensorflow as tf

    if requested != "auto":
        return requested
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


def get_strategy():
    """MultiWorkerMirrored under TF_CONFIG, Mirrored with several GPUs, else the default.

    Under ``TF_CONFIG`` (one process per worker, see the README) every call in a process
    returns the same strategy: creating it configures TensorFlow's collective ops, which
    works once, before any other TensorFlow work in the process.
    """
    import tensorflow as tf

    global _MULTI_WORKER
    if os.environ.get("TF_CONFIG"):
        if _MULTI_WORKER is None:
            _MULTI_WORKER = _multi_worker_strategy(os.environ["TF_CONFIG"])
        return _MULTI_WORKER
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


#: The process's multi-worker strategy, once created (see get_strategy).
_MULTI_WORKER: Any = None


def _multi_worker_strategy(tf_config: str):
    """A MultiWorkerMirroredStrategy that Keras 3's ``fit`` can use, after checking TF_CONFIG.

    Keras 3.15 hands ``strategy.reduce`` a nested batch (to build the model symbolically) and
    scalar logs with ``axis=0`` (the loss, metrics), which TensorFlow's multi-worker strategy
    rejects (keras-team/keras#20585). This subclass reduces each tensor of a nest on its own,
    over the replicas only when it is a scalar; everything else is TensorFlow's own.
    """
    import tensorflow as tf

    from bloodlib.core.errors import BloodlibError

    def bad(problem: str) -> BloodlibError:
        return BloodlibError(
            f"TF_CONFIG {problem}. Set it per worker process, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}} (index 1 on the second machine), '
            "or unset it to train in one process"
        )

    try:
        spec = json.loads(tf_config)
    except ValueError as exc:
        raise bad(f"is not valid JSON ({exc})") from exc
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise bad("has no 'cluster' (a mapping of job names to 'host:port' lists)")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise bad(f"'task' {task!r} does not name a job of its cluster ({', '.join(cluster)})")
    hosts = cluster[task["type"]]
    index = task.get("index")
    if not isinstance(hosts, list) or not isinstance(index, int) or not 0 <= index < len(hosts):
        raise bad(f"'task' index {index!r} is not a position in cluster[{task['type']!r}]")

    class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):  # the fix: see the docstring above
            def one(v):
                local = self.experimental_local_results(v)[0]
                rank = getattr(getattr(local, "shape", None), "rank", None)
                return super(KerasMultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, v, None if rank == 0 else axis
                )

            return tf.nest.map_structure(one, value)

    try:
        return KerasMultiWorkerMirroredStrategy()
    except RuntimeError as exc:
        if "program startup" not in str(exc):
            raise
        raise BloodlibError(
            "the multi-worker strategy (TF_CONFIG is set) must be created before any other "
            "TensorFlow work in the process: call bloodlib.train.finetune.get_strategy() first "
            f"(in a notebook: in its first code cell), then train ({exc})"
        ) from exc


def build_classifier(cfg: FinetuneConfig, n_classes: int = len(CLASSES)):
    """Backbone (with its preprocessing) + dropout + softmax head. Input: raw 0..255 RGB."""
    import keras

    size = cfg.size
    features = backbones.build_feature_extractor(cfg.backbone, size, cfg.weights, cfg.crop)
    inputs = keras.Input((size, size, 3), name="image")
    x = features(inputs)
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    # float32 output keeps softmax and the loss numerically safe under mixed precision.
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs, name=f"{cfg.backbone}_classifier")


def whole_frame(model, cfg: FinetuneConfig):
    """``model`` (built with ``cfg``) without its centre crop: the same weights, whole frame.

    The backbone is convolutional up to a global pooling, so it runs at any input size: the
    copy sees the whole frame at the pixel scale the model learnt. For other labs' cells,
    which fill their frame, where a crop would cut them (``adapt`` uses it). A model without
    a crop is returned as it is.
    """
    if cfg.crop == 1.0:
        return model
    whole = build_classifier(replace(cfg, crop=1.0, weights=None), model.output_shape[-1])
    whole.set_weights(model.get_weights())  # CenterCrop has no weights: the rest line up
    return whole


def set_trainable(model, cfg: FinetuneConfig, phase: int) -> int:
    """Freeze/unfreeze for a phase; returns the number of trainable weights tensors."""
    feat = model.layers[1]  # the "<backbone>_features" sub-model
    base = feat.layers[-1]  # the keras.applications / Lite0 network
    bb = backbones.get(cfg.backbone)
    if phase == 1:
        feat.trainable = False
    else:
        feat.trainable = True
        start = bb.block_start([layer.name for layer in base.layers], cfg.unfreeze_from_block)
        for n, layer in enumerate(base.layers):
            layer.trainable = n >= start
            if not cfg.train_batchnorm and layer.__class__.__name__ == "BatchNormalization":
                layer.trainable = False
    return len(model.trainable_weights)


def learning_rate_finetune(cfg: FinetuneConfig, steps_per_epoch: int):
    """Phase 2's learning rate: a float (``constant``) or a Keras cosine-decay schedule."""
    import keras

    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "cosine":
        total = max(1, steps_per_epoch * cfg.epochs_finetune)
        if warmup > 0:
            return keras.optimizers.schedules.CosineDecay(
                0.0,
                decay_steps=max(1, total - warmup),
                alpha=COSINE_FINAL_FRACTION,
                warmup_target=cfg.learning_rate_finetune,
                warmup_steps=warmup,
            )
        return keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate_finetune, decay_steps=total, alpha=COSINE_FINAL_FRACTION
        )
    if cfg.schedule == "constant":
        if warmup > 0:
            raise ValueError("warmup_epochs needs schedule='cosine'")
        return cfg.learning_rate_finetune
    raise ValueError(f"unknown schedule {cfg.schedule!r}; use 'cosine' or 'constant'")


def _optimizer(cfg: FinetuneConfig, lr, ema: bool = False):
    import keras

    kw: dict[str, Any] = (
        {"use_ema": True, "ema_momentum": cfg.ema_momentum} if ema and cfg.ema_momentum else {}
    )
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **kw)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, **kw)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **kw)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def _compile(model, cfg: FinetuneConfig, lr, ema: bool = False) -> None:
    import keras

    model.compile(
        optimizer=_optimizer(cfg, lr, ema),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _datasets(cfg: FinetuneConfig, train: pd.DataFrame, val: pd.DataFrame, batch: int):
    import tensorflow as tf

    from bloodlib.data.pipeline import make_dataset

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
    import keras

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
    import keras

    from bloodlib.data.pipeline import make_dataset
    from bloodlib.models import features

    t0 = time.perf_counter()
    backbone = model.layers[1]  # still holding cfg.weights: phase 1 has not changed it
    if cfg.weights is None:
        # Random weights are not a fact to cache under a name: compute, keep nothing.
        x_tr, x_va = (
            np.asarray(
                backbone.predict(
                    make_dataset(
                        df["path"].tolist(), image_size=cfg.size, batch_size=cfg.batch_size
                    ),
                    verbose=0,
                ),
                np.float32,
            )
            for df in (train_df, val_df)
        )
        cached = False
    else:
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
            for df in (train_df, val_df)
        ]
        x_tr, x_va = (s.features for s in sets)
        cached = all(s.from_cache for s in sets)
    t1 = time.perf_counter()
    k = len(CLASSES)
    y_tr = keras.utils.to_categorical(train_df["label"].map(CLASS_INDEX).to_numpy(), k)
    y_va = keras.utils.to_categorical(val_df["label"].map(CLASS_INDEX).to_numpy(), k)
    head_src = model.get_layer("head")
    inputs = keras.Input((x_tr.shape[1],), name="features")
    x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed, name="head_dropout")(inputs)
    outputs = keras.layers.Dense(k, activation="softmax", dtype="float32", name="head")(x)
    head = keras.Model(inputs, outputs, name="head_on_features")
    _compile(head, cfg, cfg.learning_rate_head)
    head.fit(
        x_tr,
        y_tr,
        validation_data=(x_va, y_va),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs_head,
        shuffle=True,
        class_weight=class_weight,
        callbacks=_on_classifier(callbacks or [], model, head),
        verbose=verbose,
    )
    head_src.set_weights(head.get_layer("head").get_weights())
    return {
        "feature_seconds": round(t1 - t0, 1),
        "head_seconds": round(time.perf_counter() - t1, 1),
        "features_cached": cached,
    }


def _on_classifier(callbacks: list, model, head) -> list:
    """Run phase-1 callbacks (history log, best checkpoint) against the full classifier.

    The head trains in its own small model; before each epoch-end callback sees it, its
    weights are copied into ``model``, so the checkpoint holds a whole model and the history
    has the same columns as image epochs.
    """
    import keras

    class Sync(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            model.get_layer("head").set_weights(head.get_layer("head").get_weights())
            for cb in callbacks:
                cb.set_model(model)
                cb.on_epoch_end(epoch, logs)

    return [Sync()]


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


def _train_and_save(
    cfg: FinetuneConfig,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    model_path: Path,
    train_dir: Path,
    verbose: int,
) -> FinetuneResult:
    """Both phases (resuming where a previous process stopped), then the model and sidecar."""
    import keras

    done_path = train_dir / "done.json"
    config.set_seeds(cfg.seed)
    if cfg.max_train_images and len(train_df) > cfg.max_train_images:
        train_df = train_df.sample(cfg.max_train_images, random_state=cfg.seed)
    precision = choose_precision(cfg.precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = get_strategy()
    batch = cfg.batch_size * strategy.num_replicas_in_sync
    train_ds, val_ds = _datasets(cfg, train_df, val_df, batch)
    steps = int(np.ceil(len(train_df) / batch))

    with strategy.scope():
        model = build_classifier(cfg)

    class_weight = None
    if cfg.class_weights:
        from sklearn.utils.class_weight import compute_class_weight

        y = train_df["label"].map(CLASS_INDEX).to_numpy()
        present = np.unique(y)
        w = compute_class_weight("balanced", classes=present, y=y)
        class_weight = {int(c): float(v) for c, v in zip(present, w, strict=True)}

    hist_csv = train_dir / "history.csv"
    prior = load_history(train_dir, cfg.epochs_head)
    best_so_far = float(prior[CHECKPOINT_MONITOR].max()) if len(prior) else None
    best_path = train_dir / "best.weights.h5"
    checkpoint = keras.callbacks.ModelCheckpoint(
        best_path,
        monitor=CHECKPOINT_MONITOR,
        mode=CHECKPOINT_MODE,
        save_best_only=True,
        save_weights_only=True,
        initial_value_threshold=best_so_far,
    )
    start = time.perf_counter()
    common = [
        checkpoint,
        _history_logger(hist_csv, start),
        keras.callbacks.TensorBoard(train_dir / "tensorboard", profile_batch=0),
        keras.callbacks.TerminateOnNaN(),
    ]
    resumed = len(prior) > 0

    # Phase 1: head only.
    phase1_path = train_dir / "phase1.weights.h5"
    with strategy.scope():
        set_trainable(model, cfg, phase=1)
        _compile(model, cfg, cfg.learning_rate_head)
    if phase1_path.is_file():
        with warnings.catch_warnings():
            # The file also holds phase 1's finished optimizer state, which phase 2 replaces.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(phase1_path)
    elif cfg.epochs_head > 0 and cfg.head_on_features:
        with strategy.scope():
            head_seconds = fit_head_on_features(
                model,
                cfg,
                train_df,
                val_df,
                callbacks=[checkpoint, _history_logger(hist_csv, start)],
                class_weight=class_weight,
                verbose=verbose,
            )
        with atomic_path(phase1_path, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
        write_json(train_dir / "phase1.json", head_seconds)
    elif cfg.epochs_head > 0:
        _fit(
            model,
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs_head,
            class_weight=class_weight,
            callbacks=[*common, _backup(train_dir / "backup_phase1")],
            verbose=verbose,
        )
        with atomic_path(phase1_path, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)

    # Phase 2: unfreeze from the chosen block, lower learning rate.
    if cfg.epochs_finetune > 0:
        with strategy.scope():
            set_trainable(model, cfg, phase=2)
            _compile(model, cfg, learning_rate_finetune(cfg, steps), ema=True)
        model._initial_epoch = None  # BackupAndRestore of phase 1 set it; phase 2 has its own
        # With an average: validation runs on it, the checkpoint saves it, and the backup, last,
        # saves the raw weights (the optimizer holds the average), so a resume goes on exactly.
        swap_in, swap_out = _average_swaps() if cfg.ema_momentum else ([], [])
        _fit(
            model,
            train_ds,
            validation_data=val_ds,
            initial_epoch=cfg.epochs_head,
            epochs=cfg.epochs_head + cfg.epochs_finetune,
            class_weight=class_weight,
            callbacks=[
                *swap_in,
                *common,
                *swap_out,
                _backup(train_dir / "backup_phase2"),
                keras.callbacks.EarlyStopping(
                    monitor=CHECKPOINT_MONITOR,
                    mode=CHECKPOINT_MODE,
                    patience=cfg.early_stopping_patience,
                ),
            ],
            verbose=verbose,
        )
    train_seconds = (
        time.perf_counter() - start
    )  # this process only; a resumed run counts its own part

    if best_path.is_file():
        try:
            model.load_weights(best_path)
        except OSError as exc:  # killed while Keras wrote it in place: keep the last weights
            warnings.warn(
                f"best checkpoint unreadable ({exc}); keeping the last epoch's weights",
                stacklevel=2,
            )
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
        metrics={
            "best_val_accuracy": best_val,
            "train_seconds": round(train_seconds, 1),
            **_phase1_record(train_dir),
        },
    )
    write_json(done_path, {"best_val_accuracy": best_val, "train_seconds": train_seconds})
    return FinetuneResult(model_path, history, best_val, train_seconds, resumed)


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
    model = _float32(model, cfg)
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


def _float32(model, cfg: FinetuneConfig):
    """``model`` itself when its layers compute in float32, else a float32 rebuild with its weights."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers[:-1]):
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_classifier(replace(cfg, weights=None))  # weights come from ``model``
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def _fit(model, *args: Any, **kwargs: Any):
    """``model.fit`` without Keras' notice that a tf.data input ignores ``shuffle``.

    Our datasets shuffle themselves (``pipeline.make_dataset``); the notice would only
    clutter notebook outputs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`shuffle=True` was passed", category=UserWarning)
        return model.fit(*args, **kwargs)


def _history_logger(path: Path, start: float | None = None):
    """A CSV log of epochs that rewrites ``path`` atomically after each epoch.

    With ``start`` (a ``time.perf_counter()`` reading), each row also records ``seconds``:
    the training wall time at the end of that epoch, in this process (time to accuracy).

    Keras' CSVLogger appends in place: a kill mid-write leaves a torn line, and a second
    writer interleaves its epochs. Here each epoch replaces the whole (small) file.
    """
    import keras

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


def _average_swaps() -> tuple[list, list]:
    """Callbacks before and after the checkpoint and the log, for ``ema_momentum``.

    Keras' ``SwapEMAWeights`` puts the average in the model while validating; at an epoch's
    end the first list puts it in again (for the checkpoint) and the second takes it out, so
    the backup that follows, which must come after the log and the checkpoint (a backed-up
    epoch is logged and checkpointed), saves the raw weights the next epoch trains on.
    """
    import keras

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


def _backup(path: Path):
    import keras

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
