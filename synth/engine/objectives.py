"""Objectives: functions of layer activations that give one score per image, to be *maximized*.

They compose (``a + b``, ``a - b``, ``2 * a``, ``-a``, ``a / 2``), name the layers they read (so the engine runs
the model only that far), and print as a readable string that ``parse`` reads back::

    IT:12                      channel 12 of IT, averaged over space (a "unit" of a pooled layer)
    V4:c5[3,4]                 channel 5 of V4 at row 3, column 4
    V4:readout:site3           a recorded site, through a readout attached to the model
    stretch(IT:12)             drive one site as high as it goes (Bashivan et al. 2019)
    onehot(V4:readout:site3)   drive one site while the rest of its population stays low (softmax score)
    norm(V4)                   mean squared activation of a whole layer
    outside(input)             squared excursion of the pixels outside [0, 1] (a range penalty, subtracted)
    IT:12 + 0.1*diversity(V4)  several images that differ in their V4 Gram matrices (Olah et al. 2017)
    xent(logits, y={3,0})      cross-entropy of the true labels, one per image (untargeted attacks ascend it)
    margin(logits, target=faces, kappa=5)   Carlini-Wagner margin of a target class over the best other class
    dlr(logits, y={3,0}, target={5,1})      Croce & Hein's difference-of-logits ratio (AutoAttack's APGD-T loss)
    match(IT, image='ref.png', metric=normalized)   minus ||a - a*|| / ||a*||, a* the response to an image (metamers)
    match(IT, target='acts.pt')                     the same against saved activations ('.pt' or '.npy')
    direction(V4, target='sha256:1f0c...')          projection on a vector held in this process or a saved result

``logits`` (the network's output) and ``input`` (the [0,1] pixels) are layers of every model.  A target tensor
given in code prints as its digest ('sha256:...'): ``parse`` finds it again while the tensor lives in this process,
and a saved result keeps its targets so that loading it makes them known again (``register_target``).  Objectives that
hold one value per image (site sets, labels, per-image targets) follow the engine when it drops finished images
from the batch: ``select(index)`` keeps the entries of the images still running.

Objectives are small classes, not closures, so a debugger can show what they hold.
"""
from __future__ import annotations

import inspect
import math
import re
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from synth.errors import ConfigError, UnknownNameError
from synth.files import tensor_digest

Acts = Mapping[str, torch.Tensor]


