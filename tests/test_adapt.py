"""adapt: a saved network fine-tuned on a few labelled cells of another (synthetic) lab."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_models
from shared_data import TECOM

from bloodlib import CLASSES
from bloodlib.cli import main
from bloodlib.core.config import SAMPLE_DIR
from bloodlib.core.errors import OutputPathError
from bloodlib.core.hashing import sha256_file
from bloodlib.data import look
from bloodlib.data.labs import LabFolderError, labelled_cells
from bloodlib.models.backbones import leaves
from bloodlib.models.saved import read_sidecar, save_classifier
from bloodlib.predict.engine import load_classifier
from bloodlib.train.adapt import adapt, choose_support
from bloodlib.train.few_shot import AdaptError

SIZE = 48
#: The synthetic lab's classes: the three whose sample cells differ most in stain and size
#: (platelets are small, basophils dark, eosinophils orange), so five cells each suffice.
LAB_CLASSES = ("basophil", "eosinophil", "platelet")
PER_CLASS = 30  # cells of each class in the synthetic lab
SHOTS = 5


def stain_network(size: int = SIZE):
    """A fixed "stain features" network with a head that calls every cell ``ig``.

    Features: the mean and maximum over the image of blue-minus-green, red-minus-green,
    darkness and their above-threshold parts (stained nucleus, eosin, dark granules),
    then BatchNorm and a Dense ``head``. The head starts at zero weights with a bias for
    ``ig``, a class the synthetic lab does not have: as a PBC model on another lab's
    cells, it is wrong on every cell until adapted.
    """
    import keras

    L = keras.layers
    inputs = keras.Input((size, size, 3), name="image")
    lin = L.Conv2D(3, 1, name="stain_linear")(inputs)
    thr = L.ReLU(name="stain_relu")(L.Conv2D(3, 1, name="stain_threshold")(inputs))
    x = L.Concatenate(name="stain_maps")([lin, thr])
    x = L.Concatenate(name="pool")(
        [L.GlobalAveragePooling2D(name="avg")(x), L.GlobalMaxPooling2D(name="max")(x)]
    )
    x = L.BatchNormalization(name="feature_bn")(x)
    outputs = L.Dense(len(CLASSES), activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    r, g, b = np.eye(3, dtype=np.float32)
    w_lin = np.stack([b - g, r - g, -g], axis=1) / 64.0  # (3 in, 3 out)
    model.get_layer("stain_linear").set_weights(
        [w_lin.reshape(1, 1, 3, 3), np.array([0, 0, 255 / 64], np.float32)]
    )
    model.get_layer("stain_threshold").set_weights(
        [w_lin.reshape(1, 1, 3, 3), np.array([-20, -40, 135], np.float32) / 64.0]
    )
    bias = np.zeros(len(CLASSES), np.float32)
    bias[CLASSES.index("ig")] = 3.0
    model.get_layer("head").set_weights([np.zeros((12, len(CLASSES)), np.float32), bias])
    return model


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """``look.other_lab`` copies of the embedded sample's cells, class folders in mixed case."""
    root = tmp_path_factory.mktemp("lab") / "other_lab"
    cells = []
    for cls in LAB_CLASSES:
        files = sorted(p for p in (SAMPLE_DIR / cls).glob("*.jpg") if not p.name.startswith("."))
        if len(files) < PER_CLASS:
            pytest.skip("the embedded sample is missing or too small")
        cells += [(str(p), cls.capitalize()) for p in files[:PER_CLASS]]
    assert len(look.write_other_lab(cells, root)) == 3 * PER_CLASS
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a class folder")
    return root


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "models" / "pbc.keras"
    return save_classifier(
        stain_network(),
        path,
        {
            "method": "finetune",
            "backbone": "tiny",
            "classes": list(CLASSES),
            "image_size": SIZE,
            "temperature": 1.3,
            "reject_threshold": 0.8,
        },
    )


