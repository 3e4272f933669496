"""Pretrained encoder weights (``recipe.pretrained``): fetch, verify and load torchvision's files.

torchvision publishes each weights file as ``<arch>-<first hex digits of its sha256>.pth``
(e.g. ``resnet50-0676ba61.pth``). Here that file lives at ``{data.raw_root}/pretrained/<its name>``:
downloaded there on first use (torch.hub's downloader, which checks the hash), or placed there by
hand on a machine without internet (docs/datasets.md). Every load checks the sha256 prefix again, so
a truncated, corrupted or foreign file is refused in one line, never half-loaded; a file of the
right hash but the wrong architecture is refused by its shapes, also in one line.

The weights replace the encoder's initialisation (the ResNet body; the classifier ``fc`` is not
part of an encoder), and the run normalises its inputs with the statistics the weights were
trained with (ImageNet's), not the dataset's.
"""

from __future__ import annotations

import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.errors import StageError
from pipeline.hashing import file_sha256
from pipeline.models import PRETRAINED

# torch.hub's convention: the hex digits between the last "-" and the extension.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")


class PretrainedWeightsError(StageError):
    """A pretrained weights file is missing and cannot be downloaded, damaged, or does not fit."""


@dataclass(frozen=True)
class WeightsSource:
    """Where one set of published weights comes from and what input it expects."""

    url: str
    mean: tuple[float, ...]  # (C,) input statistics the weights were trained with, [0, 1] scale
    std: tuple[float, ...]

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        match = _HASH_IN_NAME.search(self.filename)
        if match is None:
            raise ValueError(f"{self.url}: the file name carries no sha256 prefix (<name>-<hex>.pth)")
        return match.group(1)


@dataclass(frozen=True)
class PretrainedWeights:
    """Verified weights, ready to load: the state dict of the ResNet body (torchvision's keys, no
    ``fc``), the file it came from and the input normalisation it expects."""

    name: str
    backbone: str
    file: Path
    state: dict[str, Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def weights_source(name: str, backbone: str) -> WeightsSource:
    """The published file of ``PRETRAINED[name][backbone]`` (torchvision's weights API)."""
    from torchvision.models import get_weight

    if name not in PRETRAINED or backbone not in PRETRAINED[name]:
        known = {n: sorted(b) for n, b in PRETRAINED.items()}
        raise ValueError(f"no {name!r} weights for backbone {backbone!r}; known: {known}")
    weights = get_weight(PRETRAINED[name][backbone])
    transform = weights.transforms()
    return WeightsSource(weights.url, tuple(transform.mean), tuple(transform.std))


def weights_path(root: str | Path, source: WeightsSource) -> Path:
    """Where the weights file is read from, or downloaded to: ``<root>/pretrained/<file name>``."""
    return Path(root) / "pretrained" / source.filename


def download_weights(source: WeightsSource, path: Path) -> None:
    """Download ``source.url`` to ``path``, hash-checked on the way (nothing is left on a mismatch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Writes a temporary file beside ``path`` and moves it there only if the hash matches.
        torch.hub.download_url_to_file(source.url, str(path), hash_prefix=source.sha256_prefix, progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise PretrainedWeightsError(
            f"{path}: not found, and downloading {source.url} failed ({type(err).__name__}: {err}); "
            f"on a machine without internet, download that URL elsewhere and place the file at {path}") from None


def verify_weights(path: Path, source: WeightsSource) -> None:
    """Refuse a file whose sha256 does not start with the prefix its published name carries."""
    digest = file_sha256(path)
    if not digest.startswith(source.sha256_prefix):
        raise PretrainedWeightsError(
            f"{path}: sha256 {digest[:12]}... does not match the {source.sha256_prefix} published for "
            f"{source.url} (truncated, damaged or another file); delete it to download it again, or "
            "place the published file there")


def load_pretrained(name: str, backbone: str, root: str | Path) -> PretrainedWeights:
    """The verified ``name`` weights of ``backbone``, fetched into ``<root>/pretrained/`` if needed."""
    source = weights_source(name, backbone)
    path = weights_path(root, source)
    if path.exists():  # placed by hand or downloaded earlier: check it at every use
        verify_weights(path, source)
    else:  # the downloader checks the same hash prefix before it moves the file into place
        download_weights(source, path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: not a state dict of tensors")
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is not kept
    return PretrainedWeights(name, backbone, path, body, source.mean, source.std)


def apply_pretrained(encoder: nn.Module, weights: PretrainedWeights) -> None:
    """Load ``weights`` into a ResNet encoder (in place), after checking every name and shape.

    The encoder must have the ImageNet stem (images larger than 64 px) and 3 input channels, as
    the published weights do; a mismatch is one :class:`PretrainedWeightsError` line.
    """
    stem, channels = getattr(encoder, "stem", None), getattr(encoder, "in_channels", None)
    if stem != "imagenet" or channels != 3:
        raise PretrainedWeightsError(
            f"{weights.file}: {weights.name} weights need 3-channel images larger than 64 px (the ImageNet "
            f"stem); this encoder has {channels} channel(s) and the {stem!r} stem (raise prepare.resolution, "
            "or set recipe.pretrained: null)")
    target = {k.removeprefix("net."): v for k, v in encoder.state_dict().items()}
    # Files saved before BatchNorm counted its batches lack num_batches_tracked; BatchNorm fills it in.
    missing = sorted(k for k in set(target) - set(weights.state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(weights.state) - set(target))
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{weights.file}: not {weights.backbone} weights: {len(missing)} of the encoder's tensors missing"
            f"{f' (e.g. {missing[0]})' if missing else ''}, {len(unexpected)} unknown"
            f"{f' (e.g. {unexpected[0]})' if unexpected else ''}")
    wrong = [(k, tuple(weights.state[k].shape), tuple(v.shape)) for k, v in target.items()
             if k in weights.state and weights.state[k].shape != v.shape]
    if wrong:
        key, have, want = wrong[0]
        raise PretrainedWeightsError(
            f"{weights.file}: does not fit {weights.backbone}: {key} is {have} in the file, {want} in the "
            f"encoder ({len(wrong)} tensor(s) differ)")
    encoder.load_state_dict({f"net.{k}": v for k, v in weights.state.items()})
