"""The study runner on tiny dummy notebooks (real kernels, no TensorFlow)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from dummy_notebooks import KERNEL, NAMES, write_notebook, write_study
from dummy_notebooks import run_dummy_study as _run
from dummy_notebooks import statuses as _statuses

from bloodlib.data import source
from bloodlib.study import kernels, planning, profiles, provenance, runner
from bloodlib.study.planning import plan_study
from bloodlib.study.profiles import DataSpecError, RunError, load_profiles

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", autouse=True)
def stable_context(tmp_path_factory: pytest.TempPathFactory):
    """Pin the library's code digest and the sample's fingerprint: both are part of every
    notebook's hash, and this checkout's code may change while the tests run."""
    sample = tmp_path_factory.mktemp("sample")
    (sample / "basophil").mkdir()
    (sample / "basophil" / "a.jpg").write_bytes(b"stand-in")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(provenance, "code_digest", lambda *a: {"version": "test", "sha256": "pinned"})
        mp.setattr(source, "SAMPLE_DIR", sample)
        yield


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One complete run of the dummy study; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("study")
    notebooks = write_study(root / "notebooks")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run_dir = _run(notebooks, root / "runs")
    return notebooks, run_dir, buf.getvalue()


def _copy(study: tuple[Path, Path, str], tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the finished study (notebooks and run folder)."""
    notebooks, run_dir, _ = study
    nb_copy = shutil.copytree(notebooks, tmp_path / "notebooks")
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / run_dir.name)
    return Path(nb_copy), runs


def test_runs_notebooks_in_order_into_run_dir(study):
    _, run_dir, out = study
    assert run_dir.name == "sample"
    assert (run_dir / "order.txt").read_text().split() == list(NAMES)
    for name in NAMES:
        assert (run_dir / "notebooks" / f"{name}.ipynb").is_file()
        assert (run_dir / ".state" / f"{name}.json").is_file()
        assert f"{name}: done in" in out
    assert not list((run_dir / "notebooks").glob(".*"))  # no temporary files left
    assert _statuses(run_dir) == dict.fromkeys(NAMES, "ran")


def test_injects_only_declared_parameters(study):
    _, run_dir, _ = study
    injected = {
        name: nbformat.read(run_dir / "notebooks" / f"{name}.ipynb", as_version=4).metadata[
            "papermill"
        ]["parameters"]
        for name in NAMES
    }
    assert set(injected["01_data_exploration"]) == {"run_dir", "data", "seed"}
    assert set(injected["02_feature_extraction_svm"]) == {"run_dir", "data", "seed", "batch_size"}
    assert set(injected["03_fine_tuning"]) == {
        "run_dir",
        "data",
        "seed",
        "epochs_head",
        "backbones",
    }
    assert injected["03_fine_tuning"]["epochs_head"] == 10  # the sample profile's value
    assert injected["03_fine_tuning"]["backbones"] == ["efficientnet_lite0"]
    assert all(p["run_dir"] == str(run_dir) for p in injected.values())
    assert not (run_dir / ".lock").read_text()  # released: no holder named
    assert json.loads((run_dir / "01_data_exploration.out.json").read_text())["data"] == "sample"


def test_writes_provenance_and_results_table(study):
    _, run_dir, out = study
    prov = json.loads((run_dir / "provenance.json").read_text())
    for key in ("timestamp", "git", "packages", "hardware", "kernel", "parameters", "data"):
        assert key in prov
    assert prov["status"] == "complete"
    assert prov["kernel"]["name"] == KERNEL
    assert set(prov["parameters"]) == set(NAMES)
    assert prov["seeds"] == dict.fromkeys(NAMES, 42)
    assert prov["code"] == {"version": "test", "sha256": "pinned"}
    assert prov["data"]["fingerprint"] == source.fingerprint("sample")
    assert "balanced_accuracy" in out and "0.9123" in out


def test_resume_skips_unchanged_notebooks(study, tmp_path, capsys):
    notebooks, runs = _copy(study, tmp_path)
    run_dir = _run(notebooks, runs)
    assert _statuses(run_dir) == dict.fromkeys(NAMES, "skipped")
    assert capsys.readouterr().out.count("unchanged, skipped") == 3
    assert (run_dir / "order.txt").read_text().split() == list(NAMES)  # nothing re-executed


def test_changed_override_reruns_that_notebook_and_successors(study, tmp_path):
    notebooks, runs = _copy(study, tmp_path)
    run_dir = _run(notebooks, runs, overrides={"batch_size": 8})
    assert _statuses(run_dir) == {
        "01_data_exploration": "skipped",
        "02_feature_extraction_svm": "ran",
        "03_fine_tuning": "ran",
    }
    state = json.loads((run_dir / ".state" / "02_feature_extraction_svm.json").read_text())
    assert state["parameters"]["batch_size"] == 8


