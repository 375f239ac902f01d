"""Another lab's cells: allowed classes, the uncertain marking, colour and scale normalisation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_models
from PIL import Image
from shared_data import TECOM
from tiny_models import write_cell

from bloodlib import CLASSES
from bloodlib.cli import main
from bloodlib.core.config import SAMPLE_DIR
from bloodlib.data import look, stain
from bloodlib.evaluate import reject
from bloodlib.evaluate.calibration import log_average
from bloodlib.models.saved import SidecarError, read_sidecar, save_classifier, update_sidecar
from bloodlib.predict.classify import classify_folder

SIZE = tiny_models.SIZE


def sample_cells(n: int, size: int = 224) -> list[np.ndarray]:
    """``n`` embedded-sample cells (first of each class in turn), RGB float 0..255."""
    per_class = [
        sorted(p for p in (SAMPLE_DIR / c).glob("*.jpg") if not p.name.startswith("."))
        for c in CLASSES
    ]
    paths = [files[i] for i in range(n) for files in per_class if i < len(files)][:n]
    if len(paths) < n:
        pytest.skip("the embedded sample is missing")
    return [
        np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32) for p in paths
    ]


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory) -> Path:
    """The fixed vertex classifier: a cell of cube corner c is class c, grey is a tie."""
    path = tmp_path_factory.mktemp("run") / "models" / "m.keras"
    return save_classifier(
        tiny_models.vertex_classifier(SIZE),
        path,
        {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": SIZE},
    )


@pytest.fixture
def lab_folder(tmp_path) -> Path:
    """lymphocyte/ (2 right, 1 grey: no class wins), monocyte/ (2 right), platelet/ (1)."""
    root = tmp_path / "lab"
    lymph, mono, plt = (CLASSES.index(c) for c in ("lymphocyte", "monocyte", "platelet"))
    for i in range(2):
        write_cell(root / "Lymphocyte" / f"ly{i}.jpg", lymph, seed=i)
        write_cell(root / "monocyte" / f"mo{i}.jpg", mono, seed=10 + i)
    # Each channel's mean at the cube's centre: every class ties. Noise per channel keeps
    # it a colour image (a grey one is a defect the scan skips).
    tie = np.random.default_rng(0).normal(127.5, 30, (40, 40, 3))
    Image.fromarray(np.clip(tie, 0, 255).astype(np.uint8)).save(
        root / "Lymphocyte" / "grey.jpg", "JPEG", quality=95
    )
    write_cell(root / "platelet" / "pl0.jpg", plt, seed=20)
    return root


# --- reject: pure functions --------------------------------------------------------------


@pytest.mark.unit
def test_parse_classes_ignores_case_and_keeps_model_order():
    got = reject.parse_classes(" Neutrophil,lymphocyte ,MONOCYTE", CLASSES)
    assert got == ["lymphocyte", "monocyte", "neutrophil"]
    with pytest.raises(reject.ClassSelectionError, match="model's classes are: basophil, "):
        reject.parse_classes("lymphocyte,blast", CLASSES)
    with pytest.raises(reject.ClassSelectionError, match="'blast'"):
        reject.parse_classes(["blast"], CLASSES)
    with pytest.raises(reject.ClassSelectionError, match="no class"):
        reject.parse_classes(" , ", CLASSES)


@pytest.mark.unit
def test_restrict_renormalises_and_temperature_softens():
    classes = ["a", "b", "c"]
    p = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    r = reject.restrict(p, classes, ["b", "c"])
    np.testing.assert_allclose(r, [[0.75, 0.25], [0.2 / 0.9, 0.7 / 0.9]])
    np.testing.assert_allclose(reject.restrict(p, classes), p)
    soft = reject.restrict(p, classes, temperature=2.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    assert (soft.argmax(axis=1) == p.argmax(axis=1)).all()
    assert (soft.max(axis=1) < p.max(axis=1)).all()
    # T = 2 is the square root of the probabilities, renormalised.
    np.testing.assert_allclose(soft[0], np.sqrt(p[0]) / np.sqrt(p[0]).sum())


@pytest.mark.unit
def test_coverage_curve_and_threshold_choice():
    # Confidences 0.9 (right), 0.8 (right), 0.7 (wrong), 0.6 (right), 0.5 (wrong).
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    right = np.array([True, True, False, True, False])
    p = np.stack([conf, 1 - conf], axis=1)
    y = np.where(right, 0, 1)
    curve = reject.coverage_curve(p, y)
    assert list(curve["threshold"]) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert list(curve["n_accepted"]) == [5, 4, 3, 2, 1]
    assert list(curve["accuracy"]) == pytest.approx([3 / 5, 3 / 4, 2 / 3, 1.0, 1.0])
    assert reject.choose_threshold(p, y, target_accuracy=0.99) == pytest.approx(0.8)
    assert reject.choose_threshold(p, y, target_accuracy=0.7) == pytest.approx(0.6)
    assert reject.choose_threshold(p, y, target_accuracy=None, target_coverage=0.6) == 0.7
    wrong = np.ones(5, int)
    assert reject.choose_threshold(p, wrong, target_accuracy=0.5) is None
    with pytest.raises(ValueError, match="exactly one"):
        reject.choose_threshold(p, y, target_accuracy=0.9, target_coverage=0.5)
    m = reject.accepted_metrics(p, y, 0.75)
    assert m["coverage"] == pytest.approx(0.4) and m["accepted_accuracy"] == 1.0
    assert m["all_accuracy"] == pytest.approx(0.6) and m["n_accepted"] == 2


@pytest.mark.unit
def test_ties_share_one_threshold():
    p = np.array([[0.7, 0.3], [0.7, 0.3], [0.9, 0.1]])
    curve = reject.coverage_curve(p, [0, 1, 0])
    assert list(curve["n_accepted"]) == [3, 1]  # the two 0.7s are accepted together


# --- classify --classes / uncertain ------------------------------------------------------


@pytest.mark.unit
def test_classify_restricted_to_a_labs_classes(keras_model, lab_folder, tmp_path):
    full = classify_folder(keras_model, lab_folder, progress=False)
    out = tmp_path / "p.csv"
    result = classify_folder(
        keras_model, lab_folder, out, progress=False, classes="monocyte,LYMPHOCYTE"
    )
    assert result.classes_allowed == ["lymphocyte", "monocyte"]
    csv = pd.read_csv(out, keep_default_na=False).set_index("relpath")
    assert set(csv["predicted"]) <= {"lymphocyte", "monocyte"}
    # Every class's own probability stays in the CSV, unchanged by the restriction.
    for c in CLASSES:
        np.testing.assert_allclose(
            csv[f"p_{c}"].to_numpy(float),
            full.table.set_index("relpath").loc[csv.index, f"p_{c}"].to_numpy(float),
        )
    pl = csv.loc["platelet/pl0.jpg"]
    assert full.table.set_index("relpath").loc["platelet/pl0.jpg", "predicted"] == "platelet"
    assert pl["predicted"] in {"lymphocyte", "monocyte"}
    two = pl[["p_lymphocyte", "p_monocyte"]].to_numpy(float)
    assert float(pl["probability"]) == pytest.approx(two.max() / two.sum(), abs=1e-5)
    m = result.metrics
    assert m["classes"] == ["lymphocyte", "monocyte"] and m["n"] == 5  # platelet not scored
    assert m["accuracy"] >= 4 / 5  # the tie cell is the one miss at worst
    assert result.excluded == {"platelet": 1}
    assert list(result.differential.index) == ["lymphocyte", "monocyte"]
    report = result.report()
    assert "restricted to: lymphocyte, monocyte" in report
    assert "classes outside --classes: platelet (1)" in report


@pytest.mark.unit
def test_uncertain_cells_are_marked_not_forced(keras_model, lab_folder, tmp_path):
    out = tmp_path / "p.csv"
    result = classify_folder(keras_model, lab_folder, out, progress=False, reject_below=0.5)
    csv = pd.read_csv(out, keep_default_na=False).set_index("relpath")
    grey = csv.loc["Lymphocyte/grey.jpg"]
    assert grey["status"] == "uncertain"
    assert grey["predicted"] in CLASSES  # still shown
    assert "below the threshold 0.500" in grey["reason"]
    assert (csv.drop(index="Lymphocyte/grey.jpg")["status"] == "classified").all()
    assert result.n_uncertain == 1
    assert result.differential.loc["uncertain", "count"] == 1
    assert int(result.differential["count"].sum()) == 6
    assert result.differential["percent"].sum() == pytest.approx(100.0)
    m = result.metrics
    assert m["reject_threshold"] == 0.5 and m["n_accepted"] == 5
    assert m["coverage"] == pytest.approx(5 / 6) and m["accepted_accuracy"] == 1.0
    assert "accepted cells: coverage 0.8333 (5 of 6), accuracy 1.0000" in result.report()


@pytest.mark.unit
def test_sidecar_threshold_is_the_default(keras_model, lab_folder, tmp_path):
    model = tmp_path / "models" / "m.keras"
    model.parent.mkdir()
    shutil.copy(keras_model, model)
    shutil.copy(keras_model.with_suffix(".json"), model.with_suffix(".json"))
    update_sidecar(model, temperature=1.5, reject_threshold=0.6)
    assert read_sidecar(model)["reject_threshold"] == 0.6
    result = classify_folder(model, lab_folder, progress=False)
    assert result.reject_threshold == 0.6 and result.temperature == 1.5
    assert result.n_uncertain >= 1
    off = classify_folder(model, lab_folder, progress=False, reject_below=0)
    assert off.reject_threshold is None and off.n_uncertain == 0
    with pytest.raises(ValueError, match="cannot be updated"):
        update_sidecar(model, classes=list(reversed(CLASSES)))
    with pytest.raises(SidecarError, match="temperature"):
        update_sidecar(model, temperature=-1)


@pytest.mark.unit
def test_cli_classes_and_reject(keras_model, lab_folder, tmp_path, capsys):
    out = tmp_path / "p.csv"
    argv = ["classify", str(keras_model), str(lab_folder), "--out", str(out)]
    assert main([*argv, "--classes", "lymphocyte,blast"]) == 2
    err = capsys.readouterr().err
    assert "'blast'" in err and "neutrophil" in err and "Traceback" not in err
    # Among two classes the tie cell has about half: 0.7 rejects it.
    assert main([*argv, "--classes", "lymphocyte,monocyte", "--reject-below", "0.7"]) == 0
    text = capsys.readouterr().out
    assert "restricted to: lymphocyte, monocyte" in text and "uncertain" in text
    assert pd.read_csv(out)["status"].value_counts()["uncertain"] == 1
    with pytest.raises(SystemExit):
        main([*argv, "--reject-below", "1.5"])


# --- stain: colour and scale -------------------------------------------------------------


@pytest.mark.unit
def test_reinhard_undoes_most_of_a_colour_shift():
    cells = sample_cells(4)
    for cell in cells:
        shifted = look.other_lab(cell, zoom_factor=1.0, blur=0.0)  # colour only
        before = stain.lab_distance(shifted)
        assert stain.lab_distance(stain.reinhard(shifted)) < 0.25 * before  # towards PBC's
        # With the cell's own statistics as the reference, the shift itself is undone.
        mean, std = stain.lab_stats(cell)
        own = stain.StainReference(tuple(mean), tuple(std), 0.3)
        restored = stain.reinhard(shifted, own)
        assert np.abs(restored - cell).mean() < 0.35 * np.abs(shifted - cell).mean()
    # A PBC cell barely moves: the reference is PBC's own look.
    assert np.abs(stain.reinhard(cells[0]) - cells[0]).mean() < 20


@pytest.mark.unit
def test_estimated_size_follows_the_zoom():
    cells = sample_cells(8)
    ratios = []
    for cell in cells:
        base = look.nucleus_fraction(cell)
        assert base is not None and 0.05 < base < 0.8
        for factor in (0.6, 1.5):
            ratios.append(look.nucleus_fraction(look.zoom(cell, factor)) / base / factor)
    assert np.median(ratios) == pytest.approx(1.0, abs=0.1)
    assert min(ratios) > 0.7 and max(ratios) < 1.3
    # One zoom for a lab: cells shown 1.6x larger get a zoom of about 1 / 1.6 more.
    big = [look.zoom(c, 1.6) for c in cells]
    assert look.lab_zoom(big) / look.lab_zoom(cells) == pytest.approx(1 / 1.6, rel=0.15)
    _, factor = look.rescale_cell(big[0])
    assert factor < 1.0


@pytest.mark.unit
def test_synthetic_other_lab_shifts_colour_and_size():
    cells = sample_cells(8)
    moved = [look.other_lab(c) for c in cells]
    assert all(m.shape == c.shape for m, c in zip(moved, cells, strict=True))
    far = np.median([stain.lab_distance(m) for m in moved])
    assert far > 3 * np.median([stain.lab_distance(c) for c in cells])
    # Cells 1.5x larger: --rescale-cell's zoom for them is about 1 / 1.5 of PBC's own.
    ratio = look.lab_zoom(moved, "reinhard") / look.lab_zoom(cells, "reinhard")
    assert ratio == pytest.approx(1 / look.OTHER_LAB_ZOOM, rel=0.2)


@pytest.mark.unit
def test_transform_choices():
    assert look.make_transform() is None and look.make_transform("none", 1.0) is None
    with pytest.raises(ValueError, match="reinhard, macenko"):
        look.make_transform("vahadane")
    with pytest.raises(ValueError, match="needs the lab's stains"):
        look.make_transform("macenko")
    batch = np.stack(sample_cells(2, size=64))
    out = look.make_transform("reinhard", 0.5)(batch)
    assert out.shape == batch.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255
    blank = np.full((32, 32, 3), 200.0, np.float32)
    assert look.nucleus_fraction(blank) is None
    assert look.rescale_cell(blank)[1] == 1.0
    ref = stain.StainReference.from_dict(stain.PBC_REFERENCE.to_dict())
    assert ref == stain.PBC_REFERENCE


# --- Macenko: two stains, estimated once per lab -----------------------------------------

#: Two made-up stains (unit optical-density vectors) and backgrounds for synthetic labs.
LAB_A = ((0.75, 0.62, 0.23), (0.20, 0.93, 0.30)), (250.0, 240.0, 170.0)  # yellow slide
LAB_B = ((0.65, 0.70, 0.29), (0.15, 0.97, 0.19)), (240.0, 225.0, 200.0)


def stained(amounts: np.ndarray, stains, background) -> np.ndarray:
    """RGB 0..255 of the two stain amounts ``(h, w, 2)`` on a background (Beer-Lambert)."""
    od = amounts @ np.asarray(stains, np.float64)
    return ((np.asarray(background) + 1.0) * np.exp(-od) - 1.0).astype(np.float32)


def synthetic_amounts(n: int, size: int = 48) -> list[np.ndarray]:
    """Cells as discs: a nucleus (nuclear stain) in a ring of cytoplasm (eosin), on clear
    slide; some pixels of each stain alone, as Macenko's extreme angles assume."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - size / 2
    r = np.hypot(yy, xx)
    out = []
    for _ in range(n):
        a = np.zeros((size, size, 2))
        a[..., 0] = (r < size * 0.18) * rng.uniform(0.8, 1.6)
        a[..., 1] = ((r >= size * 0.18) & (r < size * 0.33)) * rng.uniform(1.0, 2.0)
        out.append(a * rng.uniform(0.9, 1.1, (size, size, 1)))
    return out


