"""Training speed: does the augmenting, caching input pipeline keep the train step busy?

In one run, with one model set up as ``finetune.train`` sets it up for a phase
(same precision policy, trainable layers, optimizer and loss):
  * pipeline: ``model.fit`` on the training dataset of ``finetune._datasets``
    (JPEG files, shuffled, decoded once into the in-memory cache, augmented every epoch);
  * pure: ``model.fit`` on one in-memory batch tensor of the same shape, repeated for
    the same number of steps (no decoding, no augmentation, no shuffling, no slicing).
Each runs ``--epochs`` short epochs (default 3) on N images; epoch 1 fills the
cache and traces the train step, so throughput is taken from epoch 2 on.

Target: pipeline / pure >= 0.85 (images/s of epochs 2..E).

    .venv/bin/python benchmarks/bench_train.py [--images 256 --phase 2 --unfreeze-from-block 3]
"""

from __future__ import annotations

import sys
import time

import _common as C  # first: sets the cache path and sys.path before bloodlib
import numpy as np

TARGET_RATIO = 0.85


def epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall-clock seconds of each epoch."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)
            print(f"    epoch {epoch + 1}: {self.seconds[-1]:.2f} s", flush=True)

    return EpochTimer()


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], images=256, repeats=1)
    p.add_argument("--epochs", type=int, default=3, help="epochs per fit (timed: 2..E)")
    p.add_argument(
        "--phase", type=int, choices=(1, 2), default=2, help="1: head only; 2: fine-tune"
    )
    p.add_argument(
        "--unfreeze-from-block", type=int, default=3, help="phase 2: first trainable block"
    )
    p.add_argument(
        "--no-augment", action="store_true", help="pipeline without augmentation (for comparison)"
    )
    args = C.parse(p, argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: epoch 1 is the warm-up")

    import keras

    from bloodlib import CLASSES
    from bloodlib.train.devices import choose_precision
    from bloodlib.train.finetune import _datasets
    from bloodlib.train.network import _compile, build_classifier, set_trainable
    from bloodlib.train.recipe import FinetuneConfig

    n, bs, size, epochs = args.images, args.batch_size, args.image_size, args.epochs
    chosen = C.choose_images(args.data, n)
    train_df = chosen[["path", "label"]]
    cfg = FinetuneConfig(
        backbone=args.backbone,
        image_size=size,
        batch_size=bs,
        weights="imagenet",
        unfreeze_from_block=args.unfreeze_from_block,
        augment=not args.no_augment,
        cache_images=True,
    )
    precision = choose_precision(cfg.precision)
    keras.mixed_precision.set_global_policy(precision)
    report = C.Report("bench_train", args)
    model = build_classifier(cfg)
    n_trainable = set_trainable(model, cfg, args.phase)
    lr = cfg.learning_rate_head if args.phase == 1 else cfg.learning_rate_finetune
    _compile(model, cfg, lr)
    params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    print(
        f"{n} images from {args.data} ({chosen.attrs['available']} usable"
        + (", so some repeat" if chosen.attrs["repeated"] else "")
        + f"); {args.backbone} at {size}, batch {bs}, phase {args.phase}"
        + (f" from block {args.unfreeze_from_block}" if args.phase == 2 else "")
        + f": {n_trainable} trainable tensors, {params:,} parameters; precision {precision}",
        flush=True,
    )

    import tensorflow as tf

    # The pure reference: the same train step on one batch that already sits in memory as a
    # tensor, repeated for as many steps as the pipeline's epoch has: no decoding, no
    # augmentation, no shuffling, no slicing of a large array (which Keras' NumPy adapter does).
    steps = -(-n // bs)
    index = {c: i for i, c in enumerate(CLASSES)}
    y = keras.utils.to_categorical(train_df["label"].map(index).to_numpy(), len(CLASSES))
    batch = (tf.constant(C.random_images(bs, size)), tf.constant(y[:bs], tf.float32))
    pure_ds = tf.data.Dataset.from_tensors(batch).repeat(steps)

    runs: dict[str, list[list[float]]] = {"pipeline": [], "pure": []}
    for r in range(args.repeats):
        print(f"  repeat {r + 1}/{args.repeats} pipeline (tf.data from JPEG files):", flush=True)
        train_ds, _ = _datasets(cfg, train_df, train_df.iloc[:1], bs)  # fresh, empty cache
        timer = epoch_timer()
        # shuffle=False: the dataset shuffles itself (Keras would only warn).
        model.fit(train_ds, epochs=epochs, shuffle=False, callbacks=[timer], verbose=0)
        runs["pipeline"].append(timer.seconds)

        print(f"  repeat {r + 1}/{args.repeats} pure (one in-memory batch):", flush=True)
        timer = epoch_timer()
        model.fit(pure_ds, epochs=epochs, callbacks=[timer], verbose=0)
        runs["pure"].append(timer.seconds)

    def rate(seconds: list[float]) -> float:  # epochs 2..E
        return n * (len(seconds) - 1) / sum(seconds[1:])

    pipe_ips = max(rate(s) for s in runs["pipeline"])
    pure_ips = max(rate(s) for s in runs["pure"])
    ratio = pipe_ips / pure_ips
    report.add(
        "pipeline, epochs 2..E",
        pipe_ips,
        "images/s",
        f"epoch 1 (decode + cache + trace): {min(s[0] for s in runs['pipeline']):.1f} s",
    )
    report.add(
        "pure in-memory, epochs 2..E",
        pure_ips,
        "images/s",
        f"epoch 1: {min(s[0] for s in runs['pure']):.1f} s",
    )
    report.add("pipeline / pure", ratio, "", "best repeat of each")
    report.check("train pipeline/pure", ratio, TARGET_RATIO)
    report.extra["epoch_seconds"] = runs
    report.extra["precision"] = precision
    report.extra["trainable_parameters"] = params
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