def test_changed_source_reruns_only_from_there(study, tmp_path):
    notebooks, runs = _copy(study, tmp_path)
    write_notebook(notebooks / "03_fine_tuning.ipynb", "03_fine_tuning", extra_code="x = 1")
    run_dir = _run(notebooks, runs)
    assert _statuses(run_dir)["03_fine_tuning"] == "ran"
    assert list(_statuses(run_dir).values()).count("skipped") == 2


def test_force_reruns_everything(study, tmp_path):
    notebooks, runs = _copy(study, tmp_path)
    run_dir = _run(notebooks, runs, force=True)
    assert _statuses(run_dir) == dict.fromkeys(NAMES, "ran")


def test_failure_raises_and_keeps_partial_notebook(tmp_path):
    notebooks = write_study(tmp_path / "notebooks", fail="02_feature_extraction_svm")
    with pytest.raises(RunError) as info:
        _run(notebooks, tmp_path / "runs", name="broken")
    run_dir = tmp_path / "runs" / "broken"
    failed = run_dir / "notebooks" / "02_feature_extraction_svm.failed.ipynb"
    message = str(info.value)
    assert "02_feature_extraction_svm" in message
    assert "cell 3" in message  # parameters, injected parameters, work, raise
    assert "ValueError: boom in the dummy" in message
    assert str(failed) in message
    assert failed.is_file()
    assert not (run_dir / "notebooks" / "02_feature_extraction_svm.ipynb").exists()
    assert not (run_dir / ".state" / "02_feature_extraction_svm.json").exists()
    assert (run_dir / "order.txt").read_text().split() == list(NAMES[:2])  # 03 never started
    assert _statuses(run_dir) == {
        "01_data_exploration": "ran",
        "02_feature_extraction_svm": "failed",
    }

    # Fixed: the run resumes at the failed notebook and the partial notebook goes away.
    write_notebook(notebooks / "02_feature_extraction_svm.ipynb", "02_feature_extraction_svm")
    _run(notebooks, tmp_path / "runs", name="broken")
    assert _statuses(run_dir) == {
        "01_data_exploration": "skipped",
        "02_feature_extraction_svm": "ran",
        "03_fine_tuning": "ran",
    }
    assert not failed.exists()


# --- planning only: no kernels ---------------------------------------------------------


def test_merge_order(tmp_path):
    notebooks = write_study(tmp_path / "notebooks")
    params_file = tmp_path / "p.yml"
    params_file.write_text(
        "common: {seed: 7, epochs_head: 5}\nnotebooks: {03_fine_tuning: {epochs_head: 8}}\n"
    )
    plans = {
        p.name: p.parameters
        for p in plan_study(
            "sample",
            overrides={"03_fine_tuning.backbones": ["vgg16"], "seed": 9},
            params_file=params_file,
            run_dir=tmp_path / "run",
            notebooks_dir=notebooks,
        )
    }
    assert plans["03_fine_tuning"]["epochs_head"] == 8  # file notebook > file common > profile
    assert plans["03_fine_tuning"]["backbones"] == ["vgg16"]  # scoped override > profile
    assert {p["seed"] for p in plans.values()} == {9}  # override > file
    assert plans["01_data_exploration"]["run_dir"] == str((tmp_path / "run").resolve())


def test_flat_params_file(tmp_path):
    notebooks = write_study(tmp_path / "notebooks")
    (tmp_path / "flat.yml").write_text("batch_size: 4\n")
    plans = plan_study("sample", params_file=tmp_path / "flat.yml", notebooks_dir=notebooks)
    assert plans[1].parameters["batch_size"] == 4


def test_unknown_parameter_is_an_error(tmp_path):
    notebooks = write_study(tmp_path / "notebooks")
    with pytest.raises(RunError, match="epochs_hed"):
        plan_study("sample", overrides={"epochs_hed": 1}, notebooks_dir=notebooks)
    with pytest.raises(RunError, match="no notebook named"):
        plan_study("sample", overrides={"99_nope.seed": 1}, notebooks_dir=notebooks)
    with pytest.raises(RunError, match="--name"):
        plan_study("sample", overrides={"run_dir": "/x"}, notebooks_dir=notebooks)
    with pytest.raises(RunError, match="unknown profile"):
        plan_study("nope", notebooks_dir=notebooks)