@pytest.mark.unit
def test_macenko_recovers_a_labs_stains_and_maps_them_to_the_reference():
    amounts = synthetic_amounts(6)
    lab_a = [stained(a, *LAB_A) for a in amounts]
    est = stain.macenko_stains(lab_a, source="lab A")
    assert est.source == "lab A"
    np.testing.assert_allclose(est.background, LAB_A[1], atol=1.5)
    for got, true in zip(est.stains, LAB_A[0], strict=True):  # nuclear first, then eosin
        assert np.dot(got, true) / np.linalg.norm(true) > 0.99
    # The same cells stained as lab B: lab A's cells, normalised to B, look like them.
    lab_b = [stained(a, *LAB_B) for a in amounts]
    ref_b = stain.macenko_stains(lab_b)
    for a_img, b_img in zip(lab_a, lab_b, strict=True):
        moved = stain.macenko(a_img, est, ref_b)
        assert moved.dtype == np.float32 and moved.shape == a_img.shape
        assert np.abs(moved - b_img).mean() < 3.0 < np.abs(a_img - b_img).mean()
    # Pooled over the lab, not per image: a cell with twice the stain stays darker.
    dark = stained(amounts[0] * 2, *LAB_A)
    assert stain.macenko(dark, est, ref_b).mean() < stain.macenko(lab_a[0], est, ref_b).mean() - 5


