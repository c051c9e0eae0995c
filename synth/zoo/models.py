"""``load_model``: the model zoo (embedded toys, torchvision, CORnet, VOneNet and MadryLab checkpoints, any
nn.Module).

Everything comes back as a ``ProbeModel`` in eval mode with frozen weights on the chosen device.  Nothing is
ever downloaded: torchvision weight names resolve to torch's hub cache, and a missing file is an error that
says to pass ``weights=PATH`` (``--weights PATH`` on the command line).
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.files import sha256
from synth.zoo import checkpoints
from synth.zoo import sheets as sheets_
from synth.zoo.catalog import (
    BRAIN_SCORE_AREAS,
    CORNET_NAMES,
    VONENETS,
    WEIGHTS_DIR,
    embedded_models,
    torchvision_models,
)
from synth.zoo.cornet import AREAS as CORNET_AREAS
from synth.zoo.cornet import cornet_s, cornet_z
from synth.zoo.probe import ProbeModel
from synth.zoo.ventral import VentralNet
from synth.zoo.vone import MEAN as VONE_MEAN
from synth.zoo.vone import STD as VONE_STD
from synth.zoo.vone import VONENET_AREAS, VOneVentralNet, is_vonenet, vonenet, vonenet_tensors

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CORNETS = dict(zip(CORNET_NAMES, (cornet_z, cornet_s)))

# Brain-Score's 'resnet-50-robust' (MadryLab ImageNet Linf checkpoint in a torchvision ResNet-50).
MADRY_AREAS = {"V1": "layer3.0.downsample.0", "V2": "layer4.0.downsample.0", "V4": "layer3.0.downsample.0",
               "IT": "layer4.0.downsample.0", "behavior": "avgpool"}


def default_device() -> torch.device:
    """CUDA, then Apple MPS, then the CPU: whatever this machine has."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def require_trained(model: ProbeModel, how: str) -> ProbeModel:
    """Refuse a model built with its architecture's random initial weights (nothing is downloaded here, so a
    torchvision name without weights is untrained); ``how`` says how to pass weights or accept random ones."""
    if model.info.get("weights") == "random init":
        raise ConfigError(f"{model.name} has no trained weights here (nothing is downloaded): {how}")
    return model


def available_models() -> list[str]:
    """Every name ``load_model`` accepts (besides file paths and modules)."""
    return [*embedded_models(), *CORNETS, *VONENETS, *torchvision_models()]


def load_model(model: str | os.PathLike | nn.Module, weights: str | os.PathLike | None = None,
               device: str | torch.device | None = None, *, classes: Sequence[str] | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               areas: Mapping[str, str] | None = None, name: str | None = None,
               positions: str | os.PathLike | None = None) -> ProbeModel:
    """Load a model by zoo name, card or checkpoint path, or wrap a module; eval mode, frozen, on ``device``.

    ``weights``: a local checkpoint file, or a torchvision weights name ('DEFAULT', 'IMAGENET1K_V2') found in the
    hub cache.  ``classes``/``mean``/``std``/``areas`` override what the zoo knows (``areas`` maps 'V1', 'V2',
    'V4', 'IT', 'behavior' to layer names).  ``positions``: the units' places on cortical sheets for a
    topographic checkpoint (``sheets_.load_sheets``: a positions file, a TDANN-style .npz per layer, or a folder
    of them); an embedded topographic model's card names its own.
    """
    if isinstance(model, nn.Module):
        probe = model if isinstance(model, ProbeModel) else _wrap(model, name, classes, mean, std, areas)
    else:
        key = str(model)
        canon = key.lower().replace("-", "_")
        cards = embedded_models()
        if key in cards:
            probe = _embedded(WEIGHTS_DIR / f"{key}.json", weights)
        elif key.endswith(".json") and Path(key).is_file():
            probe = _embedded(Path(key), weights)
        elif canon in CORNETS:
            probe = _cornet(canon, weights)
        elif canon in VONENETS:
            probe = _vonenet(canon.removeprefix("vonenet_"), weights)
        elif canon in torchvision_models():
            probe = _torchvision(canon, weights)
        elif Path(key).is_file():
            probe = _from_checkpoint_file(Path(key))
        else:
            raise UnknownNameError("model", key, available_models())
        overrides = {k: v for k, v in dict(classes=classes, mean=mean, std=std, name=name).items() if v is not None}
        if overrides or areas:
            sheets, probe = probe.sheets, ProbeModel(probe.net, name=overrides.get("name", probe.name),
                               classes=overrides.get("classes", probe.classes),
                               mean=overrides.get("mean", probe.mean.flatten().tolist()),
                               std=overrides.get("std", probe.std.flatten().tolist()),
                               areas={**probe.areas, **(areas or {})}, input_size=probe.input_size, info=probe.info)
            if sheets:
                sheets_.attach(probe, sheets)
    if positions is not None:
        sheets_.attach(probe, sheets_.load_sheets(positions))
        probe.info["positions"] = str(positions)
    probe.eval().requires_grad_(False)
    return probe.to(torch.device(device) if device is not None else default_device())


