"""Where training runs: the numeric precision (mixed float16 on GPUs, float32 on CPUs) and
the distribution strategy (several GPUs, or several machines under ``TF_CONFIG``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

from bloodlib.core.errors import BloodlibError


def choose_precision(requested: str = "auto") -> str:
    """``auto``: mixed_float16 on GPUs, float32 on CPUs.

    bfloat16 is not chosen on CPUs even where they have AMX / AVX512-BF16: measured on a 2-core
    AMX Xeon, the sample profile's Lite0 fine-tune took 178 CPU-seconds in mixed_bfloat16
    against 98 in float32 (same split and seed) and was no more accurate. Ask for
    ``mixed_bfloat16`` explicitly to try it on another CPU.
    """

    if requested != "auto":
        return requested
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


def get_strategy():
    """MultiWorkerMirrored under TF_CONFIG, Mirrored with several GPUs, else the default.

    Under ``TF_CONFIG`` (one process per worker, see docs/gpu.md) every call in a process
    returns the same strategy: creating it configures TensorFlow's collective ops, which
    works once, before any other TensorFlow work in the process.
    """

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
            "TensorFlow work in the process: call bloodlib.train.devices.get_strategy() first "
            f"(in a notebook: in its first code cell), then train ({exc})"
        ) from exc
