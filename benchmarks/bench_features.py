"""Feature extraction speed: does the JPEG input pipeline keep the backbone busy?

In one run, with one model:
  (a) pure forward: ``model.predict`` on an in-memory float32 array of the
      pipeline's output shape (the ceiling: no decoding, no file reads);
  (b) pipeline: ``model.predict(make_dataset(paths))`` from the JPEG files;
  (c) ``features.extract`` into a fresh, empty cache (builds the model, decodes,
      predicts, writes) against the same call again (a cache hit: one np.load).

Target: (b) / (a) >= 0.85 on CPU: the pipeline costs at most 15 % of the
throughput the model alone reaches.

    .venv/bin/python benchmarks/bench_features.py [--images 512 --batch-size 32 --repeats 3]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import _common as C  # first: sets the cache path and sys.path before bloodlib
import numpy as np

TARGET_RATIO = 0.85


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0], images=512)
    args = C.parse(p, argv)

    from bloodlib.data.pipeline import make_dataset
    from bloodlib.models import backbones, features

    n, bs, size = args.images, args.batch_size, args.image_size
    chosen = C.choose_images(args.data, n)
    paths, hashes = chosen["path"].tolist(), chosen["sha256"].tolist()
    report = C.Report("bench_features", args)
    print(
        f"{n} images from {args.data} ({chosen.attrs['available']} usable"
        + (", so some repeat" if chosen.attrs["repeated"] else "")
        + f"); {args.backbone} at {size}, batch {bs}",
        flush=True,
    )

    model = backbones.build_feature_extractor(args.backbone, size, "imagenet")
    x = C.random_images(n, size)
    rest = n % bs

    def pure():
        return model.predict(x, batch_size=bs, verbose=0)

    def pipeline():
        ds = make_dataset(paths, image_size=size, batch_size=bs)
        return model.predict(ds, verbose=0)

    def warm_pure():  # one full batch, and the short last batch if N is not a multiple
        model.predict(x[:bs], batch_size=bs, verbose=0)
        if rest:
            model.predict(x[:rest], batch_size=bs, verbose=0)

    def warm_pipeline():
        model.predict(make_dataset(paths[:bs], image_size=size, batch_size=bs), verbose=0)
        if rest:
            model.predict(make_dataset(paths[:rest], image_size=size, batch_size=bs), verbose=0)

    print("(a) pure forward vs (b) pipeline from JPEG files:", flush=True)
    t = C.time_interleaved(
        {"pure": pure, "pipeline": pipeline},
        args.repeats,
        warmups={"pure": warm_pure, "pipeline": warm_pipeline},
    )
    pure_ips, pipe_ips = t["pure"].rate(n), t["pipeline"].rate(n)
    ratio = pipe_ips / pure_ips
    report.add(
        "(a) pure forward, in-memory",
        pure_ips,
        "images/s",
        f"median {t['pure'].rate(n, 'median'):.1f}",
    )
    report.add(
        "(b) pipeline from JPEG",
        pipe_ips,
        "images/s",
        f"median {t['pipeline'].rate(n, 'median'):.1f}",
    )
    report.add("(b)/(a)", ratio, "", "best-of repeats")
    report.add(
        "(b)/(a) from medians", t["pipeline"].rate(n, "median") / t["pure"].rate(n, "median")
    )
    applies, cond = C.target_conditions(args, cpu_only=True)
    report.check("pipeline/pure (b)/(a)", ratio, TARGET_RATIO, applies=applies, condition=cond)

    print("(c) features.extract, empty cache vs cache hit:", flush=True)
    with tempfile.TemporaryDirectory(prefix="bloodlib-bench-") as tmp:
        roots: list[Path] = []
        results = {}

        def uncached():
            root = Path(tmp) / f"cache{len(roots)}"
            roots.append(root)
            results["uncached"] = features.extract(
                paths,
                hashes,
                args.backbone,
                image_size=size,
                batch_size=bs,
                progress=False,
                cache_root=root,
            )

        def cached():
            results["cached"] = features.extract(
                paths,
                hashes,
                args.backbone,
                image_size=size,
                batch_size=bs,
                progress=False,
                cache_root=roots[-1],
            )

        def warm_extract():  # process-level first-call costs, on one batch, in its own cache
            features.extract(
                paths[:bs],
                hashes[:bs],
                args.backbone,
                image_size=size,
                batch_size=bs,
                progress=False,
                cache_root=Path(tmp) / "warm",
            )

        tc = C.time_interleaved(
            {"uncached": uncached, "cached": cached},
            args.repeats,
            warmups={"extract": warm_extract},
        )
        if results["uncached"].from_cache or not results["cached"].from_cache:
            raise SystemExit("cache behaved unexpectedly: the first call hit or the second missed")
        reference = pipeline()
        diff = float(np.abs(results["cached"].features - reference).max())

    report.add(
        "(c) extract, empty cache",
        tc["uncached"].best,
        "s",
        f"{tc['uncached'].rate(n):.1f} images/s, includes building the model",
    )
    report.add("(c) extract, cache hit", tc["cached"].best, "s")
    report.add(
        "(c) cache speed-up", tc["uncached"].best / tc["cached"].best, "x", "empty / hit, best-of"
    )
    report.add("max |extract - pipeline| feature", diff, "", "sanity: same features both ways")
    report.extra["timings"] = {
        "pure": t["pure"].as_dict(),
        "pipeline": t["pipeline"].as_dict(),
        "extract_uncached": tc["uncached"].as_dict(),
        "extract_cached": tc["cached"].as_dict(),
    }
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