class Objective(ABC):
    """Base: ``score(acts) -> (N,)`` tensor; ``layers`` it reads; arithmetic builds weighted sums."""

    layers: tuple[str, ...] = ()

    @abstractmethod
    def score(self, acts: Acts) -> torch.Tensor:
        """One score per image (higher is better)."""

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.score(acts)

    def resolve(self, model) -> Objective:
        """A copy whose layer names and site names are checked against ``model`` and made canonical."""
        return self

    def select(self, index: torch.Tensor) -> Objective:
        """The objective for the images ``index`` of the batch (per-image entries subset; others unchanged)."""
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        """Target tensors given in code that the string form names by digest (a saved result keeps them)."""
        return {}

    def fingerprint(self) -> str:
        """Everything that defines the objective (its text, and what the text does not show, such as a black-box
        subject's identity): what a run's checkpoint must agree on."""
        return str(self)

    def state_dict(self) -> dict:
        """State the objective changes as a run goes (e.g. how many presentations a subject has seen): saved in a
        run's checkpoint, so a resumed run continues it."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - a stateless objective has nothing to restore
        """Restore what ``state_dict`` saved."""

    # arithmetic ------------------------------------------------------------------------------------------
    def __add__(self, other: Objective) -> Objective:
        return Sum([(1.0, self), (1.0, _objective(other))])

    def __sub__(self, other: Objective) -> Objective:
        return Sum([(1.0, self), (-1.0, _objective(other))])

    def __mul__(self, w: float) -> Objective:
        return Sum([(_number(w), self)])

    __rmul__ = __mul__

    def __truediv__(self, w: float) -> Objective:
        if _number(w) == 0:
            raise ConfigError(f"cannot divide objective {self} by zero")
        return Sum([(1.0 / w, self)])

    def __neg__(self) -> Objective:
        return Sum([(-1.0, self)])

    def __repr__(self) -> str:
        return f"Objective({str(self)!r})"


def _objective(x) -> Objective:
    if not isinstance(x, Objective):
        raise ConfigError(f"objectives combine with objectives, not {type(x).__name__}")
    return x


def _number(w) -> float:
    if not isinstance(w, (int, float)) or not math.isfinite(w):
        raise ConfigError(f"an objective's weight must be a finite number, got {w!r}")
    return float(w)


class Sum(Objective):
    """A weighted sum of objectives; nested sums are flattened."""

    def __init__(self, terms: list[tuple[float, Objective]]):
        flat = []
        for w, t in terms:
            flat += [(w * w2, t2) for w2, t2 in t.terms] if isinstance(t, Sum) else [(w, t)]
        self.terms = flat
        self.layers = tuple(dict.fromkeys(layer for _, t in flat for layer in t.layers))

    def score(self, acts: Acts) -> torch.Tensor:
        return sum(w * t.score(acts) for w, t in self.terms)

    def resolve(self, model) -> Objective:
        return Sum([(w, t.resolve(model)) for w, t in self.terms])

    def select(self, index: torch.Tensor) -> Objective:
        return Sum([(w, t.select(index)) for w, t in self.terms])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for _, t in self.terms for k, v in t.tensors().items()}

    def fingerprint(self) -> str:
        return " + ".join(f"{w:g}*{t.fingerprint()}" for w, t in self.terms)

    def state_dict(self) -> dict:
        return {str(i): t.state_dict() for i, (_, t) in enumerate(self.terms)}

    def load_state_dict(self, state: dict) -> None:
        for i, (_, t) in enumerate(self.terms):
            t.load_state_dict(state.get(str(i), {}))

    def __str__(self) -> str:
        out = ""
        for w, t in self.terms:
            sign = "-" if w < 0 else "+"
            mag = abs(w)
            body = str(t) if mag == 1 else f"{mag:g}*{t}"
            out += (("-" if sign == "-" else "") + body) if not out else f" {sign} {body}"
        return out


def population(a: torch.Tensor) -> torch.Tensor:
    """N×C responses: spatial means of a conv layer, or the layer itself when it is already N×C."""
    return a.flatten(2).mean(2) if a.ndim > 2 else a


Index = int | str | tuple[int | str, ...]


class Site(Objective):
    """One site of a layer: a channel (averaged over space), a unit (channel at a position) or a readout site.

    ``index`` may be a tuple with one entry per image: image k then drives site ``index[k]``, so a whole set of
    sites is optimized in one batch ('IT:{3,7,12}').
    """

    def __init__(self, layer: str, index: Index, position: tuple[int, int] | None = None):
        self.layer, self.index, self.position = layer, index, position
        self.layers = (layer,)
        self.label: Index | None = None  # site names as written, kept for display after resolution

    def resolve(self, model) -> Site:
        layer = model.layer(self.layer)
        many = isinstance(self.index, tuple)
        indices = list(self.index) if many else [self.index]
        named = any(isinstance(i, str) for i in indices)
        if named:
            sites = model.sites(layer)
            for i in indices:
                if isinstance(i, str) and i not in sites:
                    raise UnknownNameError(f"site of {layer!r}", i, sites)
            indices = [sites.index(i) if isinstance(i, str) else i for i in indices]
        out = self._copy(layer, tuple(indices) if many else indices[0])
        out.label = self.index if named else None
        return out

    def _copy(self, layer: str, index: Index) -> Site:
        return type(self)(layer, index, self.position)

    def select(self, index: torch.Tensor) -> Site:
        if not isinstance(self.index, tuple):
            return self
        keep = index.tolist()
        out = self._copy(self.layer, tuple(self.index[i] for i in keep))
        out.label = tuple(self.label[i] for i in keep) if self.label is not None else None
        return out

    def _rows(self, a: torch.Tensor) -> torch.Tensor:
        """Index tensor: which site each image drives (checked against the layer's size)."""
        many = isinstance(self.index, tuple)
        indices = self.index if many else (self.index,)
        if not all(isinstance(i, int) for i in indices):
            raise ConfigError(f"site {self.index!r} must be resolved against a model first (objective.resolve)")
        bad = [i for i in indices if not 0 <= i < a.shape[1]]
        if bad:
            raise ConfigError(f"index {bad[0]} out of range: layer {self.layer!r} has {a.shape[1]} channels/sites")
        if many and len(indices) != a.shape[0]:
            raise ConfigError(f"{len(indices)} sites for {a.shape[0]} images: give one site per image")
        rows = torch.tensor(indices, device=a.device)
        return rows if many else rows.expand(a.shape[0])

    def values(self, acts: Acts) -> torch.Tensor:
        """The driven site's response, per image (only the driven channel is read, so the backward is cheap)."""
        a = acts[self.layer]
        rows = self._rows(a)
        picked = a[:, self.index] if isinstance(self.index, int) else a[torch.arange(a.shape[0], device=a.device), rows]
        if self.position is not None:
            y, x = self.position
            if a.ndim != 4 or not (0 <= y < a.shape[2] and 0 <= x < a.shape[3]):
                raise ConfigError(f"position {self.position} is outside layer {self.layer!r} of shape "
                                  f"{tuple(a.shape[1:])}")
            return picked[:, y, x]
        return picked.flatten(1).mean(1) if picked.ndim > 1 else picked

    def score(self, acts: Acts) -> torch.Tensor:
        return self.values(acts)

    def target(self) -> str:
        pos = f"[{self.position[0]},{self.position[1]}]" if self.position is not None else ""
        shown = self.index if self.label is None else self.label
        index = "{" + ",".join(map(str, shown)) + "}" if isinstance(shown, tuple) else shown
        return f"{self.layer}:{index}{pos}"

    def __str__(self) -> str:
        return self.target()


class Stretch(Site):
    """Drive one site as high as it goes: Bashivan et al.'s 'stretch' control."""

    def __str__(self) -> str:
        return f"stretch({self.target()})"


class OneHot(Site):
    """Drive one site while its population stays low: log-softmax of the site over the population's responses.

    The population is every channel (spatially averaged) of a conv layer, or every site of a readout, as in the
    one-hot-population control of Bashivan, Kar & DiCarlo (2019).  ``tau`` sets how hard the others are pushed.
    """

    def __init__(self, layer: str, index: Index, position: tuple[int, int] | None = None, tau: float = 1.0):
        super().__init__(layer, index, position)
        if not tau > 0:
            raise ConfigError(f"onehot temperature tau must be > 0, got {tau}")
        self.tau = float(tau)

    def _copy(self, layer: str, index: Index) -> OneHot:
        return OneHot(layer, index, self.position, self.tau)

    def score(self, acts: Acts) -> torch.Tensor:
        a = acts[self.layer]
        rows = self._rows(a)
        pop = population(a if self.position is None else a[:, :, self.position[0], self.position[1]])
        return F.log_softmax(pop / self.tau, dim=1).gather(1, rows[:, None])[:, 0]

    def __str__(self) -> str:
        return f"onehot({self.target()}{'' if self.tau == 1 else f', tau={self.tau:g}'})"


class _LayerObjective(Objective):
    """An objective over a whole layer."""

    def __init__(self, layer: str):
        self.layer = layer
        self.layers = (layer,)

    def resolve(self, model) -> Objective:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__, layer=model.layer(self.layer), layers=(model.layer(self.layer),))
        return clone