@pytest.mark.unit
def test_macenko_brings_a_shifted_lab_towards_pbc_and_refuses_blank_frames():
    cells = sample_cells(8)
    moved = [look.other_lab(c, zoom_factor=1.0) for c in cells]
    stains = stain.macenko_stains(moved)
    back = [stain.macenko(m, stains) for m in moved]
    before = np.median([stain.lab_distance(m) for m in moved])
    assert np.median([stain.lab_distance(b) for b in back]) < 0.6 * before
    out = look.make_transform("macenko", 0.8, stains=stains)(np.stack(moved[:2]))
    assert out.shape == (2, 224, 224, 3) and 0 <= out.min() and out.max() <= 255
    assert 0.25 < look.lab_zoom(moved, "macenko") < 4.0  # stains estimated from the cells
    blank = [np.full((32, 32, 3), 200.0, np.float32)] * 3
    with pytest.raises(ValueError, match="too few to estimate the stains"):
        stain.macenko_stains(blank)


@pytest.fixture
def stained_lab(tmp_path) -> Path:
    """Eight real sample cells, one per class, moved to the synthetic other lab's look."""
    folder = tmp_path / "stained_lab"
    for i, cell in enumerate(sample_cells(8, size=96)):
        (folder / CLASSES[i]).mkdir(parents=True)
        Image.fromarray(look.other_lab(cell).round().astype(np.uint8)).save(
            folder / CLASSES[i] / f"c{i}.png"
        )
    return folder


