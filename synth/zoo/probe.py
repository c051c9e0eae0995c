"""ProbeModel: any network seen as a model of the ventral stream, with [0,1] pixels in and named layers out.

Normalization lives inside the model, so attacks and synthesis work in pixel space.  ``activations()`` runs the
network only as far as the deepest requested layer: torchvision's FX feature extractor prunes every node that
the requested outputs do not need; a network that FX cannot trace falls back to forward hooks that stop the
forward pass as soon as the last requested module has fired.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.fx.passes.split_module import split_module
from torch.utils.checkpoint import checkpoint
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from synth.errors import ConfigError, ImageError, UnknownNameError
from synth.files import check_weights
from synth.rng import current_noise_generator, generator, noise_generator
from synth.zoo.ventral import Identity
from synth.zoo.vone import Draws, GaborBank, draw_copies

AREA_NAMES: tuple[str, ...] = ("V1", "V2", "V4", "IT", "behavior")
# Layers every model has: the [0,1] pixels it is shown and the network's output (class scores).
INPUT, LOGITS = "input", "logits"
# Named no-op modules that mark an area's output: kept as nodes so that 'V1.output' (CORnet's name) exists;
# VOneNet's Gabor banks run eagerly (their colour grouping is planned from the weights).
_TRACER = {"leaf_modules": [Identity, GaborBank, Draws]}


@dataclass(frozen=True)
class Intervention:
    """A write into one layer during the forward pass: ``mode`` 'add' (output + value), 'scale' (output × value)
    or 'replace' (value where ``mask``, the output elsewhere).  ``value`` (and ``mask``) is a number, a tensor
    broadcastable to one image's response (C×H×W for a conv layer, C for a flat one), or a callable of the layer's
    output giving such a tensor, so a stimulation can depend on the units' positions or on the activity itself."""

    layer: str
    mode: str
    value: float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
    mask: torch.Tensor | None = None
    label: str = ""

    MODES = ("add", "scale", "replace")

    def __post_init__(self):
        if self.mode not in self.MODES:
            raise UnknownNameError("intervention mode", self.mode, self.MODES)
        if (self.mask is None) != (self.mode != "replace"):
            raise ConfigError("a 'replace' intervention needs a mask of the units it writes; "
                              "'add' and 'scale' take none")
        if isinstance(self.value, torch.Tensor) and not torch.isfinite(self.value).all():
            raise ConfigError(f"intervention on {self.layer!r}: the value holds NaN or infinite entries")

    def apply(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output with this intervention written in."""
        value = self.value(output) if callable(self.value) else self.value
        value = torch.as_tensor(value, dtype=output.dtype, device=output.device)
        for t, what in ((value, "value"), (self.mask, "mask")):
            if isinstance(t, torch.Tensor) and t.dim() and not _broadcasts(t.shape, output.shape[1:]):
                raise ConfigError(f"intervention on {self.layer!r}: {what} of shape {tuple(t.shape)} does not fit the "
                                  f"layer's response per image, {tuple(output.shape[1:])}")
        if self.mode == "add":
            return output + value
        if self.mode == "scale":
            return output * value
        return torch.where(self.mask.to(output.device, torch.bool), value, output)

    def __str__(self) -> str:
        if self.label:
            return self.label
        v = self.value
        what = (f"{v:g}" if isinstance(v, (int, float)) else f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor)
                else getattr(v, "__name__", type(v).__name__))
        mask = f", mask of {int(self.mask.bool().sum())} units" if self.mask is not None else ""
        return f"{self.mode}({self.layer}, {what}{mask})"


def _broadcasts(shape: Sequence[int], to: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to one of ``to`` without changing it."""
    if len(shape) > len(to):
        return False
    return all(a in (1, b) for a, b in zip(reversed(shape), reversed(to)))


class _Tracing:
    """Networks run in many threads at once (the explorer's sessions share one model), but torch.fx tracing patches
    ``nn.Module.__call__`` for every thread while it traces, so a module called elsewhere meanwhile fails.  Runs
    share (``running``); a trace waits until no network runs, and runs alone (``tracing``).  A thread may nest runs;
    phosphene never traces inside a run of its own (extractors are built before the pass that uses them)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0
        self._mine = threading.local()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Run networks inside the block; no trace starts until it ends."""
        held = getattr(self._mine, "held", 0)
        with self._cond:
            if not held and not getattr(self._mine, "tracing", False):
                while self._writing or self._waiting:
                    self._cond.wait()
            self._readers += 1
        self._mine.held = held + 1
        try:
            yield
        finally:
            self._mine.held = held
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        """Trace inside the block, alone: it waits until no other thread runs a network."""
        if getattr(self._mine, "tracing", False):
            yield
            return
        held = getattr(self._mine, "held", 0)
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers > held:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        self._mine.tracing = True
        try:
            yield
        finally:
            self._mine.tracing = False
            with self._cond:
                self._writing = False
                self._cond.notify_all()


SHARED = _Tracing()  # the one lock every phosphene network run and torch.fx trace goes through
_DIGESTING = threading.Lock()  # one weights digest computed at a time (a module-level lock: models stay copyable)


class _Stop(Exception):
    """Raised inside a hook once every requested layer has been captured, to end the forward pass early."""


_EAGER = (False, None)  # the traced forward's mode: (checkpoint_activations, compile backend)


class _Recomputed(nn.Module):
    """One stage of a traced forward that keeps only its inputs for the backward pass and runs again there."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage = stage

    def forward(self, *args):
        if not torch.is_grad_enabled():  # nothing to save: no need to go through checkpoint
            return self.stage(*args)
        gen = current_noise_generator()
        if gen is None:  # noise from torch's global generator, whose state ``checkpoint`` restores itself
            return checkpoint(self.stage, *args, use_reentrant=False)
        start, ran = gen.get_state(), []

        def run(*inputs):
            if not ran:  # the forward pass: the run's generator advances as in a plain pass
                ran.append(True)
                return self.stage(*inputs)
            after = gen.get_state()  # the backward's recomputation: the same draws, then the generator as it was
            gen.set_state(start)
            try:
                with noise_generator(gen):  # the backward may run in another thread (CUDA's autograd workers)
                    return self.stage(*inputs)
            finally:
                gen.set_state(after)

        return checkpoint(run, *args, use_reentrant=False)


def _stages(traced: torch.fx.GraphModule, net: nn.Module) -> torch.fx.GraphModule:
    """``traced`` cut at the network's stages, each recomputed in the backward pass (gradient checkpointing): the
    stages are the children of the network (below any chain of single-child wrappers), a child without parameters
    (a ReLU, a pool) joining the stage before it.  Activations inside a stage are freed after the forward pass and
    made again during the backward; only the tensors that cross between stages are kept.  Stages run again with
    the random state they first ran with (``checkpoint`` restores it), so noise layers draw the same noise."""
    prefix, root = "", net
    while len(children := list(root.named_children())) == 1:
        name, root = children[0]
        prefix += name + "."
    heavy = {name for name, child in root.named_children() if next(child.parameters(), None) is not None}
    stage_of, stage, current = {}, 0, None
    for node in traced.graph.nodes:  # in execution order; a node outside any module joins the running stage
        if node.op == "call_module" and node.target.startswith(prefix):
            top = node.target[len(prefix):].split(".")[0]
            if top in heavy and top != current:
                stage += current is not None
                current = top
        stage_of[node] = stage
    split = split_module(traced, net, stage_of.__getitem__)
    for name in [n for n, _ in split.named_children() if n.startswith("submod_")]:
        setattr(split, name, _Recomputed(getattr(split, name)))
    return split


class _Head(nn.Module):
    """``ProbeModel.head``'s module: the traced rest of a network, run as every network runs (``SHARED.running``),
    so that no trace in another thread starts meanwhile."""

    def __init__(self, graph: torch.fx.GraphModule):
        super().__init__()
        self.graph = graph

    def forward(self, response: torch.Tensor) -> torch.Tensor:
        with SHARED.running():
            return self.graph(response)


class ProbeModel(nn.Module):
    """A network with its preprocessing, category names, layer list and brain-area map."""

    def __init__(self, net: nn.Module, *, name: str, classes: Sequence[str], mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), areas: Mapping[str, str] | None = None,
                 input_size: int | None = None, info: Mapping | None = None):
        super().__init__()
        self.net = net
        self.name = name
        self.classes = list(classes)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = input_size
        self.info = dict(info or {})
        self._extractors: dict[tuple, nn.Module] = {}  # (layers, recomputed, compile backend) -> traced forward
        self.readouts: dict[str, nn.Module] = {}  # virtual layers: linear maps to recorded sites
        self.sheets: dict = {}  # layer -> topography.Sheet: the units' positions on a cortical sheet
        self._traceable: bool | None = None
        self._layers: list[str] | None = None
        self._output_node: str | None = None
        self._stochastic: bool | None = None
        self._site: tuple[Draws | None] | None = None  # the Draws site, found once
        self._interventions: list[Intervention] = []
        self._digest: tuple[tuple, str] | None = None  # (the weights' identity when hashed, their sha256)
        self.areas = {}
        for area, layer in (areas or {}).items():
            if area not in AREA_NAMES:
                raise UnknownNameError("brain area", area, AREA_NAMES)
            self.areas[area] = self.layer(layer)

    # ---------------------------------------------------------------------------------------------- forward
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0,1] pixels to the network's input space."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of [0,1] images (N×3×H×W)."""
        with SHARED.running():
            return self.net(self.preprocess(x))

    @property
    def device(self) -> torch.device:
        """The device the model's buffers live on."""
        return self.mean.device

    def _apply(self, fn, recurse=True):
        self._extractors.clear()  # extractors hold references made for the old device/dtype
        for readout in self.readouts.values():
            readout._apply(fn, recurse)
        return super()._apply(fn, recurse)

    # ---------------------------------------------------------------------------------------------- copies
    def fork(self) -> ProbeModel:
        """A copy for one run or one session: its own modules (so hooks, patched backward passes, noise settings
        and weight layouts made on it stay in it), readouts, interventions and caches, sharing the weights'
        storage with this model (nothing is copied but the modules' structure).  The engine runs on a fork
        whenever it changes the model, and the explorer gives each session one, so that nothing one run or user
        does is visible to another."""
        memo: dict[int, object] = {id(self._extractors): {}}
        for t in [*self.parameters(), *self.buffers()]:
            memo[id(t)] = nn.Parameter(t.detach(), requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
                else t.detach()
        for shared in (*self._interventions, *self.sheets.values()):  # immutable: shared, not copied
            memo[id(shared)] = shared
        twin = copy.deepcopy(self, memo)
        if self._digest is not None and self._digest[0] == self._weights_key():
            twin._digest = (twin._weights_key(), self._digest[1])  # the same storage: the same digest
        return twin

    def without_noise(self) -> ProbeModel:
        """A fork whose noise layers (modules with a ``noise_mode``, such as VOneNet's V1) are silent, for
        comparisons that need the mean response; this model itself when it has no noise layer."""
        if not self.has_noise:
            return self
        quiet = self.fork()
        for m in quiet.net.modules():
            if getattr(m, "noise_mode", None) is not None:
                m.noise_mode = None
        quiet._stochastic = None
        return quiet

    @property
    def has_noise(self) -> bool:
        """Whether the network has a noise layer that is switched on."""
        return any(getattr(m, "noise_mode", None) is not None for m in self.net.modules())

    # ---------------------------------------------------------------------------------------------- weights
    def _weights_key(self) -> tuple:
        """What identifies the weights' current values cheaply: each tensor's storage, layout and version counter
        (an in-place change bumps the counter, a new tensor changes the storage)."""
        return tuple((k, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for k, t in self.state_dict().items())

    def weights_digest(self) -> str:
        """sha256 of the model's weights and buffers (names, dtypes, shapes and values; not their memory layout),
        computed once and again only after a parameter changed: recorded in every result, and checked when a
        result, readout or checkpoint is used with a model."""
        with _DIGESTING:
            key = self._weights_key()
            if self._digest is None or self._digest[0] != key:
                h = hashlib.sha256()
                for name, t in self.state_dict().items():
                    h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
                    h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                self._digest = (key, h.hexdigest())
            return self._digest[1]

    # ---------------------------------------------------------------------------------------------- readouts
    def add_readout(self, readout: nn.Module, name: str | None = None) -> str:
        """Attach a fitted readout as a virtual layer; returns its name: 'LAYER:readout' by default, and
        'LAYER:readout2', 'LAYER:readout3'… when that name is taken by another readout, so fitting a second
        readout on a layer keeps both (attaching the same readout again returns its name)."""
        base = self.layer(readout.layer)
        check_weights(getattr(readout, "info", {}), self, f"the readout of {readout.layer} "
                      f"({len(readout.sites)} sites)", remedy="fit it again on this model (phosphene readout fit)")
        if name is None:
            taken = {n: r for n, r in self.readouts.items() if n.startswith(f"{readout.layer}:readout")}
            same = [n for n, r in taken.items() if r is readout]
            if same:
                return same[0]
            name, k = f"{readout.layer}:readout", 2
            while name in self.readouts:
                name, k = f"{readout.layer}:readout{k}", k + 1
        readout.layer = base
        self.readouts[name] = readout.to(self.device)
        self._layers = None
        return name

    def remove_readout(self, name: str) -> None:
        """Detach the readout layer ``name`` (as ``add_readout`` named it): a loop's readout of one round, say."""
        if name not in self.readouts:
            raise UnknownNameError("readout layer", name, list(self.readouts))
        del self.readouts[name]
        self._layers = None

    def sites(self, layer: str) -> list[str]:
        """Names of the sites of a readout layer."""
        layer = self.layer(layer)
        if layer not in self.readouts:
            raise ConfigError(f"layer {layer!r} has no named sites; address its channels by number (e.g. '{layer}:3')")
        return list(self.readouts[layer].sites)

    # ---------------------------------------------------------------------------------------------- layers
    @property
    def layers(self) -> list[str]:
        """Every layer name ``activations()`` accepts: graph nodes and module names, in forward order."""
        if self._layers is None:
            modules = [n for n, _ in self.net.named_modules() if n]
            try:
                with SHARED.tracing():
                    _, nodes = get_graph_node_names(self.net, tracer_kwargs=_TRACER)
                self._traceable = True
            except Exception as e:  # data-dependent control flow: hooks on modules instead
                warnings.warn(f"{self.name} cannot be traced by torch.fx ({type(e).__name__}: {str(e)[:160]}); its "
                              "layers are read with forward hooks, and checkpoint_activations and compile are off",
                              stacklevel=2)
                nodes, self._traceable = [], False
            self._output_node = nodes[-1] if len(nodes) > 1 else None
            module_set, seen, ordered = set(modules), set(), []
            for name in nodes[1:]:  # each graph node, preceded by the modules it opens
                parts = name.split(".")
                for prefix in (".".join(parts[:k]) for k in range(1, len(parts) + 1)):
                    if prefix not in seen and (prefix in module_set or prefix == name):
                        seen.add(prefix)
                        ordered.append(prefix)
            ordered += [m for m in modules if m not in seen]
            self._layers = [INPUT, *ordered, *self.readouts, LOGITS]
        return self._layers

    def layer(self, name: str) -> str:
        """Resolve a layer or brain-area name (e.g. 'IT' or 'layer4.0') to a layer name, or say what is close."""
        if name in self.areas:
            return self.areas[name]
        if name in self.layers:
            return name
        raise UnknownNameError(f"layer of model {self.name!r}", name, [*self.areas, *self.layers])

    # ---------------------------------------------------------------------------------------------- activations
    def activations(self, x: torch.Tensor, layers: str | Iterable[str], check: bool = True,
                    draws: int = 1, *, checkpoint_activations: bool = False,
                    compile: bool | str = False) -> dict[str, torch.Tensor]:
        """Responses of the requested layers (names, areas, readouts, 'input', 'logits') to [0,1] images,
        computing nothing past the deepest.  ``check=False`` skips the input validation (for inner loops that
        validated once).  ``draws=k`` returns k noise draws of each image, stacked as ``torch.cat([x] * k)`` would
        be; a network whose noise begins at a ``Draws`` module (VOneNet's V1) runs the layers before it once.
        ``checkpoint_activations``: keep only each stage's input for the backward pass and run the stage again
        there (``torch.utils.checkpoint``; see ``_stages``), trading compute for memory; ``compile``: run the
        traced forward through ``torch.compile`` (True for inductor, or a backend's name).  Both need the traced
        forward: they are refused for a network torch.fx cannot trace and inside ``intervene``."""
        if check:
            check_images(x)
            if x.dtype != self.mean.dtype:  # float64 (or half) images from a user: the network's own dtype
                x = x.to(self.mean.dtype)
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise UnknownNameError(f"layer of model {self.name!r}", "", self.layers)
        if draws < 1:
            raise ConfigError(f"draws must be >= 1, got {draws}")
        resolved = {n: self.layer(n) for n in names}
        wanted = tuple(dict.fromkeys(resolved.values()))
        targets = tuple(dict.fromkeys(self.readouts[t].layer if t in self.readouts else t for t in wanted
                                      if t not in (INPUT, LOGITS)))
        mode = (bool(checkpoint_activations), "inductor" if compile is True else compile or None)
        if mode != _EAGER and (targets or LOGITS in wanted):
            self._check_traced(LOGITS in wanted)
        # a stage run again in the backward pass must see the batch it saw: no Draws site changing size after it
        site = self._draw_site() if draws > 1 and not checkpoint_activations else None
        if draws > 1 and site is None:
            x = x.repeat(draws, 1, 1, 1)
        route = self._route(targets, LOGITS in wanted, mode)
        extractor = self._extractor(route[1], mode) if route[0] == "traced" else None  # traced before the run
        xp = self.preprocess(x)
        with SHARED.running(), draw_copies(site, draws) if site is not None else contextlib.nullcontext():
            if route[0] == "traced":
                out = self._run_traced(extractor, xp, route[1])
                if LOGITS in wanted:
                    out[LOGITS] = out[self._output_node] if self._output_node in targets \
                        else out.pop(self._output_node)
            elif route[0] == "net":
                out = {LOGITS: self.net(xp)}
            elif route[0] == "hooked":
                out = self._hooked(xp, targets, stop=LOGITS not in wanted)
            else:
                out = {}
            out[INPUT] = x
            if site is not None:  # layers before the noise saw each image once: their k draws are identical
                n = x.shape[0]
                out = {k: v.repeat(draws, *([1] * (v.dim() - 1))) if v.shape[0] == n else v for k, v in out.items()}
            for t in wanted:
                if t in self.readouts:
                    out[t] = self.readouts[t](out[self.readouts[t].layer])
        return {n: out[r] for n, r in resolved.items()}

    def _route(self, targets: tuple[str, ...], logits: bool,
               mode: tuple[bool, str | None]) -> tuple[str, tuple[str, ...]]:
        """How a pass gets its layers: ('traced', the graph's outputs), ('net', ()) for the logits alone, ('hooked',
        targets) where a traced graph cannot serve (untraceable, or intervened: a traced graph inlines container
        modules), or ('none', ()) for the pixels alone."""
        traced = self._traceable and not self._interventions
        if logits:
            if not targets and mode == _EAGER:
                return "net", ()
            if traced and self._output_node is not None:
                return "traced", targets if self._output_node in targets else (*targets, self._output_node)
            return "hooked", targets
        if not targets:
            return "none", ()
        return ("traced", targets) if traced else ("hooked", targets)

    def _draw_site(self) -> Draws | None:
        """The network's ``Draws`` module when the network's noise all lies past it: it sits in the first layer
        of the forward pass, and there is one."""
        if self._site is None:
            found = [(name, m) for name, m in self.net.named_modules() if isinstance(m, Draws)]
            first = self.layers[1] if len(self.layers) > 2 else ""
            ok = len(found) == 1 and first and found[0][0].startswith(first + ".")
            self._site = (found[0][1] if ok else None,)
        return self._site[0]

    def _check_traced(self, logits: bool) -> None:
        """Refuse recomputation and compilation where the forward pass runs with hooks instead of a traced graph."""
        if self._interventions:
            why = "runs with interventions (hooks)"
        elif not self._traceable or (logits and self._output_node is None):
            why = "cannot be traced by torch.fx"
        else:
            return
        raise ConfigError(f"checkpoint_activations and compile work on the traced forward pass, but model "
                          f"{self.name!r} {why}: run it without them")

    def _extractor(self, targets: tuple[str, ...], mode: tuple[bool, str | None] = _EAGER) -> nn.Module:
        """The network traced as far as ``targets`` need (cut into recomputed stages and compiled as ``mode`` =
        (checkpoint_activations, compile backend) says), built once per layer set, alone (``SHARED.tracing``)."""
        key = (targets, *mode)
        extractor = self._extractors.get(key)
        if extractor is None:
            with SHARED.tracing():
                extractor = create_feature_extractor(self.net, return_nodes=list(targets), tracer_kwargs=_TRACER)
                if mode[0]:
                    extractor = _stages(extractor, self.net)
            if mode[1]:
                extractor = torch.compile(extractor, backend=mode[1])
            self._extractors[key] = extractor
        return extractor

    def _run_traced(self, extractor: nn.Module, x: torch.Tensor,
                    targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The requested layers from a traced extractor."""
        if extractor.training != self.net.training:
            extractor.train(self.net.training)
        out = extractor(x)
        for t in targets:  # a container and its last module are one graph node, returned under one of the names
            if t not in out:
                out[t] = next(v for k, v in out.items() if t.startswith(k + ".") or k.startswith(t + "."))
        return out

    def _hooked(self, x: torch.Tensor, targets: tuple[str, ...], stop: bool = True) -> dict[str, torch.Tensor]:
        """Module outputs captured by forward hooks; the pass ends at the last one unless the logits are wanted
        (``stop=False``, then they are returned under 'logits')."""
        modules = dict(self.net.named_modules())
        captured: dict[str, torch.Tensor] = {}
        me = threading.get_ident()

        def hook(name: str):
            def fn(_module, _inp, output):
                if threading.get_ident() != me:  # another thread's pass through the same module: not ours
                    return
                captured[name] = output
                if stop and len(captured) == len(targets):
                    raise _Stop
            return fn

        handles = [modules[t].register_forward_hook(hook(t)) for t in targets]
        try:
            captured[LOGITS] = self.net(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return captured

    def head(self, layer: str) -> nn.Module | None:
        """The network past ``layer``: a module from that layer's output to the logits, so that many edits of one
        layer's response (a micro-stimulation per site) run without the layers below it again.  None where the
        network cannot be cut there: untraceable, intervened, stochastic, or reading anything below ``layer``
        after it (a skip connection around it)."""
        layer = self.layer(layer)
        self.layers  # noqa: B018 - listing the layers traces the network once: _traceable and _output_node
        if layer in (INPUT, LOGITS) or layer in self.readouts or not self._traceable or self._interventions \
                or self.stochastic or self._output_node is None:
            return None
        key = ("head", layer)
        if key not in self._extractors:
            self._extractors[key] = self._cut(layer)
        return self._extractors[key]

    def _cut(self, layer: str) -> nn.Module | None:
        """``head``'s module, traced once (alone, ``SHARED.tracing``), or None where the graph cannot be cut."""
        with SHARED.tracing():
            traced = create_feature_extractor(self.net, return_nodes=[self._output_node], tracer_kwargs=_TRACER)
        nodes = list(traced.graph.nodes)
        at = [k for k, n in enumerate(nodes) if n.op == "call_module" and (n.target == layer
                                                                          or n.target.startswith(layer + "."))]
        if not at:
            return None
        graph = torch.fx.Graph()
        env = {nodes[at[-1]]: graph.placeholder("response")}
        for node in nodes[at[-1] + 1:]:
            needed = [a for a in node.all_input_nodes if a not in env]
            if any(a.op != "get_attr" for a in needed):
                return None  # the rest reads a tensor from below the layer
            for a in needed:
                env[a] = graph.node_copy(a)
            if node.op == "output":
                (result,) = node.args[0].values()
                graph.output(env[result])
                break
            env[node] = graph.node_copy(node, env.__getitem__)
        head = _Head(torch.fx.GraphModule(traced, graph))
        head.train(self.net.training)
        return head

    def intervene(self, *interventions: Intervention) -> ProbeModel:
        """A fork of this model (``fork``: the same weights) whose every forward pass (``model(x)``,
        ``activations``, and so the engine's runs) writes ``interventions`` into their layers: each applies to its
        layer's output, in the order given, after any the model already carries, and every later layer, the
        logits and any readout see the result.  This model is left as it was, so a stimulation in one run or
        session is never seen by another: ``stimulated = model.intervene(...)``.  Layers are module names or
        brain areas; the pixels, the logits and readouts cannot be written."""
        for iv in interventions:
            if not isinstance(iv, Intervention):
                raise ConfigError(f"intervene takes Intervention objects, got {type(iv).__name__}")
        twin = self.fork()
        modules = dict(twin.net.named_modules())
        for iv in interventions:
            layer = twin.layer(iv.layer)
            if layer not in modules or not layer:
                raise ConfigError(f"cannot write into {iv.layer!r}: interventions go into a module of the network "
                                  f"(e.g. {', '.join(list(self.areas)[:4]) or 'a module name'})")
            modules[layer].register_forward_hook(lambda _m, _i, out, iv=iv: iv.apply(out))
        twin._interventions.extend(interventions)
        return twin

    @property
    def interventions(self) -> list[Intervention]:
        """The interventions this model writes (one made by ``intervene``), first applied first."""
        return list(self._interventions)

    @property
    def stochastic(self) -> bool:
        """Whether the network's output varies between two passes over the same image (noise layers such as
        VOneNet's V1 stochasticity): attacks on it need expectation over transformation (``eot``)."""
        if self._stochastic is None:
            size = self.input_size or 64
            probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.device)
            with torch.no_grad(), noise_generator(generator(0, self.device)):  # never the global generator
                a, b = self(probe), self(probe)
            self._stochastic = not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max().clamp_min(1)))
        return self._stochastic

    def extra_repr(self) -> str:
        return f"name={self.name!r}, classes={len(self.classes)}, areas={self.areas}"


def check_images(x: torch.Tensor, slack: float = 0.0) -> None:
    """Reject what is not a non-empty N×3×H×W float batch in [0, 1] (widened by ``slack`` on both sides, for
    starts that a projection will clip), with a message that says what is wrong."""
    if not isinstance(x, torch.Tensor):
        raise ImageError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ImageError(f"images must be N×3×H×W, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ImageError("empty batch: no images to process")
    if not x.is_floating_point():
        raise ImageError(f"images must be float in [0, 1], got dtype {x.dtype}")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if not (lo >= -slack - 1e-6 and hi <= 1 + slack + 1e-6):  # also catches NaN
        raise ImageError(f"images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