class LayerNorm(_LayerObjective):
    """Mean squared activation of a whole layer ('deep dream' energy)."""

    def score(self, acts: Acts) -> torch.Tensor:
        return acts[self.layer].flatten(1).pow(2).mean(1)

    def __str__(self) -> str:
        return f"norm({self.layer})"


class Diversity(_LayerObjective):
    """Minus the mean cosine similarity of each image's Gram matrix to the others' (Lucid's diversity term)."""

    def score(self, acts: Acts) -> torch.Tensor:
        a = acts[self.layer]
        n = a.shape[0]
        if n < 2:
            return a.new_zeros(n)
        flat = a.flatten(2) if a.ndim > 2 else a[:, :, None]
        grams = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), dim=1)
        sim = grams @ grams.T
        return -(sim.sum(1) - sim.diagonal()) / (n - 1)

    def __str__(self) -> str:
        return f"diversity({self.layer})"


class Outside(_LayerObjective):
    """How far a layer lies outside a range: the sum of squared excursions below ``lo`` and above ``hi`` per image
    (plenoptic's range penalty on the pixels, ``outside(input)``); subtract it from an objective to penalize."""

    def __init__(self, layer: str = "input", lo: float = 0.0, hi: float = 1.0):
        super().__init__(layer)
        if not lo < hi:
            raise ConfigError(f"outside() needs lo < hi, got {lo} and {hi}")
        self.lo, self.hi = float(lo), float(hi)

    def score(self, acts: Acts) -> torch.Tensor:
        a = acts[self.layer].flatten(1)
        return ((self.lo - a).clamp_min(0).pow(2) + (a - self.hi).clamp_min(0).pow(2)).sum(1)

    def __str__(self) -> str:
        bounds = "" if (self.lo, self.hi) == (0.0, 1.0) else f", lo={self.lo:g}, hi={self.hi:g}"
        return f"outside({self.layer}{bounds})"