@pytest.mark.unit
def test_classify_with_macenko_estimates_the_folders_stains(
    keras_model, stained_lab, tmp_path, capsys
):
    folder = stained_lab
    result = classify_folder(keras_model, folder, progress=False, normalize="macenko")
    assert result.lab_stains is not None and result.zoom is None
    assert "colours: macenko (stains estimated from the folder's cells)" in result.report()
    assert (result.table["status"] == "classified").all()
    out = tmp_path / "p.csv"
    assert main(["classify", str(keras_model), str(folder), "--out", str(out),
                 "--normalize", "macenko", "--rescale-cell"]) == 0  # fmt: skip
    assert "macenko" in capsys.readouterr().out and out.is_file()


# --- does a folder look like PBC? -------------------------------------------------------


@pytest.mark.unit
def test_folder_look_tells_pbc_cells_from_another_labs():
    cells = sample_cells(16, size=look.LOOK_SIZE)
    pbc = look.folder_look(cells)
    assert not pbc.unlike_pbc and pbc.n_cells == 16
    assert pbc.colour_distance < 0.6 * look.SHIFT_COLOUR_DISTANCE
    assert 0.7 < pbc.nucleus_ratio < 1.4
    other = look.folder_look([look.other_lab(c) for c in cells])
    assert other.unlike_pbc and other.nucleus_ratio > 1.25 * pbc.nucleus_ratio
    assert other.to_dict()["unlike_pbc"] is True
    blank = look.folder_look([np.full((32, 32, 3), 230.0, np.float32)])
    assert blank.nucleus_ratio is None and "nuclei" not in blank.describe()


