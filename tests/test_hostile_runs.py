"""Hostile use of `bloodlib run` and of fine-tuning (issue "Trust", findings 4, 8, 9 and 10).

Each test reproduces one way a careful or hostile user broke a run folder, and checks that it
no longer does: two runs of one name, a lock left by a dead process, ``--name ../../x``, a
mistyped ``-p`` value, a changed parameter, data or library, a finished fine-tune reused on
other files, and the hidden temporary notebook of a killed run. Runner tests use the dummy
notebooks (real kernels, no TensorFlow), so each run takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from dummy_notebooks import KERNEL, NAMES, write_notebook, write_study
from dummy_notebooks import run_dummy_study as _run
from dummy_notebooks import statuses as _statuses

from bloodlib import CLASSES
from bloodlib.cli import main
from bloodlib.core.config import REPO_ROOT
from bloodlib.core.errors import RunLockedError
from bloodlib.data import source
from bloodlib.study import planning, profiles, provenance
from bloodlib.study.planning import plan_study
from bloodlib.study.profiles import ParameterError
from bloodlib.study.run_lock import RunLock

pytestmark = pytest.mark.unit

#: The real code digest, kept before the autouse fixture pins it.
REAL_CODE_DIGEST = provenance.code_digest
#: Generous bound for a subprocess to reach a handshake: a guard against hanging, not a timing.
HANDSHAKE_S = 180


@pytest.fixture(autouse=True)
def stable_context(monkeypatch, tmp_path):
    """Pin the code digest and the sample's fingerprint (this checkout changes under us)."""
    sample = tmp_path / "pinned_sample"
    (sample / "basophil").mkdir(parents=True)
    (sample / "basophil" / "a.jpg").write_bytes(b"stand-in")
    monkeypatch.setattr(provenance, "code_digest", lambda *a: {"version": "t", "sha256": "v1"})
    monkeypatch.setattr(source, "SAMPLE_DIR", sample)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + HANDSHAKE_S
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.1)


# --- finding 4: two runs of one name ------------------------------------------------------

WAIT_CELL = """\
import time
(rd / "started").write_text("1")
for _ in range(3000):  # until the test lets it go (bounded, never forever)
    if (rd / "release").exists():
        break
    time.sleep(0.1)
"""


def test_second_run_of_a_name_refuses_at_once_and_the_first_finishes(tmp_path):
    notebooks = write_study(tmp_path / "notebooks")
    write_notebook(notebooks / f"{NAMES[0]}.ipynb", NAMES[0], extra_code=WAIT_CELL)
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "bloodlib",
        "run",
        "--name",
        "shared",
        "--runs-root",
        str(runs),
        "--notebooks-dir",
        str(notebooks),
        "--kernel",
        KERNEL,
        "--no-progress",
    ]
    run_dir = runs / "shared"
    first = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(run_dir / "started", first)
        before = _tree(run_dir)
        second = subprocess.run(
            cmd, env=_env(), capture_output=True, text=True, timeout=HANDSHAKE_S
        )
        message = " ".join(second.stderr.split())
        assert second.returncode == RunLockedError.exit_code, second.stderr
        assert f"PID {first.pid}" in message and socket.gethostname() in message
        assert "since" in message and "Traceback" not in second.stderr
        assert _tree(run_dir) == before  # the refused run wrote nothing
        assert json.loads((run_dir / ".lock").read_text())["pid"] == first.pid
    finally:
        (run_dir / "release").write_text("1")
        out, err = first.communicate(timeout=HANDSHAKE_S)
    assert first.returncode == 0, err
    assert (run_dir / "order.txt").read_text().split() == list(NAMES)  # each ran once
    assert _statuses(run_dir) == dict.fromkeys(NAMES, "ran")


def test_a_held_lock_refuses_in_process_before_anything_runs(tmp_path):
    notebooks = write_study(tmp_path / "notebooks")
    run_dir = tmp_path / "runs" / "busy"
    run_dir.mkdir(parents=True)
    with RunLock(run_dir):
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()}"):
            _run(notebooks, tmp_path / "runs", name="busy")
    assert _tree(run_dir) == {".lock"}