def _finite(t: torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.numel() == 0:
        raise ConfigError(f"{what} is empty")
    if not torch.isfinite(t).all():
        raise ConfigError(f"{what} contains NaN or infinite values ({int((~torch.isfinite(t)).sum())} of {t.numel()})")
    return t


# Target tensors by digest, for as long as something holds them: what 'sha256:...' in an objective's text means.
_TARGETS: weakref.WeakValueDictionary[str, torch.Tensor] = weakref.WeakValueDictionary()


def register_target(t: torch.Tensor) -> str:
    """Make a target tensor known under its digest (so ``parse`` can read objectives naming it); returns it."""
    key = tensor_digest(t)
    _TARGETS[key] = t
    return key


def load_target(spec: str) -> torch.Tensor:
    """A target tensor from its text: 'sha256:DIGEST' (registered in this process), 'FILE.pt' (a tensor, or
    'FILE.pt:KEY' for one entry of a dict of tensors) or 'FILE.npy'."""
    if spec.startswith("sha256:"):
        t = _TARGETS.get(spec[7:])
        if t is None:
            raise ConfigError(f"target {spec} is not loaded in this process: load the saved result that used it "
                              "(its result.pt keeps its targets) or give target='FILE.pt'")
        return t
    path, _, key = spec.partition(".pt:")
    path = path + ".pt" if key else spec
    try:
        if path.endswith(".npy"):
            import numpy as np
            value = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.endswith(".pt"):
            value = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConfigError(f"target {spec!r}: give a .pt or .npy file, or 'sha256:DIGEST'")
    except FileNotFoundError:
        raise ConfigError(f"target file not found: {path}") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot read target file {path}: {e}") from None
    if isinstance(value, dict):
        if not key or key not in value:
            raise ConfigError(f"{path} holds {', '.join(map(str, value))}: name one as '{path}:KEY'")
        value = value[key]
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{spec} does not hold a tensor")
    return value


class _Target:
    """A target tensor with where it came from (shown in the objective's text) and its per-device copies."""

    def __init__(self, value: torch.Tensor | str, what: str, normalize: bool = False):
        tensor = _finite(load_target(value) if isinstance(value, str) else value, what)
        if normalize:
            if not tensor.norm() > 0:
                raise ConfigError(f"{what} must not be all zeros")
            tensor = (tensor / tensor.norm()).flatten()
        self.tensor = tensor
        from_file = isinstance(value, str) and not value.startswith("sha256:")
        self.source = value if from_file else "sha256:" + register_target(tensor)
        self._on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def on(self, like: torch.Tensor) -> torch.Tensor:
        """The target on ``like``'s device and dtype, copied there once."""
        key = (like.device, like.dtype)
        t = self._on.get(key)
        if t is None:
            t = self._on[key] = self.tensor.to(like.device, like.dtype)
        return t

    def text(self) -> str:
        return repr(self.source)


class Direction(_LayerObjective):
    """Projection of the layer's response onto a direction: C entries (spatial means) or the full C·H·W."""

    def __init__(self, layer: str, target: torch.Tensor | str):
        super().__init__(layer)
        self.target = _Target(target, "direction vector", normalize=True)
        self.vector = self.target.tensor

    def score(self, acts: Acts) -> torch.Tensor:
        a = acts[self.layer]
        v = self.target.on(a)
        if v.numel() == a[0].numel():
            return a.flatten(1) @ v
        if v.numel() == a.shape[1]:
            return population(a) @ v
        raise ConfigError(f"direction has {v.numel()} entries; layer {self.layer!r} has {a.shape[1]} channels and "
                          f"{a[0].numel()} units")

    def tensors(self) -> dict[str, torch.Tensor]:
        return _held(self.target)

    def __str__(self) -> str:
        return f"direction({self.layer}, target={self.target.text()})"


def _held(*targets: _Target | None) -> dict[str, torch.Tensor]:
    return {t.source[7:]: t.tensor for t in targets if t is not None and t.source.startswith("sha256:")}


class Match(_LayerObjective):
    """Closeness to target activations: minus the mean squared error, minus the normalized distance
    ‖a − a*‖ / ‖a*‖ (Feather et al. 2023's metamer loss), or the cosine similarity.

    The target is a tensor (one response, or one per image), a file or digest (``load_target``), or ``image=``:
    the model's own response to an image file (or one file per image), computed when the objective is resolved
    against the model."""

    METRICS = ("mse", "normalized", "cosine")

    def __init__(self, layer: str, target: torch.Tensor | str | None = None, metric: str = "mse",
                 image: str | tuple[str, ...] | None = None):
        super().__init__(layer)
        if metric not in self.METRICS:
            raise UnknownNameError("match metric", metric, self.METRICS)
        if (target is None) == (image is None):
            raise ConfigError("match() needs exactly one of target= (activations: a tensor, a .pt/.npy file or "
                              "'sha256:...') or image= (an image file, or one per image)")
        self.metric, self.image = metric, image
        self._target = _Target(target, "target activation") if target is not None else None
        self.rows: torch.Tensor | None = None  # images still in the batch, when targets are per image
        self._rows_on: dict[torch.device, torch.Tensor] = {}

    @property
    def target(self) -> torch.Tensor:
        """The target activations (resolve against a model first when they come from ``image=``)."""
        if self._target is None:
            raise ConfigError(f"{self} must be resolved against a model first (objective.resolve)")
        return self._target.tensor

    def resolve(self, model) -> Match:
        clone = super().resolve(model)
        if self.image is not None and self._target is None:
            paths = list(self.image) if isinstance(self.image, tuple) else [self.image]
            x = torch.stack([_read_image(p, model.input_size) for p in paths]).to(model.device)
            with torch.no_grad():
                a = model.activations(x, clone.layer)[clone.layer].detach().cpu()
            clone._target = _Target(a if isinstance(self.image, tuple) else a[0], "target activation")
            clone._rows_on = {}
        return clone

    def select(self, index: torch.Tensor) -> Match:
        clone = object.__new__(Match)
        clone.__dict__.update(self.__dict__, rows=index.cpu() if self.rows is None else self.rows[index.cpu()],
                              _rows_on={})
        return clone

    def _pair(self, acts: Acts) -> tuple[torch.Tensor, torch.Tensor]:
        raw = acts[self.layer]
        a = raw.flatten(1)
        if self._target is None:
            self.target  # noqa: B018 - raises the 'resolve first' error
        full = self._target.on(a)
        if full.ndim == raw.ndim:  # one target per image
            if self.rows is not None:
                rows = self._rows_on.get(a.device)
                if rows is None:
                    rows = self._rows_on[a.device] = self.rows.to(a.device)
                full = full[rows]
            t = full.flatten(1)
        else:
            t = full.flatten()[None]
        if t.shape[1] != a.shape[1] or t.shape[0] not in (1, a.shape[0]):
            raise ConfigError(f"target of shape {tuple(self.target.shape)} does not fit layer {self.layer!r} "
                              f"of shape {tuple(raw.shape)}")
        return a, t

    def score(self, acts: Acts) -> torch.Tensor:
        a, t = self._pair(acts)
        if self.metric == "mse":
            return -(a - t).pow(2).mean(1)
        if self.metric == "normalized":
            return -(a - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-12)
        return F.cosine_similarity(a, t.expand_as(a), dim=1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return _held(self._target) if self.image is None else {}

    def __str__(self) -> str:
        if self.image is not None:
            shown = ("{" + ",".join(repr(p) for p in self.image) + "}") if isinstance(self.image, tuple) \
                else repr(self.image)
            source = f"image={shown}"
        else:
            source = f"target={self._target.text()}"
        return f"match({self.layer}, {source}, metric={self.metric})"


def _read_image(path: str, size: int | None) -> torch.Tensor:
    """An image file as 3×size×size in [0, 1] (any mode converted; resized when the model has an input size)."""
    from synth.files import read_png

    x = read_png(path)[0]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(0, 1)


Label = int | str


class Labels:
    """Class labels: one for every image, or one per image; written as numbers or the model's class names.

    ``resolve`` turns names into indices (a close-match hint for a typo); ``select`` keeps the images still in the
    batch; ``tensor`` gives the (N,) index tensor on a device, made once per device.
    """

    def __init__(self, values: Label | Sequence[Label] | torch.Tensor):
        if isinstance(values, np.ndarray) or isinstance(values, np.generic):  # an ImageBatch's labels, as rendered
            values = torch.as_tensor(values)
        if isinstance(values, torch.Tensor):
            if values.is_floating_point() or values.ndim > 1:
                raise ConfigError(f"labels must be integers (one, or one per image), got a {values.dtype} tensor of "
                                  f"shape {tuple(values.shape)}")
            values = values.tolist()
        many = isinstance(values, (list, tuple))
        items = list(values) if many else [values]
        if many and not items:
            raise ConfigError("labels are empty")
        parsed = []
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ConfigError(f"a label must be a class index or name, got {v!r}")
            parsed.append(int(v) if isinstance(v, str) and v.isdigit() else v)
        self.values: Label | tuple[Label, ...] = tuple(parsed) if many else parsed[0]
        self.shown = self.values  # as written, for display after names become indices
        self._cache: dict[torch.device, torch.Tensor] = {}

    def _items(self) -> list[Label]:
        return list(self.values) if isinstance(self.values, tuple) else [self.values]

    def resolve(self, classes: Sequence[str]) -> Labels:
        """Names replaced by their index in ``classes``."""
        out = []
        for v in self._items():
            if isinstance(v, str):
                if v not in classes:
                    raise UnknownNameError("class", v, classes)
                v = list(classes).index(v)
            out.append(v)
        labels = Labels(tuple(out) if isinstance(self.values, tuple) else out[0])
        labels.shown = self.shown
        return labels

    def select(self, index: torch.Tensor) -> Labels:
        """The labels of the images ``index`` (a single shared label stays as it is)."""
        if not isinstance(self.values, tuple):
            return self
        keep = index.tolist()
        labels = Labels(tuple(self.values[i] for i in keep))
        labels.shown = tuple(self.shown[i] for i in keep)
        return labels

    def tensor(self, n: int, classes: int, device: torch.device) -> torch.Tensor:
        """The (n,) label indices, checked against the batch size and the number of classes."""
        items = self._items()
        if any(isinstance(v, str) for v in items):
            raise ConfigError(f"labels {self} must be resolved against a model first (objective.resolve)")
        if isinstance(self.values, tuple) and len(items) != n:
            raise ConfigError(f"{len(items)} labels for {n} images: give one label, or one per image")
        bad = [v for v in items if not 0 <= v < classes]
        if bad:
            raise ConfigError(f"label {bad[0]} out of range: the layer has {classes} classes/units")
        t = self._cache.get(device)
        if t is None:
            t = self._cache[device] = torch.tensor(items, dtype=torch.long, device=device)
        return t if isinstance(self.values, tuple) else t.expand(n)

    def __len__(self) -> int:
        return len(self._items())

    def __str__(self) -> str:
        if isinstance(self.shown, tuple):
            return "{" + ",".join(map(str, self.shown)) + "}"
        return str(self.shown)


class _Labeled(_LayerObjective):
    """An objective on class scores with labels: ``y=`` true labels (untargeted) or ``target=`` (targeted)."""

    name = "labeled"

    def __init__(self, layer: str, y: Label | Sequence[Label] | torch.Tensor | None = None,
                 target: Label | Sequence[Label] | torch.Tensor | None = None):
        super().__init__(layer)
        if (y is None) == (target is None):
            raise ConfigError(f"{self.name}() needs exactly one of y= (true labels: push away from them) or "
                              "target= (target labels: pull towards them)")
        self.targeted = target is not None
        self.labels = Labels(target if self.targeted else y)

    def resolve(self, model) -> _Labeled:
        clone = super().resolve(model)
        clone.labels = self.labels.resolve(model.classes if clone.layer == "logits" else [])
        return clone

    def select(self, index: torch.Tensor) -> _Labeled:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__, labels=self.labels.select(index))
        return clone

    def _logits(self, acts: Acts) -> tuple[torch.Tensor, torch.Tensor]:
        z = population(acts[self.layer])
        return z, self.labels.tensor(z.shape[0], z.shape[1], z.device)

    def _args(self) -> str:
        return f"{self.layer}, {'target' if self.targeted else 'y'}={self.labels}"


class CrossEntropy(_Labeled):
    """Cross-entropy of the labels: untargeted, its value (push the true class down); targeted, minus its value
    (log-probability of the target class)."""

    name = "xent"

    def score(self, acts: Acts) -> torch.Tensor:
        z, y = self._logits(acts)
        ce = F.cross_entropy(z, y, reduction="none")
        return -ce if self.targeted else ce

    def __str__(self) -> str:
        return f"xent({self._args()})"


class Margin(_Labeled):
    """Carlini & Wagner's margin: untargeted, the best other class minus the true one; targeted, the target minus
    the best other class.  Positive means the attack succeeded; ``kappa`` caps it (CW's confidence)."""

    name = "margin"

    def __init__(self, layer: str, y: Label | Sequence[Label] | torch.Tensor | None = None,
                 target: Label | Sequence[Label] | torch.Tensor | None = None, kappa: float | None = None):
        super().__init__(layer, y, target)
        if kappa is not None and not (kappa >= 0 and math.isfinite(kappa)):
            raise ConfigError(f"margin kappa must be a finite number >= 0, got {kappa}")
        self.kappa = None if kappa is None else float(kappa)

    def score(self, acts: Acts) -> torch.Tensor:
        z, y = self._logits(acts)
        label = z.gather(1, y[:, None])[:, 0]
        other = z.scatter(1, y[:, None], float("-inf")).amax(1)
        m = label - other if self.targeted else other - label
        return m if self.kappa is None else m.clamp(max=self.kappa)

    def __str__(self) -> str:
        return f"margin({self._args()}{'' if self.kappa is None else f', kappa={self.kappa:g}'})"


class DLR(_LayerObjective):
    """Croce & Hein's (2020) difference-of-logits ratio, the loss of AutoAttack's APGD-DLR and APGD-T: untargeted,
    (best other class − true class) / (z_π1 − z_π3); targeted, (target − true class) / (z_π1 − (z_π3 + z_π4) / 2),
    π the classes sorted by score.  Dividing by a spread of the top scores makes it invariant to rescaling the
    logits, which defeats attacks on cross-entropy that a saturated softmax stalls.  Needs ``y=``, and ``target=``
    for the targeted form (at least 4 classes)."""

    def __init__(self, layer: str, y: Label | Sequence[Label] | torch.Tensor,
                 target: Label | Sequence[Label] | torch.Tensor | None = None):
        super().__init__(layer)
        self.labels, self.targets = Labels(y), Labels(target) if target is not None else None

    def resolve(self, model) -> DLR:
        clone = super().resolve(model)
        classes = model.classes if clone.layer == "logits" else []
        clone.labels = self.labels.resolve(classes)
        clone.targets = self.targets.resolve(classes) if self.targets is not None else None
        return clone

    def select(self, index: torch.Tensor) -> DLR:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__, labels=self.labels.select(index),
                              targets=self.targets.select(index) if self.targets is not None else None)
        return clone

    def score(self, acts: Acts) -> torch.Tensor:
        z = population(acts[self.layer])
        n, c = z.shape
        if c < 4:
            raise ConfigError(f"the DLR loss needs at least 4 classes, {self.layer} has {c}")
        y = self.labels.tensor(n, c, z.device)
        top = z.sort(1, descending=True).values
        true = z.gather(1, y[:, None])[:, 0]
        if self.targets is None:
            other = z.scatter(1, y[:, None], float("-inf")).amax(1)
            return (other - true) / (top[:, 0] - top[:, 2] + 1e-12)
        t = z.gather(1, self.targets.tensor(n, c, z.device)[:, None])[:, 0]
        return (t - true) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)

    def __str__(self) -> str:
        target = f", target={self.targets}" if self.targets is not None else ""
        return f"dlr({self.layer}, y={self.labels}{target})"


