"""Two worker processes on localhost train through bloodlib's MultiWorkerMirroredStrategy.

Each worker is this file run as a script with its own ``TF_CONFIG`` (a cluster of two
``127.0.0.1`` workers, task index 0 and 1), the way a study runs on two machines: it
calls ``devices.get_strategy()`` and ``finetune.train`` with a tiny backbone for one
short epoch on a few cells, then writes its final weights. The test passes when both
finish within a timeout (a hang fails it), both saw a cluster of two replicas that really
exchanged values, and both ended with the same weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.unit

#: Seconds both workers get: ~40 s measured on 2 shared cores (imports, gRPC, one epoch);
#: a deadlocked collective would otherwise hang the suite forever.
WORKER_TIMEOUT = 300

#: Cells per class: two to train on, one to validate on.
TRAIN_PER_CLASS, VAL_PER_CLASS = 2, 1


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on the loopback address (held together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def test_two_workers_train_one_epoch_and_agree(tmp_path):
    ports = free_ports(2)
    repo = Path(__file__).resolve().parent.parent
    procs, logs = [], []
    for i in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": tf_config(ports, i),
            "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "",  # one CPU replica per worker, also on a GPU machine
        }
        log = open(tmp_path / f"worker{i}.log", "w")  # noqa: SIM115 (closed below)
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, str(i), str(tmp_path)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=repo,
            )
        )
    try:
        for p in procs:
            p.wait(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()

    def tail(i: int) -> str:
        return (tmp_path / f"worker{i}.log").read_text()[-3000:]

    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} exited {p.returncode} (negative: killed):\n{tail(i)}"

    results = [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(2)]
    for r in results:
        assert r["strategy"] == "KerasMultiWorkerMirroredStrategy"
        assert r["replicas"] == 2
        assert r["sum_of_task_numbers"] == 3.0  # 1 + 2: each worker's number reached the other
        assert r["epochs"] == 1 and np.isfinite(r["loss"])

    w0, w1 = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    assert w0.files == w1.files and len(w0.files) > 0
    diff = max(float(np.max(np.abs(w0[k] - w1[k]))) for k in w0.files)
    assert diff <= 1e-6, f"the workers' final weights differ by up to {diff}"
    # The epoch trained the head (the last kernel and bias) and left the frozen backbone as
    # built: agreeing on an untrained model would prove nothing.
    start = np.load(tmp_path / "initial0.npz")
    assert start.files == w0.files
    *backbone, kernel, bias = w0.files
    assert all(np.array_equal(w0[k], start[k]) for k in backbone)
    assert not np.array_equal(w0[kernel], start[kernel])


# --- the worker -------------------------------------------------------------------------


def _cells(out: Path):
    """Train and validation frames: the embedded sample's cells, or colour-coded stand-ins."""
    import pandas as pd
    import tiny_models

    from bloodlib import CLASSES
    from bloodlib.core.config import SAMPLE_DIR

    n = TRAIN_PER_CLASS + VAL_PER_CLASS
    rows = []
    for c, cls in enumerate(CLASSES):
        folder = SAMPLE_DIR / cls
        files = sorted(p for p in folder.glob("*.jpg") if not p.name.startswith("."))[:n]
        if len(files) < n:  # a checkout without the sample: synthetic cells of the class
            files = [
                tiny_models.write_cell(out / "cells" / cls / f"{k}.jpg", c, seed=100 * c + k)
                for k in range(n)
            ]
        rows += [{"path": str(p), "label": cls, "part": k} for k, p in enumerate(files)]
    df = pd.DataFrame(rows)
    return df[df["part"] < TRAIN_PER_CLASS], df[df["part"] >= TRAIN_PER_CLASS]


def worker(index: int, out: Path) -> None:
    import tensorflow as tf
    import tiny_models

    from bloodlib.models import backbones
    from bloodlib.train import devices, finetune, network, recipe

    strategy = devices.get_strategy()  # first: it configures the collectives
    tiny = tiny_models.backbone("tiny", tiny_models.convnet_builder, "caffe", feature_dim=8)
    backbones.REGISTRY["tiny"] = tiny
    train_df, val_df = _cells(out / f"data{index}")
    cfg = recipe.FinetuneConfig(
        backbone="tiny",
        image_size=tiny_models.SIZE,
        batch_size=4,  # per replica: 8 cells a step over the two workers
        epochs_head=1,
        epochs_finetune=0,
        weights=None,
        precision="float32",
        augment=False,
        seed=1,
    )
    finetune.config.set_seeds(cfg.seed)
    initial = network.build_classifier(cfg)  # what train() starts from, with the same seed
    np.savez(out / f"initial{index}.npz", *initial.get_weights())
    result = finetune.train(cfg, train_df, val_df, out / f"worker{index}", "tiny", verbose=0)

    import keras

    model = keras.models.load_model(result.model_path, compile=False, safe_mode=True)
    np.savez(out / f"weights{index}.npz", *model.get_weights())
    summed = strategy.reduce(
        tf.distribute.ReduceOp.SUM,
        strategy.run(lambda: tf.constant(float(index + 1))),
        axis=None,
    )
    (out / f"result{index}.json").write_text(
        json.dumps(
            {
                "strategy": type(strategy).__name__,
                "replicas": strategy.num_replicas_in_sync,
                "sum_of_task_numbers": float(summed),
                "epochs": len(result.history),
                "loss": float(result.history["loss"].iloc[-1]),
            }
        )
    )


if __name__ == "__main__":
    worker(int(sys.argv[1]), Path(sys.argv[2]))


# --- TF_CONFIG checks (no cluster started) -------------------------------------------------


@pytest.mark.parametrize(
    ("tf_config_value", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief"}}', "does not name"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
            "index",
        ),
    ],
)
def test_a_malformed_tf_config_is_a_clear_error(tf_config_value, problem):
    from bloodlib.core.errors import BloodlibError
    from bloodlib.train import devices

    with pytest.raises(BloodlibError, match=problem) as err:
        devices._multi_worker_strategy(tf_config_value)
    assert "unset it" in str(err.value)


def test_the_strategy_is_created_once_per_process(monkeypatch):
    from bloodlib.train import devices

    made = object()
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 0))
    monkeypatch.setattr(devices, "_MULTI_WORKER", made)
    assert devices.get_strategy() is made


def test_a_strategy_asked_for_after_tensorflow_work_says_what_to_do(tmp_path):
    """TensorFlow configures collectives only before its first op: a late call explains it."""
    script = (
        "import tensorflow as tf; tf.constant(1.0) + 1\n"
        "from bloodlib.train import devices\n"
        "from bloodlib.core.errors import BloodlibError\n"
        "try:\n    devices.get_strategy()\n"
        "except BloodlibError as exc:\n    print('CLEAR:', exc)\n"
    )
    repo = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "TF_CONFIG": tf_config(free_ports(1), 0),
        "PYTHONPATH": str(repo),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert "CLEAR:" in done.stdout and "get_strategy() first" in done.stdout, done.stderr[-2000:]