def _wrap(net: nn.Module, name, classes, mean, std, areas) -> ProbeModel:
    """A user's module as a ProbeModel; without ``mean``/``std`` it is assumed to take [0,1] pixels directly."""
    n_out = None
    if classes is None:
        last = [m for m in net.modules() if isinstance(m, nn.Linear)]
        n_out = last[-1].out_features if last else 0
    return ProbeModel(net, name=name or type(net).__name__,
                      classes=classes if classes is not None else [str(i) for i in range(n_out)],
                      mean=mean if mean is not None else (0.0, 0.0, 0.0),
                      std=std if std is not None else (1.0, 1.0, 1.0),
                      areas=areas, info={"family": "module", "weights": "as passed"})


EMBEDDED_FAMILIES = ("ventralnet", "vone")


def embedded_net(arch: Mapping) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The untrained network an embedded card's ``architecture`` describes, with its input mean and std."""
    family = arch.get("family")
    if family == "vone":
        return VOneVentralNet(arch["n_classes"], tuple(arch["widths"]), arch.get("vone")), VONE_MEAN, VONE_STD
    if family == "ventralnet":
        return (VentralNet(arch["n_classes"], tuple(arch["widths"]), it_pool=arch.get("it_pool", True)),
                IMAGENET_MEAN, IMAGENET_STD)
    raise UnknownNameError("embedded architecture family", str(family), EMBEDDED_FAMILIES)


