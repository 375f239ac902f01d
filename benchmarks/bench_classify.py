"""Classification speed: ``classify_folder`` end to end against the model's pure forward pass.

In one run:
  * a fine-tuning classifier (backbone + untrained head: speed does not depend on
    the weights' values) is saved as ``models/x.keras`` with the sidecar that
    ``finetune.train`` writes; ``--crop 0.7`` builds it as the ``full`` and ``accurate``
    profiles do (the network computes on the centre of the frame, decoding is unchanged);
  * N dev images are copied into a temporary folder in the class layout (copied, not
    linked: ``classify`` refuses symbolic links that leave the folder it classifies);
  * ``classify_folder`` is timed end to end: model load, file checks, decoding,
    prediction, the metrics against the folder labels and the CSV;
  * beside it, on in-memory tensors of the same shape: the pure forward pass of the
    engine that ``classify_folder`` uses (``--engine``; ``auto`` = the cached TFLite
    copy on a CPU-only machine), and Keras' own ``model.predict`` for reference;
  * the model load alone, and the one-time TFLite conversion (the first call on a
    new model file pays it; later calls read the cached copy).

Targets: >= 50 images/s end to end with efficientnet_lite0 at 224 on 2 CPU cores; end to end
at least 0.85 of the engine's pure forward (issue 11).

    .venv/bin/python benchmarks/bench_classify.py [--images 512 --batch-size 32 --repeats 3]
        [--crop 0.7]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import _common as C  # first: sets the cache path and sys.path before bloodlib

TARGET_IMAGES_PER_S = 50.0
#: End to end / pure forward (issue 11): decoding and file checks should cost little beside
#: the network.
TARGET_RATIO = 0.85


def copy_images(chosen, folder: Path) -> None:
    """Copy the chosen files into ``folder/<label>/``, with unique names."""
    for i, (path, label) in enumerate(zip(chosen["path"], chosen["label"], strict=True)):
        dest = folder / label / f"{i:05d}_{Path(path).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], images=512)
    p.add_argument("--engine", choices=("auto", "keras", "tflite"), default="auto")
    p.add_argument(
        "--crop",
        type=float,
        default=1.0,
        help="centre fraction of the frame the network computes on (the full profile: 0.7)",
    )
    args = C.parse(p, argv)

    import time

    import keras

    from bloodlib.predict import inference
    from bloodlib.predict.classify import classify_folder
    from bloodlib.predict.engine import load_classifier
    from bloodlib.train.finetune import save_model
    from bloodlib.train.network import build_classifier
    from bloodlib.train.recipe import FinetuneConfig

    n, bs, size = args.images, args.batch_size, args.image_size
    chosen = C.choose_images(args.data, n)
    report = C.Report("bench_classify", args)
    print(
        f"{n} images from {args.data} ({chosen.attrs['available']} usable"
        + (", so some repeat" if chosen.attrs["repeated"] else "")
        + f"); {args.backbone} at {size}, batch {bs}",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="bloodlib-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = FinetuneConfig(
            backbone=args.backbone,
            image_size=size,
            batch_size=bs,
            weights="imagenet",
            crop=args.crop,
        )
        model_path = tmp / "models" / "x.keras"
        save_model(build_classifier(cfg), cfg, model_path, note="benchmark model: untrained head")
        keras.backend.clear_session()  # the timed runs load the saved file, as a user would
        folder, warm_folder = tmp / "images", tmp / "warm"
        copy_images(chosen, folder)
        copy_images(chosen.iloc[: min(bs, n)], warm_folder)

        results = {}

        def end_to_end():
            results["e2e"] = classify_folder(
                model_path,
                folder,
                tmp / "predictions.csv",
                batch_size=bs,
                progress=False,
                engine=args.engine,
            )

        def load():
            load_classifier(model_path)

        clf = load_classifier(model_path)
        start = time.perf_counter()
        forward, engine = inference.forward_fn(
            clf.model, model_sha256=clf.sha256, engine=args.engine, batch_size=bs
        )
        prepare = time.perf_counter() - start  # TFLite: the one-time conversion, now cached
        x = C.random_images(n, size)
        rest = n % bs

        def pure():
            forward(x)

        def keras_predict():
            clf.model.predict(x, batch_size=bs, verbose=0)

        def warm_e2e():  # first-call costs of the process (imports, TF start-up) on one batch
            classify_folder(
                model_path, warm_folder, None, batch_size=bs, progress=False, engine=args.engine
            )

        def warm_pure():
            forward(x[:bs])
            if rest:
                forward(x[:rest])

        def warm_keras():
            clf.model.predict(x[:bs], batch_size=bs, verbose=0)
            if rest:
                clf.model.predict(x[:rest], batch_size=bs, verbose=0)

        with warnings.catch_warnings():  # an untrained head makes sklearn warn about metrics
            warnings.simplefilter("ignore")
            t = C.time_interleaved(
                {
                    "classify_folder": end_to_end,
                    "load model": load,
                    "pure forward": pure,
                    "keras predict": keras_predict,
                },
                args.repeats,
                warmups={
                    "classify_folder": warm_e2e,
                    "pure forward": warm_pure,
                    "keras predict": warm_keras,
                },
            )
        res = results["e2e"]
        classified = int((res.table["status"] == "classified").sum())
        if classified != n:
            raise SystemExit(f"only {classified} of {n} images were classified:\n{res.skipped}")

    e2e, pure_ips = t["classify_folder"].rate(n), t["pure forward"].rate(n)
    report.add(
        "classify_folder end to end",
        e2e,
        "images/s",
        f"median {t['classify_folder'].rate(n, 'median'):.1f}; includes model load",
    )
    report.add(
        "  of which load_classifier",
        t["load model"].best,
        "s",
        "timed alone; reads the sidecar, the network loads on first use",
    )
    report.add(
        "  without model load",
        n / max(t["classify_folder"].best - t["load model"].best, 1e-9),
        "images/s",
        "end to end minus the load timed alone",
    )
    report.add(
        f"pure forward ({engine}), in-memory",
        pure_ips,
        "images/s",
        f"median {t['pure forward'].rate(n, 'median'):.1f}",
    )
    report.add("end to end / pure forward", e2e / pure_ips, "", "best-of repeats")
    report.add(
        "Keras model.predict, in-memory",
        t["keras predict"].rate(n),
        "images/s",
        f"median {t['keras predict'].rate(n, 'median'):.1f}; reference",
    )
    report.add(
        f"one-time {engine} preparation", prepare, "s", "TFLite conversion, cached per model file"
    )
    report.extra["engine"] = engine
    report.extra["crop"] = args.crop
    applies, cond = C.target_conditions(args, backbone="efficientnet_lite0", size=224, cores=2)
    report.check(
        "classify_folder images/s", e2e, TARGET_IMAGES_PER_S, applies=applies, condition=cond
    )
    report.check(
        "end to end / pure forward", e2e / pure_ips, TARGET_RATIO, applies=applies, condition=cond
    )
    report.extra["timings"] = {k: v.as_dict() for k, v in t.items()}
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