def test_lock_probe_creates_nothing_and_sees_a_holder(tmp_path):
    RunLock(tmp_path).check_free()
    assert not (tmp_path / ".lock").exists()
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()} on {socket.gethostname()}"):
            RunLock(tmp_path).check_free()
    RunLock(tmp_path).check_free()  # released
    with RunLock(tmp_path):  # and taken again
        pass


LOCK_HOLDER = """\
import sys, time
from pathlib import Path
from bloodlib.study.run_lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "runs" / "crashed"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run_dir)],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"PID {holder.pid}"):
            RunLock(run_dir).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup of its own runs
        holder.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == holder.pid  # left behind
    with RunLock(run_dir):
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()


def test_lock_file_naming_a_dead_pid_does_not_block_a_run(tmp_path):
    notebooks = write_study(tmp_path / "notebooks")
    pid = subprocess.Popen([sys.executable, "-c", "pass"])
    pid.wait()  # its PID is now dead
    run_dir = tmp_path / "runs" / "sample"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(
        json.dumps({"pid": pid.pid, "host": socket.gethostname(), "since": "yesterday"})
    )
    _run(notebooks, tmp_path / "runs")
    assert _statuses(run_dir) == dict.fromkeys(NAMES, "ran")
    assert (run_dir / ".lock").read_text() == ""  # released


# --- finding 10: --name stays inside the runs folder -----------------------------------------


@pytest.mark.parametrize(
    "name", ["../../x", "..", ".", "a/b", "/bloodlib-hostile-abs", "", ".hidden", "a\\b"]
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_run_name_cannot_leave_the_runs_folder(tmp_path, name, dry_run, capsys):
    notebooks = write_study(tmp_path / "notebooks")
    runs = tmp_path / "deep" / "runs"
    before = _tree(tmp_path)
    argv = ["run", "--name", name, "--runs-root", str(runs), "--notebooks-dir", str(notebooks)]
    code = main(argv + (["--dry-run"] if dry_run else []))
    assert code == ParameterError.exit_code
    assert "--name" in capsys.readouterr().err
    assert _tree(tmp_path) == before  # nothing written, inside runs or outside
    assert not Path("/bloodlib-hostile-abs").exists()


# --- finding 8: a mistyped parameter ------------------------------------------------------


def test_mistyped_parameter_fails_before_anything_is_written_then_the_fix_runs(tmp_path, capsys):
    notebooks = write_study(tmp_path / "notebooks")
    runs = tmp_path / "runs"
    base = ["run", "--runs-root", str(runs), "--notebooks-dir", str(notebooks)]
    for extra in (["--dry-run"], ["--kernel", KERNEL, "--no-progress"]):
        assert main([*base, *extra, "-p", "03_fine_tuning.epochs_head=abc"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "03_fine_tuning.epochs_head" in err and "'abc'" in err and "integer" in err
        assert not runs.exists()  # not even runs/NAME
    assert main([*base, "--kernel", KERNEL, "--no-progress", "-p", "epochs_head=3"]) == 0
    state = json.loads((runs / "sample" / ".state" / "03_fine_tuning.json").read_text())
    assert (
        state["parameters"]["epochs_head"] == 3
    )  # not the profile's 2: the override itself is what arrives


def test_mistyped_parameter_of_the_real_notebooks_fails_in_dry_run(tmp_path, capsys):
    code = main(
        ["run", "--dry-run", "--runs-root", str(tmp_path / "runs")]
        + ["-p", "03_fine_tuning.epochs_finetune=abc"]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "03_fine_tuning.epochs_finetune = 'abc': expected an integer" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"batch_size": 0}, "must be >= 1"),
        ({"batch_size": True}, "expected an integer"),
        ({"batch_size": 2.5}, "expected an integer"),
        ({"batch_size": None}, "null"),
        ({"epochs_head": -1}, "must be >= 0"),
        ({"backbones": "efficientnet_lite0"}, "expected a list"),
        ({"backbones": []}, "non-empty list"),
        ({"seed": "forty-two"}, "expected an integer"),
    ],
)
def test_parameter_rules(tmp_path, override, words):
    notebooks = write_study(tmp_path / "notebooks")
    with pytest.raises(ParameterError, match=words) as info:
        plan_study("sample", overrides=override, notebooks_dir=notebooks)
    assert next(iter(override)) in str(info.value)


def test_parameter_types_and_ranges_of_the_real_notebooks(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for profile in profiles.load_profiles():  # every shipped profile passes its own checks
        plan_study(profile, data=data)
    ok = {
        "learning_rate_head": 1,  # an integer is a fine float
        "image_size": None,  # None means the backbone's native size
        "max_train_images": None,
        "split_fractions": [0.8, 0.1, 0.1],
        "crop": 1,  # the whole frame, written as an integer
    }
    plans = {p.name: p.parameters for p in plan_study("sample", overrides=ok)}
    assert plans["03_fine_tuning"]["learning_rate_head"] == 1
    for bad, words in [
        ({"learning_rate_finetune": 0}, "must be > 0"),
        ({"label_smoothing": 1.0}, "must be < 1"),
        ({"split_fractions": [0.5, 0.5, 0.5]}, "sum to 1"),
        ({"augment": "yes please"}, "expected a boolean"),
        ({"n_boot": 0}, "must be >= 1"),
        ({"image_size": 8}, "must be >= 32"),
        ({"crop": 0.0}, "must be > 0"),
        ({"crop": 1.5}, "must be <= 1"),
        # None defaults give no type: the rule's bound still demands a number
        ({"max_train_images": "abc"}, "must be a number"),
        ({"image_size": "big"}, "expected an integer"),  # 02 declares 288: its type applies
    ]:
        with pytest.raises(ParameterError, match=words):
            plan_study("sample", overrides=bad)


def test_notebook_defaults_are_parsed_with_ast(tmp_path):
    defaults = planning.notebook_defaults(REPO_ROOT / "notebooks" / "03_fine_tuning.ipynb")
    assert isinstance(defaults["epochs_finetune"], int)
    assert isinstance(defaults["learning_rate_head"], float)
    assert isinstance(defaults["augment"], bool)
    assert isinstance(defaults["backbones"], list)


# --- findings 8 and 9: a changed parameter, data or library re-runs ------------------------


@pytest.fixture
def finished(tmp_path) -> tuple[Path, Path, Path]:
    """A finished dummy study on a data folder of our own: (notebooks, runs, data)."""
    notebooks = write_study(tmp_path / "notebooks")
    data = tmp_path / "data"
    (data / "basophil").mkdir(parents=True)
    (data / "basophil" / "1.jpg").write_bytes(b"one")
    runs = tmp_path / "runs"
    _run(notebooks, runs, data=data)
    return notebooks, runs, data


def test_changed_parameter_on_an_existing_run_reruns_it(finished):
    notebooks, runs, data = finished
    run_dir = _run(notebooks, runs, data=data, overrides={"03_fine_tuning.epochs_head": 1})
    assert _statuses(run_dir) == {NAMES[0]: "skipped", NAMES[1]: "skipped", NAMES[2]: "ran"}
    run_dir = _run(notebooks, runs, data=data, overrides={"03_fine_tuning.epochs_head": 1})
    assert _statuses(run_dir) == dict.fromkeys(NAMES, "skipped")  # same parameters: resume


def test_changed_data_reruns_notebook_01_and_everything_after(finished, tmp_path):
    notebooks, runs, data = finished
    assert _statuses(_run(notebooks, runs, data=data)) == dict.fromkeys(NAMES, "skipped")
    (data / "basophil" / "2.jpg").write_bytes(b"two")  # same path, other content
    assert _statuses(_run(notebooks, runs, data=data)) == dict.fromkeys(NAMES, "ran")
    other = shutil.copytree(data, tmp_path / "other")
    run_dir = _run(notebooks, runs, data=other)
    assert _statuses(run_dir) == dict.fromkeys(NAMES, "ran")
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["data"]["fingerprint"] == source.fingerprint(str(other))


def test_edited_library_code_reruns_rather_than_skips(finished, monkeypatch):
    notebooks, runs, data = finished
    monkeypatch.setattr(provenance, "code_digest", lambda *a: {"version": "t", "sha256": "v2"})
    run_dir = _run(notebooks, runs, data=data)
    assert _statuses(run_dir) == dict.fromkeys(NAMES, "ran")
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["code"] == {"version": "t", "sha256": "v2"}


def test_code_digest_follows_the_library_source(tmp_path):
    copy = Path(shutil.copytree(REPO_ROOT / "bloodlib", tmp_path / "bloodlib"))
    first = REAL_CODE_DIGEST(copy)
    assert first == REAL_CODE_DIGEST(copy) and len(first["sha256"]) == 64
    with open(copy / "svm.py", "a", encoding="utf-8") as fh:
        fh.write("\n# an edit\n")
    edited = REAL_CODE_DIGEST(copy)
    assert edited["sha256"] != first["sha256"]
    (copy / "profiles.yml").write_text("sample: {}\n")
    assert REAL_CODE_DIGEST(copy)["sha256"] not in {first["sha256"], edited["sha256"]}


# --- finding 10: the hidden temporary notebook of a killed run ------------------------------


def test_leftover_hidden_temporaries_are_cleaned_at_the_next_run(finished):
    notebooks, runs, data = finished
    run_dir = runs / "sample"
    leftovers = [
        run_dir / "notebooks" / ".03_fine_tuning.ipynb.k1ll3d.ipynb",
        run_dir / ".state" / ".02_feature_extraction_svm.json.x9.json",
        run_dir / ".provenance.json.a1.json",
        run_dir / "train" / "ft" / ".history.csv.q2.csv",
        run_dir / "train" / "ft" / "backup_phase2" / ".latest.weights.h5.z3.weights.h5",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{partial")
    _run(notebooks, runs, data=data)
    assert not any(path.exists() for path in leftovers)
    assert (run_dir / ".lock").exists()  # the lock file itself stays
    assert (run_dir / "notebooks" / "03_fine_tuning.ipynb").is_file()


# --- finding 9: a finished fine-tune is reused only on the same files ----------------------


@pytest.fixture
def tiny_backbone(monkeypatch):
    tiny_models = pytest.importorskip("tiny_models")
    from bloodlib.models import backbones

    monkeypatch.setitem(
        backbones.REGISTRY,
        "tiny",
        tiny_models.backbone("tiny", tiny_models.convnet_builder, "caffe", feature_dim=8),
    )
    return tiny_models


def _cells(tiny_models, root: Path, per_class: int, seed: int) -> pd.DataFrame:
    rows = []
    for c, cls in enumerate(CLASSES):
        for i in range(per_class):
            path = tiny_models.write_cell(root / cls / f"{i}.jpg", c, seed=seed + 100 * c + i)
            rows.append({"path": str(path), "label": cls})
    return pd.DataFrame(rows)


def test_finetune_retrains_on_other_training_files(tiny_backbone, tmp_path):
    from bloodlib.train.finetune import train

    cfg = tiny_backbone.finetune_config()
    train_a = _cells(tiny_backbone, tmp_path / "a", 2, seed=0)
    train_b = _cells(tiny_backbone, tmp_path / "b", 2, seed=5000)  # another split's images
    val = _cells(tiny_backbone, tmp_path / "val", 1, seed=9000)
    run_dir = tmp_path / "run"
    train(cfg, train_a, val, run_dir, "ft", verbose=0)
    assert train(cfg, train_a, val, run_dir, "ft", verbose=0).resumed  # same files: reused
    meta = run_dir / "train" / "ft" / "config.json"
    identity_a = json.loads(meta.read_text())

    again = train(cfg, train_b, val, run_dir, "ft", verbose=0)
    assert not again.resumed  # the old model was not returned
    history = pd.read_csv(run_dir / "train" / "ft" / "history.csv")
    assert list(history["epoch"]) == [0, 1]  # one training's epochs, not two mixed
    identity = json.loads(meta.read_text())
    assert identity["train_files"] != identity_a["train_files"]
    assert identity["val_files"] == identity_a["val_files"]

    # Same paths, other content (the split's sha256 column says so): retrained too.
    with_hashes = train_b.assign(sha256=[f"{i:064x}" for i in range(len(train_b))])
    assert not train(cfg, with_hashes, val, run_dir, "ft", verbose=0).resumed
    changed = with_hashes.assign(sha256=with_hashes["sha256"].iloc[::-1].to_list())
    assert not train(cfg, changed, val, run_dir, "ft", verbose=0).resumed
    assert train(cfg, changed, val, run_dir, "ft", verbose=0).resumed