@pytest.fixture(scope="module")
def adapted(base_model, lab, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "models" / "lab.keras"
    result = adapt(
        base_model,
        lab,
        out,
        shots=SHOTS,
        epochs=40,
        learning_rate=0.05,
        batch_size=8,
        seed=3,
        train="top",  # the tiny network has no blocks for the default "block"
    )
    return result, out


@pytest.mark.unit
def test_support_is_k_per_class_drawn_with_the_seed(lab):
    cells, ignored, _ = labelled_cells(lab)
    assert ignored == {"notes": 1}
    assert set(cells["label"]) == set(LAB_CLASSES) and len(cells) == 3 * PER_CLASS
    support, held = choose_support(cells, SHOTS, seed=3)
    assert support["label"].value_counts().to_dict() == dict.fromkeys(LAB_CLASSES, SHOTS)
    assert len(held) == 3 * (PER_CLASS - SHOTS)
    assert not set(support["relpath"]) & set(held["relpath"])
    again, _ = choose_support(cells, SHOTS, seed=3)
    other, _ = choose_support(cells, SHOTS, seed=4)
    assert list(again["relpath"]) == list(support["relpath"])
    assert list(other["relpath"]) != list(support["relpath"])
    everything, none_left = choose_support(cells, PER_CLASS + 10, seed=3)
    assert len(everything) == len(cells) and none_left.empty


@pytest.mark.unit
def test_hidden_images_in_class_folders_are_not_cells(lab, tmp_path):
    copy = tmp_path / "lab"
    shutil.copytree(lab, copy)
    tiny_models.write_cell(copy / "Platelet" / "._PLT_copy.jpg", 2, seed=601)  # decodes
    tiny_models.write_cell(copy / "Basophil" / ".thumbs" / "BA.jpg", 0, seed=602)
    cells, ignored, _ = labelled_cells(copy)
    assert ignored == {"notes": 1} and len(cells) == 3 * PER_CLASS
    assert not cells["relpath"].str.contains("/[.]").any()


@pytest.mark.unit
def test_adapting_raises_held_out_accuracy(adapted):
    result, _ = adapted
    before, after = result.before, result.after
    assert before["n"] == after["n"] == 3 * (PER_CLASS - SHOTS)
    assert before["accuracy"] == 0.0  # every cell called ig, a class this lab lacks
    assert after["accuracy"] >= 0.6
    assert after["accuracy_present"] >= before["accuracy_present"] + 0.25
    assert set(result.held_out["after"]) <= set(LAB_CLASSES) | {"ig"}
    report = result.report()
    assert "held-out accuracy (all classes): before 0.0000, after" in report
    assert "notes (1)" in report


@pytest.mark.unit
def test_adapted_model_loads_and_records_its_provenance(adapted, base_model, lab):
    result, out = adapted
    info = read_sidecar(out)
    assert info["base_model_sha256"] == sha256_file(base_model)
    assert info["base_model"] == "pbc.keras" and info["name"] == "lab"
    assert info["shots"] == SHOTS and info["classes_present"] == sorted(LAB_CLASSES)
    assert info["classes"] == list(CLASSES) and info["image_size"] == SIZE
    used = info["adapted_on"]
    assert len(used) == 3 * SHOTS
    for cell in used:
        assert sha256_file(lab / cell["relpath"]) == cell["sha256"]
        assert cell["relpath"].split("/")[0].lower() == cell["label"]
    assert not {c["relpath"] for c in used} & set(info["held_out"])
    assert len(info["held_out"]) == 3 * (PER_CLASS - SHOTS)
    # The base model's temperature and threshold were fitted on its own outputs.
    assert "temperature" not in info and "reject_threshold" not in info
    assert info["adapt"]["train"] == "top" and info["adapt"]["epochs"] == 40
    assert info["metrics"]["held_out_after"] == result.after
    clf = load_classifier(out)
    held = [str(lab / r) for r in info["held_out"]]
    proba = clf.predict_proba(held, progress=False, engine="keras")
    labels = [r.split("/")[0].lower() for r in info["held_out"]]
    acc = np.mean([clf.classes[i] == y for i, y in zip(proba.argmax(axis=1), labels, strict=True)])
    assert acc == pytest.approx(result.after["accuracy"], abs=1e-9)


@pytest.mark.unit
def test_batchnorm_mode_trains_batchnorm_too(base_model, lab, tmp_path):
    out = tmp_path / "bn.keras"
    result = adapt(base_model, lab, out, shots=2, epochs=1, train="bn", batch_size=8)
    info = read_sidecar(out)
    # head kernel + bias; BatchNorm gamma + beta (its running statistics are not trainable).
    assert info["adapt"]["trainable_weights"] == 4
    assert result.after is not None


@pytest.mark.unit
def test_top_mode_trains_the_last_convolution_and_nothing_else(base_model, lab, tmp_path):
    out = tmp_path / "top.keras"
    adapt(base_model, lab, out, shots=2, epochs=2, train="top", batch_size=4, learning_rate=0.05)
    info = read_sidecar(out)
    assert info["adapt"]["train"] == "top"
    # head kernel + bias; the last convolution's kernel + bias.
    assert info["adapt"]["trainable_weights"] == 4
    base, new = load_classifier(base_model).model, load_classifier(out).model

    def changed(name: str) -> bool:
        return any(
            not np.array_equal(a, b)
            for a, b in zip(
                base.get_layer(name).get_weights(), new.get_layer(name).get_weights(), strict=True
            )
        )

    # "Last" is the model's layer order: in a backbone, the 1x1 convolution before pooling.
    last = [layer.name for layer in base.layers if type(layer).__name__ == "Conv2D"][-1]
    other = ({"stain_linear", "stain_threshold"} - {last}).pop()
    assert changed("head") and changed(last)
    # The other convolution and BatchNorm (statistics included) stay as they were.
    assert not changed(other) and not changed("feature_bn")


@pytest.mark.unit
def test_refusals(base_model, lab, tmp_path):
    with pytest.raises(OutputPathError, match="overwrite the input model"):
        adapt(base_model, lab, base_model)
    with pytest.raises(OutputPathError, match="overwrite the input model"):
        adapt(base_model, lab, base_model.parent / ".." / "models" / "pbc.keras")
    with pytest.raises(OutputPathError, match=r"\.keras"):
        adapt(base_model, lab, tmp_path / "new.h5")
    with pytest.raises(OutputPathError, match="inside the labelled folder"):
        adapt(base_model, lab, lab / "new.keras")
    broken = tmp_path / "broken"
    shutil.copytree(lab, broken)
    (broken / "Monocyte").mkdir()
    (broken / "Monocyte" / "MO_1.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 10)
    with pytest.raises(LabFolderError, match="Monocyte"):
        adapt(base_model, broken, tmp_path / "new.keras")
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next((lab / "Platelet").iterdir()), flat / "cell.jpg")
    with pytest.raises(LabFolderError, match="no class folder"):
        adapt(base_model, flat, tmp_path / "new.keras")
    assert not (tmp_path / "new.keras").exists()


@pytest.mark.unit
def test_cli(base_model, lab, tmp_path, capsys):
    out = tmp_path / "cli.keras"
    argv = ["adapt", str(base_model), str(lab), "--out"]
    assert main([*argv, str(base_model)]) == 2
    err = capsys.readouterr().err
    assert "overwrite the input model" in err and "Traceback" not in err
    assert (
        main([*argv, str(out), "--shots", "1", "--epochs", "1", "--seed", "5", "--train", "top"])
        == 0
    )
    text = capsys.readouterr().out
    assert "adapted on 3 cells" in text and "held-out accuracy" in text
    assert read_sidecar(out)["adapt"]["seed"] == 5


@pytest.mark.data
@pytest.mark.skipif(not TECOM.is_dir(), reason="tecom (external-dev) is not on this machine")
def test_adapt_reads_a_real_labs_folder(base_model, tmp_path):
    """tecom's layout (BMP files, five classes, a single basophil) with the tiny network."""
    cells, _, _ = labelled_cells(TECOM)
    assert set(cells["label"]) <= set(CLASSES) and len(cells["label"].unique()) >= 2
    out = tmp_path / "tecom.keras"
    result = adapt(base_model, TECOM, out, shots=1, epochs=1, batch_size=8, train="top")
    assert len(result.support) == cells["label"].nunique()
    assert len(result.held_out) == len(cells) - len(result.support)
    spent = set(result.classes_present) - set(result.held_out["label"])
    for cls in spent:  # a class with one cell gives it to adapting: said in the report
        assert cls in result.report().split("every cell of ")[1]
    assert read_sidecar(out)["classes_present"] == result.classes_present


@pytest.mark.data
@pytest.mark.skipif(not TECOM.is_dir(), reason="tecom (external-dev) is not on this machine")
def test_adapt_learns_from_a_real_labs_unlabelled_cells(base_model, tmp_path):
    """tecom as its own unlabelled folder: every cell but the support's contents, labels unread."""
    out = tmp_path / "tecom_unl.keras"
    result = adapt(
        base_model, TECOM, out, shots=1, epochs=1, batch_size=8, train="top", unlabelled=TECOM
    )
    unl = result.unlabelled
    assert not set(unl["sha256"]) & set(result.support["sha256"]) and unl["sha256"].is_unique
    assert set(unl["sha256"]) == set(result.held_out["sha256"]) - set(result.support["sha256"])
    assert read_sidecar(out)["adapt"]["unlabelled"]["cells"] == len(unl)
    assert "the held-out accuracy is transductive" in result.report()


@pytest.mark.unit
def test_cli_help_states_the_library_defaults(capsys):
    """The CLI's help repeats adapt's modes and defaults: they must not drift apart."""
    from bloodlib.train import adapt as adapt_module

    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    steps, rates = adapt_module.DEFAULT_STEPS, adapt_module.DEFAULT_LEARNING_RATES
    assert f"give {steps['top']} Adam steps for --train top and block" in text
    assert steps["top"] == steps["block"]
    assert f"{steps['head']} for head and bn" in text and steps["head"] == steps["bn"]
    assert (
        f"(default {rates['top']:g} for top, {rates['block']:g} for block, "
        f"{rates['head']:g} for head and bn)" in text
    )
    assert rates["head"] == rates["bn"]
    assert f"'{adapt_module.DEFAULT_TRAIN}' (default)" in text
    assert "{" + ",".join(adapt_module.TRAIN_MODES) + "}" in text
    assert f"(default {adapt_module.DEFAULT_SHOTS})" in text
    assert f"(default {adapt_module.DEFAULT_ENTROPY_WEIGHT:g}; needs --unlabelled)" in text


@pytest.mark.unit
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])
def test_top_mode_picks_the_convolution_before_pooling(backbone):
    """On the real architectures "top" is the 1x1 convolution that feeds the pooled features."""
    from bloodlib.train.few_shot import set_learning
    from bloodlib.train.network import build_classifier
    from bloodlib.train.recipe import FinetuneConfig

    model = build_classifier(FinetuneConfig(backbone=backbone, image_size=64, weights=None))
    set_learning(model, "top")
    trainable = [w.path for w in model.trainable_weights]
    assert any("head" in p for p in trainable)
    convs = {p.split("/")[-2] for p in trainable if "head" not in p}
    assert len(convs) == 1, trainable
    (conv,) = convs
    names = [layer.name for layer in leaves(model)]
    # Only BatchNorm, activation, pooling, dropout and the head come after it.
    assert conv in names[-6:], (conv, names[-8:])


