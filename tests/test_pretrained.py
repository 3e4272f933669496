"""Pretrained weights (pipeline/models/pretrained.py) on fabricated weights files in torchvision's
format and naming (``<arch>-<sha256 prefix>.pth``), served from ``file://`` URLs: the real fetch,
hash check, shape check and load run offline; the untrained baseline exports them unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import models as tvm

from conftest import tiny_params
from pipeline.config import validate
from pipeline.data.records import COARSE_TO_FINE, Records, Split
from pipeline.hashing import file_sha256
from pipeline.models import PRETRAINED
from pipeline.models import pretrained as pt
from pipeline.models.resnet import ResNet18, ResNet50
from pipeline.training import train

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fabricate(folder: Path, arch: str, state: dict[str, torch.Tensor]) -> tuple[Path, pt.WeightsSource]:
    """``state`` saved as torchvision names its files, and a source that serves it by file:// URL."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "weights.tmp"
    torch.save(state, tmp)
    path = folder / f"{arch}-{file_sha256(tmp)[:8]}.pth"
    tmp.rename(path)
    return path, pt.WeightsSource(path.as_uri(), IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pt.WeightsSource, dict]:
    torch.manual_seed(1)
    state = tvm.resnet18(weights=None).state_dict()  # with fc, as torchvision's files are
    return (*fabricate(tmp_path_factory.mktemp("published"), "resnet18", state), state)


def serve(monkeypatch: pytest.MonkeyPatch, source: pt.WeightsSource) -> None:
    monkeypatch.setattr(pt, "weights_source", lambda name, backbone: source)


def test_the_registry_names_torchvisions_imagenet_files() -> None:
    """The weights every published worst-group anchor starts from (no network needed: metadata)."""
    r50, r18 = pt.weights_source("imagenet", "resnet50"), pt.weights_source("imagenet", "resnet18")
    assert (r50.filename, r50.sha256_prefix) == ("resnet50-0676ba61.pth", "0676ba61")
    assert r18.filename == "resnet18-f37072fd.pth"
    assert r50.mean == pytest.approx(IMAGENET_MEAN) and r50.std == pytest.approx(IMAGENET_STD)
    assert set(PRETRAINED["imagenet"]) == {"resnet18", "resnet50"}


def test_weights_are_downloaded_verified_and_loaded_into_the_encoder(
        resnet18_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published, source, state = resnet18_file
    serve(monkeypatch, source)
    weights = pt.load_pretrained("imagenet", "resnet18", tmp_path)
    assert weights.file == tmp_path / "pretrained" / published.name
    assert weights.file.read_bytes() == published.read_bytes()
    assert not any(k.startswith("fc.") for k in weights.state)  # the classifier is not an encoder's
    encoder = ResNet18(3, 96)  # > 64 px: the ImageNet stem, as the weights need
    pt.apply_pretrained(encoder, weights)
    # The encoder is torchvision's network with these weights, minus the classifier.
    reference = tvm.resnet18(weights=None)
    reference.load_state_dict(state)
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), reference.eval()(x))