def write_lab(folder: Path, shift: bool) -> Path:
    for i, cell in enumerate(sample_cells(8, size=96)):
        img = look.other_lab(cell) if shift else cell
        (folder / CLASSES[i]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.round().astype(np.uint8)).save(folder / CLASSES[i] / f"c{i}.png")
    return folder


@pytest.mark.unit
def test_classify_warns_when_the_cells_do_not_look_like_pbc(keras_model, tmp_path, capsys):
    pbc = classify_folder(keras_model, write_lab(tmp_path / "pbc", False), progress=False)
    assert pbc.look is not None and not pbc.look.unlike_pbc
    assert "WARNING" not in pbc.report() and "look: median colour distance" in pbc.report()
    other = write_lab(tmp_path / "other", True)
    shifted = classify_folder(keras_model, other, progress=False)
    assert shifted.look.unlike_pbc
    warning = [line for line in shifted.report().splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "try --normalize reinhard+macenko --rescale-cell" in warning[0]
    normalised = classify_folder(keras_model, other, progress=False, normalize="reinhard")
    assert "WARNING" in normalised.report() and "try --normalize" not in normalised.report()
    assert main(["classify", str(keras_model), str(other), "--out", str(tmp_path / "p.csv")]) == 0
    assert "WARNING: these cells do not look like PBC's" in capsys.readouterr().out
    # A model adapted to a lab has seen such cells: no warning, the distance still shown.
    adapted = tmp_path / "adapted" / "m.keras"
    info = {**read_sidecar(keras_model), "adapt": {"seed": 42}}
    info = {k: v for k, v in info.items() if k not in ("model_sha256", "binding_sha256")}
    save_classifier(tiny_models.vertex_classifier(SIZE), adapted, info)
    report = classify_folder(adapted, other, progress=False).report()
    assert "WARNING" not in report and "adapted to another lab's cells" in report


@pytest.mark.unit
def test_a_failed_look_never_stops_a_classification(keras_model, tmp_path, monkeypatch):
    from bloodlib.predict import classify

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(classify, "lab_sample", broken)
    with pytest.warns(UserWarning, match="could not measure the cells' look: decoder exploded"):
        result = classify_folder(keras_model, write_lab(tmp_path / "lab", True), progress=False)
    assert result.look is None and (result.table["status"] == "classified").all()
    assert "look:" not in result.report() and "WARNING" not in result.report()


@pytest.mark.unit
def test_classify_with_normalisation(keras_model, lab_folder, tmp_path):
    result = classify_folder(
        keras_model, lab_folder, progress=False, normalize="reinhard", rescale_cell=True
    )
    assert result.normalize == "reinhard" and result.zoom is not None
    assert "normalised before the model: colours: reinhard" in result.report()
    assert (result.table["status"] == "classified").all()
    with pytest.raises(ValueError, match="unknown colour normalisation"):
        classify_folder(keras_model, lab_folder, progress=False, normalize="vahadane")


@pytest.mark.unit
def test_classify_with_both_normalisations_multiplies_the_two_predictions(keras_model, stained_lab):
    assert stain.normalize_views("Reinhard+Macenko") == ("reinhard", "macenko")
    assert stain.normalize_views(None) == ("none",)
    with pytest.raises(ValueError, match="several views of each cell"):
        look.make_transform("reinhard+macenko")
    runs = {
        name: classify_folder(
            keras_model, stained_lab, progress=False, normalize=name, rescale_cell=True
        )
        for name in ("reinhard", "macenko", "reinhard+macenko")
    }
    both = runs["reinhard+macenko"]
    # Each view keeps its own zoom, measured after its own colour move, and the lab's stains.
    assert both.zoom == runs["reinhard"].zoom | runs["macenko"].zoom
    assert both.lab_stains == runs["macenko"].lab_stains
    assert "one prediction after each, multiplied" in both.report()
    p = {n: r.table[[f"p_{c}" for c in CLASSES]].to_numpy(float) for n, r in runs.items()}
    assert not np.array_equal(p["reinhard"], p["macenko"])  # two views that differ ...
    expected = log_average([p["reinhard"], p["macenko"]])  # ... multiplied
    np.testing.assert_allclose(p["reinhard+macenko"], expected, atol=2e-6)  # CSV: 6 decimals


@pytest.mark.data
@pytest.mark.skipif(not TECOM.is_dir(), reason="tecom (external-dev) is not on this machine")
def test_tecom_cells_are_larger_and_colour_normalises():
    """Another lab's real cells: larger in the frame than PBC's, colours that normalise."""
    paths = [p for d in sorted(TECOM.iterdir()) if d.is_dir() for p in sorted(d.iterdir())[:4]]
    cells = [np.asarray(Image.open(p).convert("RGB").resize((224, 224)), np.float32) for p in paths]
    assert look.lab_zoom(cells, "reinhard") < 0.85  # shrink: their cells fill more frame
    for cell in cells:
        assert stain.lab_distance(stain.reinhard(cell)) < 0.25 * stain.lab_distance(cell)
    # Macenko with the lab's dyes: a yellow slide, dyes that absorb (non-negative red density
    # for the nuclear stain), and cells moved most of the way to PBC's colours.
    stains = stain.macenko_stains(cells)
    assert stains.background[2] < stains.background[0] - 40  # tecom's slide is yellow
    assert stains.stains[0][0] > stains.stains[1][0]  # the nuclear dye absorbs more red
    moved = [stain.macenko(c, stains) for c in cells]
    before = np.median([stain.lab_distance(c) for c in cells])
    assert np.median([stain.lab_distance(m) for m in moved]) < 0.5 * before