@pytest.mark.unit
def test_default_epochs_give_the_default_number_of_steps():
    from bloodlib.train.adapt import DEFAULT_STEPS, default_epochs

    # tecom, 5 shots: 21 cells (one basophil), batches of 16 -> 2 steps a pass.
    assert default_epochs("top", 21, 16) == DEFAULT_STEPS["top"] // 2
    # 20 shots of 5 classes: 7 steps a pass; never fewer steps than asked.
    assert default_epochs("top", 100, 16) == -(-DEFAULT_STEPS["top"] // 7)
    assert default_epochs("head", 3, 16) == DEFAULT_STEPS["head"]  # one batch a pass
    assert default_epochs("top", 100_000, 16) == 1


def dropout_network(rate: float):
    """:func:`stain_network` with a Dropout layer of ``rate`` before its head."""
    import keras

    inner = stain_network()
    features = keras.Model(inner.input, inner.get_layer("feature_bn").output)
    x = keras.layers.Dropout(rate, name="drop")(features.output)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="head")(x)
    model = keras.Model(features.input, outputs)
    model.get_layer("head").set_weights(inner.get_layer("head").get_weights())
    return model


@pytest.mark.unit
def test_adapting_is_repeatable_and_trains_without_dropout(lab, tmp_path):
    """Dropout is off while adapting (and back in the saved model); the same seed gives the
    same weights whatever ran before (adapt seeds before it loads the model)."""
    import random

    info = {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": SIZE}
    heads = {}
    for rate in (0.5, 0.0):
        base = save_classifier(dropout_network(rate), tmp_path / f"base{rate}.keras", info)
        for junk in (1, 2):
            random.seed(junk)  # what other code did to the global state before this call
            out = tmp_path / f"adapted{rate}_{junk}.keras"
            adapt(base, lab, out, shots=2, epochs=3, train="head", batch_size=4, learning_rate=0.05)
            model = load_classifier(out).model
            assert model.get_layer("drop").rate == rate
            heads[rate, junk] = model.get_layer("head").get_weights()
    first = heads[0.5, 1]
    assert not np.array_equal(first[0], stain_network().get_layer("head").get_weights()[0])
    for other in heads.values():  # dropout 0.5 trained exactly as no dropout
        assert all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.unit
def test_dropout_off_restores_the_rates_when_the_block_fails():
    """A failed fit (here, an exception in the block) leaves the model's Dropout as it was."""
    from bloodlib.train.few_shot import dropout_off

    model = dropout_network(0.5)
    with pytest.raises(RuntimeError), dropout_off(model):
        assert model.get_layer("drop").rate == 0.0
        raise RuntimeError("training failed")
    assert model.get_layer("drop").rate == 0.5


@pytest.mark.unit
def test_a_cropping_base_adapts_on_the_whole_frame(lab, tmp_path, monkeypatch):
    """Other labs' cells fill their frame: adapt drops the base's centre crop, keeps its
    weights, and records it."""
    import dataclasses

    import tiny_models

    from bloodlib.models import backbones
    from bloodlib.train.network import build_classifier
    from bloodlib.train.recipe import FinetuneConfig

    bb = tiny_models.backbone("tiny", tiny_models.mean_colour_builder, "none", feature_dim=3)
    monkeypatch.setitem(backbones.REGISTRY, "tiny", bb)
    cfg = FinetuneConfig(backbone="tiny", image_size=SIZE, weights=None, crop=0.5)
    info = {
        "method": "finetune",
        "backbone": "tiny",
        "classes": list(CLASSES),
        "image_size": SIZE,
        "config": dataclasses.asdict(cfg),
    }
    base = save_classifier(build_classifier(cfg), tmp_path / "cropped.keras", info)
    out = tmp_path / "adapted.keras"
    adapt(base, lab, out, shots=2, epochs=1, train="head", batch_size=4)
    adapted = load_classifier(out)
    assert "centre_crop" not in [layer.name for layer in leaves(adapted.model)]
    assert adapted.info["config"]["crop"] == 1.0
    assert adapted.info["adapt"]["base_crop_removed"] is True
    assert load_classifier(base).info["config"]["crop"] == 0.5  # the base is untouched


@pytest.mark.unit
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])
def test_block_mode_trains_the_last_block_and_what_follows_it(backbone):
    """The "block" mode: the head, every weighted layer of the backbone's last block and the top
    convolution after it; BatchNorm and everything before that block stay frozen."""
    import keras

    from bloodlib.models import backbones
    from bloodlib.train.few_shot import set_learning
    from bloodlib.train.network import build_classifier
    from bloodlib.train.recipe import FinetuneConfig

    model = build_classifier(FinetuneConfig(backbone=backbone, image_size=64, weights=None))
    n = set_learning(model, "block", backbone)
    bb = backbones.get(backbone)
    every = leaves(model)
    last = max(i for i in (bb.block_index(layer.name) for layer in every) if i is not None)
    learning = [layer for layer in every if layer.trainable and layer.weights]
    names = {layer.name for layer in learning}
    assert "head" in names
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in learning)
    assert {bb.block_index(name) for name in names} <= {last, None}
    # The whole last block learns (its depthwise convolution too), and "top"'s convolution.
    block = {
        layer.name
        for layer in every
        if bb.block_index(layer.name) == last
        and layer.weights
        and not isinstance(layer, keras.layers.BatchNormalization)
    }
    assert len(block) >= 2 and block <= names
    assert n == sum(len(layer.trainable_weights) for layer in learning)
    set_learning(model, "top")
    top = {layer.name for layer in every if layer.trainable and layer.weights}
    assert top < names