# ------------------------------------------------------------------------------------------------- parser
_TOKEN = re.compile(r"\s*(?:(?P<num>\d+\.?\d*(?:e-?\d+)?|\.\d+)"
                    r"|(?P<name>[A-Za-z_][\w.]*(?::(?:[\w.]+|\{[\w,]+\}))*(?:\[\d+,\d+\])?)"
                    r"|(?P<str>'[^']*'|\"[^\"]*\")"
                    r"|(?P<set>\{(?:[\w\s,-]|'[^']*'|\"[^\"]*\")*\})|(?P<op>[-+*/(),=]))")
_SITE = re.compile(r"^(?P<layer>.+):(?P<index>c?\d+|[A-Za-z_]\w*|\{[\w,]+\})(?:\[(?P<y>\d+),(?P<x>\d+)\])?$")
FUNCTIONS = {"stretch": Stretch, "onehot": OneHot, "norm": LayerNorm, "diversity": Diversity, "xent": CrossEntropy,
             "margin": Margin, "dlr": DLR, "match": Match, "direction": Direction, "outside": Outside}


def site(spec: str, cls: type[Site] = Site, **kw) -> Site:
    """Parse 'LAYER:INDEX' (INDEX = channel number, 'cN', a readout site name, or '{i,j,...}' one per image)
    with an optional '[y,x]' position."""
    m = _SITE.match(spec)
    if not m:
        raise ConfigError(f"{spec!r} is not a site: write LAYER:CHANNEL (e.g. 'IT:12'), 'V4:c5[3,4]' for a unit, "
                          "or 'V4:readout:site3' for a recorded site")
    def one(idx: str) -> int | str:
        return int(idx.lstrip("c")) if re.fullmatch(r"c?\d+", idx) else idx

    idx = m["index"]
    index: Index = tuple(one(i) for i in idx[1:-1].split(",")) if idx.startswith("{") else one(idx)
    pos = (int(m["y"]), int(m["x"])) if m["y"] is not None else None
    return cls(m["layer"], index, pos, **kw)


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, pos = text, [], 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ConfigError(f"cannot read objective {self.text!r} at {text[pos:]!r}")
            kind = m.lastgroup
            self.tokens.append((kind, m[kind]))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise ConfigError(f"objective {self.text!r}: expected {value or 'more'}, found "
                              f"{tok[1] if tok else 'the end'}")
        self.i += 1
        return tok

    def expr(self) -> Objective:
        out = self.term()
        while self.peek() and self.peek()[1] in "+-":
            op = self.take()[1]
            out = out + self.term() if op == "+" else out - self.term()
        return out

    def term(self) -> Objective:
        tok = self.peek()
        if tok and tok[1] == "-":
            self.take()
            return -self.term()
        if tok and tok[0] == "num":
            w = self.number()
            self.take("*")
            return w * self.term()
        out = self.factor()
        while self.peek() and self.peek()[1] in "*/":
            op = self.take()[1]
            w = self.number()
            out = out * w if op == "*" else out / w
        return out

    def number(self) -> float:
        """A weight: objectives are scaled by numbers, never multiplied together."""
        tok = self.peek()
        if tok is None or tok[0] != "num":
            found = tok[1] if tok else "the end"
            raise ConfigError(f"objective {self.text!r}: expected a number after '*' or '/', found {found!r} "
                              f"(objectives add and scale, e.g. 'IT:1 + IT:2' or '2*IT:1', but do not multiply)")
        return float(self.take()[1])

    def factor(self) -> Objective:
        kind, name = self.take()
        if kind == "op" and name == "(":
            out = self.expr()
            self.take(")")
            return out
        if kind != "name":
            raise ConfigError(f"objective {self.text!r}: unexpected {name!r}")
        if self.peek() and self.peek()[1] == "(":
            if name not in FUNCTIONS:
                raise UnknownNameError("objective function", name, FUNCTIONS)
            self.take("(")
            arg = self.take()[1]
            kwargs = {}
            while self.peek() and self.peek()[1] == ",":
                self.take(",")
                key = self.take()[1]
                self.take("=")
                kwargs[key] = self.value()
            self.take(")")
            cls = FUNCTIONS[name]
            try:
                return site(arg, cls, **kwargs) if issubclass(cls, Site) else cls(arg, **kwargs)
            except TypeError:
                accepted = inspect.signature(cls).parameters
                if all(k in accepted for k in kwargs):
                    raise ConfigError(f"objective {self.text!r}: a value of {name}() has the wrong type "
                                      f"({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}); numbers are written "
                                      f"like 0.5, class names in quotes") from None
                takes = {LayerNorm: "only a layer", Diversity: "only a layer", CrossEntropy: "a layer, y= or target=",
                         Margin: "a layer, y= or target=, and kappa=", Match: "a layer, target= or image=, and metric=",
                         Direction: "a layer and target=", Outside: "a layer, lo= and hi="}.get(cls, "a site and tau=")
                raise ConfigError(f"{name}() does not take {', '.join(kwargs)}; it takes {takes}") from None
        return site(name)

    def value(self) -> int | float | str | tuple[int | str, ...]:
        """A keyword's value: a number, a name, or a set '{a,b,...}' (one entry per image)."""
        kind, text = self.take()
        if kind == "num":
            return int(text) if text.isdigit() else float(text)
        if kind == "set":
            items = re.findall(r"'[^']*'|\"[^\"]*\"|[^,\s]+", text[1:-1])
            return tuple(t[1:-1] if t[0] in "'\"" else int(t) if t.isdigit() else t for t in items)
        if kind == "str":
            return text[1:-1]
        if kind == "name":
            return text
        raise ConfigError(f"objective {self.text!r}: expected a value, found {text!r}")


def parse(text: str) -> Objective:
    """Read an objective from its string form, e.g. ``"stretch(IT:12) + 0.1*diversity(V4)"``."""
    if isinstance(text, Objective):
        return text
    p = _Parser(str(text))
    if not p.tokens:
        raise ConfigError("empty objective")
    out = p.expr()
    if p.peek() is not None:
        raise ConfigError(f"objective {text!r}: unexpected {p.peek()[1]!r}")
    return out
