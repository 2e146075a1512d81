"""Image extractors: strict Lite0 weights that carry information; folder, zip and CSV inputs; pixels."""

from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest
from flowgmm_testutils import run_cli, shared_data

timm = pytest.importorskip("timm")
image = pytest.importorskip("extractors.image")
PIL = pytest.importorskip("PIL.Image")


def save_digits(folder, count: int = 12, size: int = 16) -> list[str]:
    """Little synthetic grey images in class folders 'bar' and 'dot'; returns their ids."""
    rng = np.random.default_rng(0)
    ids = []
    for i in range(count):
        label = "bar" if i % 2 else "dot"
        pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
        if label == "bar":
            pixels[:, size // 2 - 1 : size // 2 + 1] = 255
        else:
            pixels[size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = 255
        (folder / label).mkdir(parents=True, exist_ok=True)
        PIL.fromarray(pixels).save(folder / label / f"img{i:02d}.png")
        ids.append(f"{label}/img{i:02d}")
    return sorted(ids)


def read(path):
    with h5py.File(path) as handle:
        return (handle["features"][...], [v.decode() for v in handle["ids"][...]],
                [v.decode() for v in handle["labels"][...]] if "labels" in handle else None, dict(handle.attrs))  # fmt: skip


def test_lite0_weights_load_strictly_into_timm():
    model = timm.create_model(image.LITE0, pretrained=False)
    result = model.load_state_dict(image.lite0_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert image.load_timm_model(image.LITE0, "lite0-package", "lite0").num_features == 1280


@pytest.mark.slow
def test_lite0_features_of_mnist_carry_information(tmp_path, capsys):
    """Logistic regression on Lite0 features of 2,000 MNIST test images, against a random network's."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from extractors import EmbedRequest

    mnist = np.load(shared_data("mnist/mnist.npz"))
    images, labels = mnist["x_test"][:2000], mnist["y_test"][:2000]
    for i, pixels in enumerate(images):
        PIL.fromarray(pixels).save(tmp_path / f"{i:04d}.png")
    scores = {}
    for name, weights in (("pretrained", "lite0-package"), ("random", "random")):
        torch.manual_seed(0)  # the random network's initial weights
        extractor = image.ImageExtractor(name, image.LITE0, weights, 1280, name)
        out = tmp_path / f"{name}.h5"
        extractor.embed(EmbedRequest(str(tmp_path), out, options={"workers": 0, "batch_size": 100}))
        features, ids, _, _ = read(out)
        assert ids == [f"{i:04d}" for i in range(2000)]
        classifier = LogisticRegression(max_iter=2000, C=0.1)
        scores[name] = float(np.mean(cross_val_score(classifier, (features - features.mean(0)) / (features.std(0) + 1e-6), labels, cv=4)))
    with capsys.disabled():
        print(f"\nMNIST 2,000 test images, 4-fold logistic regression: Lite0 {scores['pretrained']:.3f}, random init {scores['random']:.3f}")
    # measured: 0.932 against 0.830
    assert scores["pretrained"] >= scores["random"] + 0.05
    assert scores["pretrained"] >= 0.9


def test_folder_zip_and_csv_inputs_agree(tmp_path, capsys):
    folder = tmp_path / "images"
    ids = save_digits(folder)
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, path.relative_to(folder).as_posix())
    (tmp_path / "list.csv").write_text("id,path,label\n" + "".join(f"{i},images/{i}.png,{i.split('/')[0]}\n" for i in ids))
    common = ["--model", "efficientnet-lite0", "--workers", "0", "--batch-size", "5", "--chunk-size", "4"]
    outputs = {}
    for name, source, extra in (("folder", folder, ["--labels-from-folders"]), ("zip", tmp_path / "images.zip", ["--labels-from-folders"]),
                                ("csv", tmp_path / "list.csv", ["--label-column", "label"])):  # fmt: skip
        code, _, err = run_cli(["embed", source, "-o", tmp_path / f"{name}.h5", *common, *extra], capsys)
        assert code == 0, err
        outputs[name] = read(tmp_path / f"{name}.h5")
    features, got_ids, labels, attrs = outputs["folder"]
    assert got_ids == ids and labels == [i.split("/")[0] for i in ids]
    assert features.shape == (12, 1280) and attrs["extractor"] == "efficientnet-lite0" and attrs["model"] == image.LITE0
    for name in ("zip", "csv"):
        np.testing.assert_allclose(outputs[name][0], features, rtol=1e-5, atol=1e-5)
        assert outputs[name][1] == ids and outputs[name][2] == labels


def test_unreadable_images_fail_naming_the_file_or_are_skipped(tmp_path, capsys):
    folder = tmp_path / "images"
    ids = save_digits(folder, count=4)
    (folder / "dot" / "broken.png").write_bytes(b"not a png")
    args = ["embed", folder, "--model", "efficientnet-lite0", "--workers", "0", "-o", tmp_path / "f.h5"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "broken.png" in err and "--on-error skip" in err
    assert not (tmp_path / "f.h5").exists()
    code, _, err = run_cli([*args, "--on-error", "skip"], capsys)
    assert code == 0, err
    assert "skipped 1 unreadable images: dot/broken" in err
    features, got_ids, _, attrs = read(tmp_path / "f.h5")
    assert got_ids == ids and json.loads(attrs["skipped_ids"]) == ["dot/broken"]


@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        ("empty", [], "No images"),
        ("clash", [], "get the same id 'a'"),
        ("folder", ["--checkpoint", "timm:no_such_net"], "timm has no model 'no_such_net'"),
        ("folder", ["--checkpoint", "resnet18"], "must be timm:NAME"),
        ("folder", ["--on-error", "ignore"], "--on-error must be"),
        ("missing", [], "does not exist"),
        ("notimage", [], "is not a folder, a zip or a .csv"),
    ],
)
def test_bad_image_inputs_exit_2(tmp_path, capsys, setup, args, expected):
    folder = tmp_path / "in"
    folder.mkdir()
    source = folder
    if setup == "clash":
        save_digits(tmp_path / "x", count=1)
        for suffix in (".png", ".jpg"):
            PIL.fromarray(np.zeros((8, 8), np.uint8)).save(folder / f"a{suffix}")
    elif setup == "folder":
        save_digits(folder, count=2)
    elif setup == "missing":
        source = tmp_path / "nowhere"
    elif setup == "notimage":
        source = tmp_path / "notes.txt"
        source.write_text("hello")
    code, _, err = run_cli(["embed", source, "--model", "efficientnet-lite0", "-o", tmp_path / "o.h5", *args], capsys)
    assert code == 2, err
    assert expected in err and "Traceback" not in err


def test_efficientnet_b0_offline_fails_fast(tmp_path, capsys):
    from extractors.hub import hub_online

    if hub_online():
        pytest.skip("the model hub is reachable from here")
    save_digits(tmp_path / "in", count=2)
    code, _, err = run_cli(["embed", tmp_path / "in", "--model", "efficientnet", "-o", tmp_path / "o.h5"], capsys)
    assert code == 2 and "efficientnet-lite0" in err and "--checkpoint PATH" in err


def test_pixels_from_arrays_and_images(tmp_path, capsys):
    from flowgmm_cli.features import read_features

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", x=images, y=np.arange(7) % 2)
    code, _, err = run_cli(["embed", tmp_path / "set.npz", "--model", "pixels", "--array-key", "x", "--label-key", "y",
                            "-o", tmp_path / "a.h5", "--chunk-size", "3"], capsys)  # fmt: skip
    assert code == 0, err
    features, ids, labels, attrs = read(tmp_path / "a.h5")
    assert features.dtype == np.uint8 and features.shape == (7, 1, 5, 6) and list(attrs["shape"]) == [1, 5, 6]
    np.testing.assert_array_equal(features[:, 0], images)
    assert ids == [str(i) for i in range(7)] and labels == [str(i % 2) for i in range(7)]
    assert read_features(tmp_path / "a.h5").features.shape == (7, 30)

    folder = tmp_path / "pics"
    save_digits(folder, count=3, size=10)
    code, _, err = run_cli(["embed", folder, "--model", "pixels", "--labels-from-folders", "-o", tmp_path / "p.h5"], capsys)
    assert code == 0, err
    features, ids, _, _ = read(tmp_path / "p.h5")
    first = np.asarray(PIL.open(folder / f"{ids[0]}.png"))
    assert features.shape == (3, 1, 10, 10)
    np.testing.assert_array_equal(features[0, 0], first)
    PIL.fromarray(np.zeros((12, 12, 3), np.uint8)).save(folder / "dot" / "zz_big.png")
    code, _, err = run_cli(["embed", folder, "--model", "pixels", "-o", tmp_path / "q.h5"], capsys)
    assert code == 2 and "zz_big.png" in err and "--image-size" in err
    code, _, err = run_cli(["embed", folder, "--model", "pixels", "--image-size", "8", "--grayscale", "-o", tmp_path / "q.h5"], capsys)
    assert code == 0, err
    assert read(tmp_path / "q.h5")[0].shape == (4, 1, 8, 8)


@pytest.mark.parametrize(
    ("arrays", "args", "expected"),
    [
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2)}, [], "choose the images with --array-key"),
        ({"x": np.zeros((2, 4, 4), np.uint8)}, ["--array-key", "images"], "has no array 'images'"),
        ({"x": np.zeros((2, 4, 4), np.float32)}, [], "pixels must be integers"),
        ({"x": np.zeros((2, 4), np.uint8)}, [], "expected images as"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3)}, ["--array-key", "x", "--label-key", "y"], "but 3 labels"),
    ],
)
def test_bad_pixel_arrays_exit_2(tmp_path, capsys, arrays, args, expected):
    np.savez(tmp_path / "a.npz", **arrays)
    code, _, err = run_cli(["embed", tmp_path / "a.npz", "--model", "pixels", "-o", tmp_path / "o.h5", *args], capsys)
    assert code == 2 and expected in err, err