@pytest.mark.unit
def test_block_mode_refuses_a_backbone_without_blocks(base_model, lab, tmp_path):
    with pytest.raises(AdaptError, match="--train top"):
        adapt(base_model, lab, tmp_path / "b.keras", shots=2, epochs=1, train="block")
    assert not (tmp_path / "b.keras").exists()


@pytest.mark.unit
def test_block_mode_on_inception_starts_after_the_previous_blocks_marker():
    """Inception names its blocks by the concatenation that closes them ("mixed9"), and block
    10 holds concatenations called "mixed9_0" / "mixed9_1": the last block is everything after
    "mixed9" itself, its branch convolutions included."""
    import keras

    from bloodlib.train.few_shot import set_learning
    from bloodlib.train.network import build_classifier
    from bloodlib.train.recipe import FinetuneConfig

    model = build_classifier(FinetuneConfig(backbone="inception_v3", image_size=75, weights=None))
    set_learning(model, "block", "inception_v3")
    every = leaves(model)
    names = [layer.name for layer in every]
    start = names.index("mixed9")
    convs = [
        n
        for n, layer in enumerate(every)
        if isinstance(layer, keras.layers.Conv2D) and layer.trainable
    ]
    assert len(convs) >= 6  # block 10's branches: 1x1, 3x3 pairs, pooled 1x1
    assert min(convs) > start
    assert all(
        layer.trainable
        for layer in every[start + 1 :]
        if isinstance(layer, keras.layers.Conv2D) or layer.name == "head"
    )