def test_a_file_placed_by_hand_is_used_without_downloading(
        resnet18_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published, source, _ = resnet18_file
    placed = tmp_path / "pretrained" / published.name
    placed.parent.mkdir()
    placed.write_bytes(published.read_bytes())
    serve(monkeypatch, dataclasses.replace(source, url=(tmp_path / "offline" / published.name).as_uri()))
    assert pt.load_pretrained("imagenet", "resnet18", tmp_path).file == placed


def _one_line_error(call) -> str:
    with pytest.raises(pt.PretrainedWeightsError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_damaged_file_is_refused_by_its_hash(resnet18_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published, source, _ = resnet18_file
    placed = tmp_path / "pretrained" / published.name
    placed.parent.mkdir()
    placed.write_bytes(published.read_bytes()[:-100])  # truncated
    serve(monkeypatch, source)
    message = _one_line_error(lambda: pt.load_pretrained("imagenet", "resnet18", tmp_path))
    assert f"{placed}: sha256" in message and f"does not match the {source.sha256_prefix}" in message
    assert "delete it" in message


def test_a_failed_download_names_the_url_and_where_to_place_the_file(
        resnet18_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, source, _ = resnet18_file
    gone = dataclasses.replace(source, url=(tmp_path / "nowhere" / "resnet18-f37072fd.pth").as_uri())
    serve(monkeypatch, gone)
    message = _one_line_error(lambda: pt.load_pretrained("imagenet", "resnet18", tmp_path))
    target = tmp_path / "pretrained" / "resnet18-f37072fd.pth"
    assert message.startswith(f"{target}: not found, and downloading {gone.url} failed")
    assert f"place the file at {target}" in message and not target.exists()


def test_weights_of_the_wrong_shape_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tvm.resnet50(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a grayscale network's first layer
    _, source = fabricate(tmp_path / "published", "resnet50", state)
    serve(monkeypatch, source)
    weights = pt.load_pretrained("imagenet", "resnet50", tmp_path)
    message = _one_line_error(lambda: pt.apply_pretrained(ResNet50(3, 96), weights))
    assert "does not fit resnet50: conv1.weight is (64, 1, 7, 7) in the file, (64, 3, 7, 7) in the encoder" in message


def test_weights_of_another_architecture_are_refused(resnet18_file, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, source, _ = resnet18_file
    serve(monkeypatch, source)
    weights = dataclasses.replace(pt.load_pretrained("imagenet", "resnet18", tmp_path), backbone="resnet50")
    message = _one_line_error(lambda: pt.apply_pretrained(ResNet50(3, 96), weights))
    assert "not resnet50 weights:" in message and "tensors missing (e.g. layer1.0.bn3.bias), 0 unknown" in message  # (bottleneck blocks)


def test_the_cifar_stem_cannot_take_imagenet_weights(resnet18_file, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, source, _ = resnet18_file
    serve(monkeypatch, source)
    weights = pt.load_pretrained("imagenet", "resnet18", tmp_path)
    message = _one_line_error(lambda: pt.apply_pretrained(ResNet18(3, 32), weights))
    assert "need 3-channel images larger than 64 px" in message and "'cifar' stem" in message


def _photos(n: int = 12, size: int = 72) -> Records:
    """A tiny 3-channel coarse-to-fine dataset at a size that gets the ImageNet stem."""
    rng = np.random.default_rng(0)
    splits = {}
    for name in ("train", "val", "test"):
        fine = np.arange(n) % 4
        splits[name] = Split(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
                             {"coarse": fine // 2, "fine": fine})
    return Records("photos", COARSE_TO_FINE, splits, {"coarse": ["a", "b"], "fine": list("abcd")})


def test_the_untrained_baseline_exports_the_pretrained_weights_unchanged(
        resnet18_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loss weight 0: no step is taken; the model file holds the published weights and the
    normalisation they were trained with (ImageNet's, not the dataset's)."""
    _, source, state = resnet18_file
    serve(monkeypatch, source)
    weights = pt.load_pretrained("imagenet", "resnet18", tmp_path)
    p = tiny_params(epochs=2)
    p["datasets"]["digits"]["recipe"].update(backbone="resnet18", pretrained="imagenet")
    p["methods"]["trained"]["untrained"] = dict.fromkeys(("ce", "supcon", "cnce", "simclr", "recon"), 0.0)
    params = validate(p)
    out = train(_photos(), params.datasets["digits"], params.methods.trained["untrained"], params.train,
                seed=0, progress=False, init=weights)
    assert out.history == []
    exported = out.model["encoder"]
    assert all(torch.equal(exported[f"net.{k}"], v) for k, v in state.items() if not k.startswith("fc."))
    torch.testing.assert_close(out.model["mean"], torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(out.model["std"], torch.tensor(IMAGENET_STD))

    trained = train(_photos(), params.datasets["digits"], params.methods.trained["supcon"], params.train,
                    seed=0, progress=False, init=weights)
    assert len(trained.history) == 2  # a trained method starts from the same weights and moves them
    assert not torch.equal(trained.model["encoder"]["net.conv1.weight"], state["conv1.weight"])