def test_data_is_required_and_must_exist(tmp_path):
    notebooks = write_study(tmp_path / "notebooks")
    with pytest.raises(DataSpecError, match="--data"):
        plan_study("full", notebooks_dir=notebooks)
    with pytest.raises(DataSpecError, match="data not found"):
        plan_study("full", data=tmp_path / "missing", notebooks_dir=notebooks)
    (tmp_path / "ds").mkdir()
    plans = plan_study("full", data=tmp_path / "ds", notebooks_dir=notebooks)
    assert plans[0].parameters["data"] == str((tmp_path / "ds").resolve())
    full = profiles.load_profiles()["full"]["notebooks"]["03_fine_tuning"]
    assert plans[2].parameters["epochs_head"] == full["epochs_head"]  # the full profile's value


def test_profiles_file_is_complete():
    profiles = load_profiles()
    assert set(profiles) == {"sample", "full", "accurate", "robust", "backbones", "paper"}
    for prof in profiles.values():
        # Every notebook of the study, each with its own section in every profile.
        assert set(prof["notebooks"]) == {p.stem for p in planning.find_notebooks()}
        assert prof["common"]["split_fractions"] == [0.7, 0.1, 0.2]
    assert profiles["sample"]["common"]["data"] == "sample"
    assert profiles["full"]["common"]["data"] is None
    assert profiles["paper"]["notebooks"]["03_fine_tuning"]["backbones"] == [
        "vgg16",
        "inception_v3",
    ]


def test_a_profile_extends_another_notebook_by_notebook(tmp_path):
    path = tmp_path / "profiles.yml"
    path.write_text(
        "base:\n"
        "  description: the base\n"
        "  common: {seed: 1, data: null}\n"
        "  notebooks:\n"
        "    a: {x: 1, y: 2}\n"
        "    b: {z: 3}\n"
        "child:\n"
        "  extends: base\n"
        "  common: {seed: 7}\n"
        "  notebooks:\n"
        "    a: {y: 20}\n"
        "grandchild:\n"
        "  extends: child\n"
        "  description: the grandchild\n"
        "  notebooks:\n"
        "    b: {z: 30, w: 4}\n",
        encoding="utf-8",
    )
    profiles = load_profiles(path)
    child, grand = profiles["child"], profiles["grandchild"]
    assert child["common"] == {"seed": 7, "data": None}
    assert child["notebooks"] == {"a": {"x": 1, "y": 20}, "b": {"z": 3}}
    assert child["description"] == "the base" and child["extends"] == "base"
    assert grand["notebooks"] == {"a": {"x": 1, "y": 20}, "b": {"z": 30, "w": 4}}
    assert grand["description"] == "the grandchild" and grand["common"]["seed"] == 7
    assert "extends" not in profiles["base"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a:\n  extends: nowhere\n", "extends 'nowhere', which is not a profile"),
        ("a:\n  extends: b\nb:\n  extends: a\n", "in a circle: a -> b -> a"),
        ("a:\n  extends: a\n", "in a circle"),
    ],
)
def test_a_profile_that_extends_nothing_or_itself_is_refused(tmp_path, text, message):
    path = tmp_path / "profiles.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RunError, match=message):
        profiles.load_profiles(path)


def test_shipped_variants_change_only_what_they_say():
    """robust, accurate and backbones are `full` plus their own lines: the recipe is full's."""
    profiles = load_profiles()
    full = profiles["full"]
    for name, changed in {
        "robust": {"crop", "epochs_finetune", "augment_domain"},
        "accurate": {"image_size", "epochs_finetune", "crop"},
        "backbones": set(),
    }.items():
        prof = profiles[name]
        assert prof["extends"] == "full" and prof["common"] == full["common"]
        nb03, full03 = prof["notebooks"]["03_fine_tuning"], full["notebooks"]["03_fine_tuning"]
        assert {k for k in nb03.keys() | full03.keys() if nb03.get(k) != full03.get(k)} <= changed
    assert profiles["robust"]["notebooks"]["03_fine_tuning"]["crop"] == 1.0


def test_data_keywords_match_bloodlib_source(tmp_path):
    source = pytest.importorskip("bloodlib.data.source")
    assert planning.DATA_KEYWORDS is source.KEYWORDS  # one constant, not a copy
    for word in planning.DATA_KEYWORDS:
        assert source._classify(word)[0] in {"sample", "download"}
    notebooks = write_study(tmp_path / "notebooks")
    plans = plan_study("full", data="Mendeley", notebooks_dir=notebooks)
    assert plans[0].parameters["data"] == "mendeley"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-3", 0.001), ("3", 3), ("[a, b]", ["a", "b"]), ("null", None), ("true", True), ("x", "x")],
)
def test_parse_override_values(text, value):
    assert profiles.parse_override(f"k={text}") == ("k", value)


def test_parse_override_rejects_missing_equals():
    with pytest.raises(RunError, match="KEY=VALUE"):
        profiles.parse_override("epochs_head")