def _mean_entropy(model_path: Path, paths: list[str], present: list[str]) -> float:
    """Mean entropy of a model's predictions renormalised over the classes ``present``."""
    clf = load_classifier(model_path)
    p = clf.predict_proba(paths, progress=False, engine="keras")
    p = p[:, [clf.classes.index(c) for c in present]]
    p = p / p.sum(axis=1, keepdims=True)
    return float(np.mean(-(p * np.log(p + 1e-12)).sum(axis=1)))


@pytest.mark.unit
def test_unlabelled_cells_are_the_folders_readable_images_but_the_support(lab, tmp_path):
    from bloodlib.data.labs import unlabelled_cells

    cells, _, _ = labelled_cells(lab)
    support, held = choose_support(cells, SHOTS, seed=3)
    unl = unlabelled_cells(lab, set(support["sha256"]), seed=3)
    assert sorted(unl["sha256"]) == sorted(held["sha256"])  # labels unread, support left out
    mixed = tmp_path / "mixed"
    shutil.copytree(lab / "Platelet", mixed / "any" / "layout")
    first = next((lab / "Platelet").iterdir())
    shutil.copy(first, mixed / "copy_of_a_cell.jpg")  # same content: counted once
    # Hidden files that decode to cells of their own (macOS copies, thumbnails) are left out.
    tiny_models.write_cell(mixed / ".hidden.jpg", 0, seed=501)
    tiny_models.write_cell(mixed / ".thumbs" / "cell.jpg", 1, seed=502)
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 10)
    got = unlabelled_cells(mixed, set(), seed=3)
    assert len(got) == PER_CLASS and got["sha256"].is_unique
    assert not got["relpath"].str.contains("hidden|thumbs|broken").any()
    few = unlabelled_cells(mixed, set(), seed=3, limit=7)
    assert len(few) == 7 and few.equals(unlabelled_cells(mixed, set(), seed=3, limit=7))
    with pytest.raises(LabFolderError, match="no usable image besides the labelled cells"):
        unlabelled_cells(mixed, set(got["sha256"]), seed=3)