def _embedded(card_path: Path, weights: str | os.PathLike | None) -> ProbeModel:
    card = json.loads(card_path.read_text())
    arch = card["architecture"]
    if arch.get("family") not in EMBEDDED_FAMILIES:
        raise CheckpointError(f"{card_path}: unknown architecture family {arch.get('family')!r}")
    net, _, _ = embedded_net(arch)
    path = Path(weights) if weights is not None else card_path.parent / card["weights"]
    checkpoints.load_into(net, checkpoints.state_dict(checkpoints.read(path)), source=str(path))
    digest = sha256(path)
    probe = ProbeModel(net, name=card["name"], classes=card["classes"], mean=card["mean"], std=card["std"],
                       areas=card["areas"], input_size=card["input_size"],
                       info={"family": "embedded", "weights": str(path), "sha256": digest, "card": card})
    if card.get("topography"):
        positions = card_path.parent / card["topography"]["positions"]
        if weights is None and positions.is_file() and sha256(positions) != card["topography"]["sha256"]:
            raise CheckpointError(f"{positions} does not match the sha256 in {card_path.name}; retrain with "
                                  f"phosphene train {card['name']}")
        sheets = sheets_.load_sheets(positions)
        sheets_.attach(probe, sheets)
    return probe


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet category names, as torchvision ships them (no download)."""
    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _cornet(name: str, weights: str | os.PathLike | None) -> ProbeModel:
    net = CORNETS[name]()
    info = {"family": "cornet", "weights": "random init"}
    if weights is not None:
        tensors = checkpoints.state_dict(checkpoints.read(weights))
        checkpoints.load_into(net, tensors, source=str(weights))
        info = {"family": "cornet", "weights": str(weights), "sha256": sha256(weights)}
    return ProbeModel(net, name=name, classes=imagenet_classes(), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      areas=CORNET_AREAS[name], input_size=224, info=info)


def _torchvision(name: str, weights: str | os.PathLike | None) -> ProbeModel:
    enum = torchvision.models.get_model_weights(name)
    meta_weights = enum.DEFAULT
    areas = BRAIN_SCORE_AREAS.get(name, {})
    mean, std = meta_weights.transforms().mean, meta_weights.transforms().std
    info: dict = {"family": "torchvision", "weights": "random init"}
    kwargs = {"aux_logits": True, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    net = torchvision.models.get_model(name, weights=None, **kwargs)
    if weights is not None:
        path = _weights_file(enum, str(weights))
        raw = checkpoints.read(path)
        madry = _madry_parts(raw)
        if madry is not None:
            tensors, (mean, std) = madry
            areas, info["family"] = MADRY_AREAS, "madry"
        else:
            tensors = checkpoints.state_dict(raw)
        checkpoints.load_into(net, tensors, source=str(path))
        info.update(weights=str(path), sha256=sha256(path))
    return ProbeModel(net, name=name, classes=meta_weights.meta["categories"], mean=mean, std=std, areas=areas,
                      input_size=meta_weights.transforms().crop_size[0], info=info)


def _vonenet(arch: str | None, weights: str | os.PathLike | None, raw: Mapping | None = None) -> ProbeModel:
    """A VOneNet (VOneBlock, bottleneck, back-end) from a dicarlolab/vonenet checkpoint, its hyper-parameters
    read from the checkpoint's ``flags`` (or its tensor shapes), or with random back-end weights."""
    flags: dict = {}
    tensors = None
    if weights is not None:
        raw = raw if raw is not None else checkpoints.read(weights)
        if not is_vonenet(raw):
            raise CheckpointError(f"{weights} holds no VOneBlock (no vone_block.simple_conv_q0 tensors); "
                                  "is it a VOneNet checkpoint?")
        tensors = vonenet_tensors(raw)
        flags = dict(raw["flags"]) if isinstance(raw.get("flags"), Mapping) else {}
        gabor = tensors["vone_block.simple_conv_q0.weight"]
        flags.setdefault("simple_channels", gabor.shape[0] // 2)
        flags.setdefault("complex_channels", gabor.shape[0] - gabor.shape[0] // 2)
        flags.setdefault("ksize", gabor.shape[-1])
        inferred = next((b for key, b in (("model.layer1.", "resnet50"), ("model.features.", "alexnet"),
                                          ("model.V2.", "cornets")) if any(k.startswith(key) for k in tensors)), None)
        stated = str(flags.get("arch", "")).replace("_", "").lower() or None
        arch = arch or inferred or stated
        if arch is None:
            raise CheckpointError(f"cannot tell which VOneNet back-end {weights} holds; name it: "
                                  f"load_model('vonenet_resnet50', weights='{weights}')")
    net, back_end = vonenet(arch, flags)
    info = {"family": "vonenet", "weights": "random init", "flags": {k: v for k, v in flags.items()
                                                                      if isinstance(v, (str, int, float, bool))}}
    if tensors is not None:
        checkpoints.load_into(net, tensors, source=str(weights))
        info.update(weights=str(weights), sha256=sha256(weights))
    return ProbeModel(net, name=f"vonenet_{back_end}", classes=imagenet_classes(), mean=VONE_MEAN, std=VONE_STD,
                      areas=VONENET_AREAS[back_end], input_size=224, info=info)


def _weights_file(enum, weights: str) -> Path:
    """A local weights file, or the hub-cache file of a torchvision weights name; never a download."""
    if Path(weights).is_file():
        return Path(weights)
    member = weights.split(".")[-1]
    if member not in enum.__members__:
        if os.sep in weights or weights.endswith((".pt", ".pth", ".tar", ".ckpt")):
            raise CheckpointError(f"weights file not found: {weights}")
        raise UnknownNameError(f"weights of {enum.__name__}", weights, list(enum.__members__))
    spec = enum[member]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(spec.url).path)
    if cached.is_file():
        return cached
    raise CheckpointError(
        f"{enum.__name__}.{member} is not on this machine (looked in {cached}) and phosphene never downloads. "
        f"Fetch {spec.url} where there is network, then pass --weights PATH (weights=PATH), "
        f"or place the file at {cached}.")


def _madry_parts(raw: Mapping) -> tuple[dict[str, torch.Tensor], tuple[list, list]] | None:
    """Split a MadryLab ``robustness`` checkpoint into the bare network's tensors and its normalizer."""
    sd = raw.get("model", raw.get("state_dict", raw))
    if not isinstance(sd, Mapping):
        return None
    keys = [k for k in sd if isinstance(sd[k], torch.Tensor)]
    if not any(k.startswith(("module.model.", "model.")) for k in keys):
        return None
    if not any("normalizer." in k or "attacker." in k for k in keys):
        return None
    prefix = "module.model." if any(k.startswith("module.model.") for k in keys) else "model."
    tensors = {k[len(prefix):]: sd[k] for k in keys if k.startswith(prefix)}
    norm = prefix.replace("model.", "normalizer.")
    mean = sd.get(norm + "new_mean", torch.tensor(IMAGENET_MEAN)).flatten().tolist()
    std = sd.get(norm + "new_std", torch.tensor(IMAGENET_STD)).flatten().tolist()
    return tensors, (mean, std)


def _from_checkpoint_file(path: Path) -> ProbeModel:
    """A bare checkpoint path: CORnet files name their 'arch'; other formats are matched to an architecture."""
    raw = checkpoints.read(path)
    arch = raw.get("arch")
    if isinstance(arch, str) and arch.lower().replace("-", "_") in CORNETS:
        return _cornet(arch.lower().replace("-", "_"), path)
    if is_vonenet(raw):
        return _vonenet(None, path, raw)
    madry = _madry_parts(raw)
    tensors = madry[0] if madry else checkpoints.state_dict(raw)
    name = _match_architecture(tensors)
    if name is None:
        raise CheckpointError(f"cannot tell which architecture {path} holds; name it: "
                              f"load_model('resnet50', weights='{path}') or --model resnet50 --weights {path}")
    return _torchvision(name, path) if name not in CORNETS else _cornet(name, path)


def _match_architecture(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The zoo architecture whose parameter names and shapes equal the checkpoint's (built on the meta device).
    When none matches, a warning names the architectures that could not be built there, so were not compared."""
    want = {k: tuple(v.shape) for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    unbuilt: dict[str, list[str]] = {}  # why → architectures
    for name, build in [*CORNETS.items(), *((n, None) for n in torchvision_models())]:
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                net = build() if build else torchvision.models.get_model(name, weights=None)
        except Exception as e:  # some builders (RegNets) compute on tensors and cannot run on the meta device
            unbuilt.setdefault(f"{type(e).__name__}: {e}", []).append(name)
            continue
        have = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        if have == want:
            return name
    if unbuilt:
        warnings.warn("no architecture matched the checkpoint; not compared, since they cannot be built on the meta "
                      "device: " + "; ".join(f"{', '.join(names)} ({why})" for why, names in unbuilt.items()),
                      stacklevel=3)
    return None