def test_results_table(tmp_path):
    assert runner.results_table(tmp_path) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"models": []}))
    assert runner.results_table(tmp_path) is None
    (tmp_path / "metrics.json").write_text(
        json.dumps({"models": [{"name": "a", "method": "svm", "test_accuracy": 0.5}]})
    )
    table = runner.results_table(tmp_path)
    assert table.splitlines()[0].split() == [
        "name",
        "backbone",
        "method",
        "test_accuracy",
        "balanced_accuracy",
    ]
    assert table.splitlines()[2].split() == ["a", "-", "svm", "0.5000", "-"]


def _plans(**params):
    return [
        planning.NotebookPlan(
            name="02_x", path=Path("02_x.ipynb"), declared=list(params), parameters=params
        )
    ]


def test_missing_imagenet_weights_fail_before_any_notebook(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODLIB_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("BLOODLIB_WEIGHTS_VGG16", raising=False)
    with pytest.raises(RunError, match="BLOODLIB_WEIGHTS_VGG16"):
        planning.check_weights(_plans(backbones=["vgg16", "efficientnet_lite0"]))


def test_weights_check_accepts_local_files_and_the_offline_backbone(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODLIB_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    weights = tmp_path / "vgg16.h5"
    weights.write_bytes(b"stand-in: only its existence is checked here")
    planning.check_weights(_plans(backbones=["vgg16"], weights_files={"vgg16": str(weights)}))
    planning.check_weights(_plans(backbones=["efficientnet_lite0"]))


def test_kernels_talk_over_ipc_without_the_tcp_warning(tmp_path, capfd, monkeypatch):
    """papermill's kernels use Unix sockets: no unencrypted loopback TCP, no warning per start.
    The sockets live in a private temporary folder, removed when the kernel stops, never in
    the notebooks folder (the kernel's working directory), where a killed run left them."""
    import stat
    import tempfile

    sockets = tmp_path / "tmp"
    sockets.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))
    notebooks = write_study(tmp_path / "notebooks")
    _run(notebooks, tmp_path / "runs")
    err = capfd.readouterr().err
    assert "without encryption" not in err
    assert not [p.name for p in notebooks.iterdir() if "ipc" in p.name]
    assert not list(sockets.iterdir())  # every kernel's folder removed at its shutdown
    manager = kernels._ipc_kernel_manager()(kernel_name=KERNEL)
    assert manager.transport == "ipc"
    folder = Path(manager.ip).parent
    assert folder.parent == sockets and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert len(manager.ip) < 100  # a Unix socket path has room for ~107 bytes


def test_other_lab_is_checked_and_passed_absolute(tmp_path, monkeypatch):
    """A missing folder is refused before anything runs; a relative one reaches the notebook
    as an absolute path, since its kernel runs in another working directory."""
    lab = tmp_path / "lab"
    (lab / "neutrophil").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    plans = plan_study("sample", overrides={"other_lab": "lab"})
    (nb05,) = [p for p in plans if p.name == "05_domain_shift"]
    assert nb05.parameters["other_lab"] == str(lab.resolve())
    with pytest.raises(profiles.ParameterError, match="folder not found"):
        plan_study("sample", overrides={"other_lab": "nowhere"})
    with pytest.raises(profiles.ParameterError, match="shots"):
        plan_study("sample", overrides={"shots": [0, 5]})
    with pytest.raises(profiles.ParameterError, match="non-empty list"):
        plan_study("sample", overrides={"shots": []})
    # Adapting with unlabelled cells too may be switched off, but not given nonsense.
    (nb05,) = [
        p for p in plan_study("sample", overrides={"unlabelled_shots": []}) if p.name == nb05.name
    ]
    assert nb05.parameters["unlabelled_shots"] == []
    with pytest.raises(profiles.ParameterError, match="unlabelled_shots"):
        plan_study("sample", overrides={"unlabelled_shots": [5, 0]})


def test_a_study_run_leaves_the_solutions_out(tmp_path):
    """Solution cells (tagged ``solution``) are executed by nbval in the committed notebooks,
    not by a study run: a class's run pays only for the lesson."""
    notebooks = write_study(tmp_path / "notebooks")
    path = notebooks / f"{NAMES[0]}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            'raise RuntimeError("a solution ran")', metadata={"tags": [kernels.SOLUTION_TAG]}
        )
    )
    nbformat.write(nb, path)
    run_dir = _run(notebooks, tmp_path / "runs")
    executed = nbformat.read(run_dir / "notebooks" / path.name, as_version=4)
    assert len(executed.cells) == len(nb.cells) - 1 + 1  # the solution out, papermill's cell in
    assert not any("a solution ran" in c.source for c in executed.cells)
    assert "solution" in path.read_text()  # the notebook itself is untouched