@pytest.mark.unit
def test_entropy_among_the_classes_present():
    from bloodlib.train.few_shot import entropy_among

    p = np.array(
        [
            [0.25, 0.25, 0.25, 0.25],  # uniform over all four
            [0.0, 1.0, 0.0, 0.0],  # certain
            [0.5, 0.0, 0.5, 0.0],  # split between two of the three present
            [0.1, 0.3, 0.3, 0.3],  # mostly on class 3, which the lab does not have
        ]
    )
    present = [0, 1, 2]
    q = np.array([1, 3, 3]) / 7  # the last row renormalised over the classes present
    want = [np.log(3), 0.0, np.log(2), -np.sum(q * np.log(q))]
    np.testing.assert_allclose(np.asarray(entropy_among(p, present)), want, atol=1e-5)


@pytest.mark.unit
def test_unlabelled_cells_lower_the_entropy_of_their_predictions(base_model, lab, tmp_path):
    """The entropy term does what it says: on the same draw, seed and steps, the cells it saw
    without labels end up predicted with less entropy than with a weight of 0."""
    kw = dict(shots=SHOTS, epochs=15, learning_rate=0.05, batch_size=8, seed=3, train="top")
    plain = adapt(base_model, lab, tmp_path / "w0.keras", unlabelled=lab, entropy_weight=0.0, **kw)
    sharp = adapt(base_model, lab, tmp_path / "w2.keras", unlabelled=lab, entropy_weight=2.0, **kw)
    held = [str(lab / r) for r in plain.held_out["relpath"]]
    present = plain.classes_present
    h0 = _mean_entropy(tmp_path / "w0.keras", held, present)
    h2 = _mean_entropy(tmp_path / "w2.keras", held, present)
    assert h2 < h0 - 0.05
    info = read_sidecar(tmp_path / "w2.keras")["adapt"]["unlabelled"]
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(plain.held_out["sha256"])).encode()).hexdigest()
    assert info == {"cells": len(held), "sha256": digest, "entropy_weight": 2.0}
    report = sharp.report()
    assert f"also learnt from {len(held)} unlabelled cells (entropy weight 2)" in report
    assert "the held-out accuracy is transductive" in report

    # Repeatable: the unlabelled stream is seeded too, so the same call gives the same weights.
    again = adapt(base_model, lab, tmp_path / "w2b.keras", unlabelled=lab, entropy_weight=2.0, **kw)
    assert again.after == sharp.after
    first, second = (load_classifier(tmp_path / n).model for n in ("w2.keras", "w2b.keras"))
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.unit
def test_unlabelled_refusals(base_model, lab, tmp_path, capsys):
    with pytest.raises(OutputPathError, match="inside the unlabelled folder"):
        adapt(base_model, lab, tmp_path / "cells" / "new.keras", unlabelled=tmp_path / "cells")
    assert not (tmp_path / "cells").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="entropy_weight"):
        adapt(base_model, lab, tmp_path / "new.keras", unlabelled=lab, entropy_weight=-1.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LabFolderError, match="no usable image"):
        adapt(base_model, lab, tmp_path / "new.keras", unlabelled=empty, train="top")
    argv = ["adapt", str(base_model), str(lab), "--out", str(tmp_path / "new.keras")]
    assert main([*argv, "--entropy-weight", "0.5"]) == 2
    assert "give --unlabelled FOLDER" in capsys.readouterr().err
    assert not (tmp_path / "new.keras").exists()


@pytest.mark.unit
def test_steps_ask_for_a_lighter_adaptation_and_exclude_epochs():
    """``steps`` (the classroom run's 40): the epochs follow from the cells and the batch."""
    from bloodlib.train.adapt import check_options, default_epochs

    assert default_epochs("block", 21, 16, steps=40) == 20  # 2 batches a pass
    assert default_epochs("block", 100, 16, steps=40) == -(-40 // 7)
    check_options("block", 5, None, 16, None, 0.3, steps=40)
    with pytest.raises(ValueError, match="not both"):
        check_options("block", 5, 3, 16, None, 0.3, steps=40)
    with pytest.raises(ValueError, match="at least 1"):
        check_options("block", 5, None, 16, None, 0.3, steps=0)
