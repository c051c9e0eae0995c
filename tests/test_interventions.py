"""Interventions: writing into a layer during the forward pass, seen by every later layer, the logits and the engine."""
import pytest
import torch

import synth
from synth import Intervention
from synth.errors import ConfigError, UnknownNameError


@pytest.fixture(scope="module")
def x():
    return synth.render(4, "test").tensor()


def test_a_write_into_a_layer_reaches_every_later_layer_and_the_logits(toy_standard, x):
    with torch.no_grad():
        clean = toy_standard.activations(x, ["V4", "IT", "logits"])
        same = toy_standard.intervene(Intervention("V4", "scale", 1.0)).activations(x, ["IT", "logits"])  # identity
        silence = torch.zeros(clean["V4"].shape[1:], dtype=torch.bool)
        silence[:8] = True  # the first 8 channels of V4, everywhere
        stimulated = toy_standard.intervene(Intervention("V4", "replace", 0.0, mask=silence))
        assert [str(i) for i in stimulated.interventions] == [f"replace(V4, 0, mask of {int(silence.sum())} units)"]
        cut = stimulated.activations(x, ["V4", "IT", "logits"])
        logits = stimulated(x)
        after = toy_standard.activations(x, ["IT", "logits"])
    assert (torch.allclose(same["IT"], clean["IT"], atol=1e-6)
            and torch.allclose(same["logits"], clean["logits"], atol=1e-5))
    assert (cut["V4"][:, :8] == 0).all() and torch.equal(cut["V4"][:, 8:], clean["V4"][:, 8:])
    assert not torch.allclose(cut["IT"], clean["IT"]) and not torch.allclose(cut["logits"], clean["logits"])
    assert torch.allclose(logits, cut["logits"], atol=1e-5)  # model(x) sees it too
    assert toy_standard.interventions == [] and torch.equal(after["IT"], clean["IT"])  # the model itself is untouched
    assert stimulated.weights_digest() == toy_standard.weights_digest()  # the same weights, shared
    assert next(stimulated.parameters()).data_ptr() == next(toy_standard.parameters()).data_ptr()


def test_a_value_can_be_a_function_of_the_activity_and_writes_compose_in_order(toy_standard, x):
    with torch.no_grad():
        clean = toy_standard.activations(x, "IT")["IT"]
        gain = torch.linspace(0.5, 2.0, clean.shape[1])[:, None, None]  # a channel-dependent gain
        both = toy_standard.intervene(Intervention("IT", "scale", gain), Intervention("IT", "add", lambda a: a.mean()))
        nested = toy_standard.intervene(Intervention("IT", "scale", gain)).intervene(
            Intervention("IT", "add", lambda a: a.mean()))
        both, nested = (m.activations(x, "IT")["IT"] for m in (both, nested))
    scaled = clean * gain
    assert torch.allclose(both, scaled + scaled.mean(), atol=1e-5)
    assert torch.equal(nested, both)  # an intervened model's own intervene() adds after what it carries


def test_the_engine_optimizes_under_an_intervention(toy_standard, x):
    """The stimulus that best drives an IT channel changes when V4 is partly silenced (the engine reads the model
    through ``activations``, so a run on the model ``intervene`` returns is a run under the stimulation)."""
    start = x[:1]
    silence = torch.zeros(128, 1, 1, dtype=torch.bool)
    silence[:64] = True
    stimulated = toy_standard.intervene(Intervention("V4", "replace", 0.0, mask=silence))
    run = lambda m: synth.optimize(m, "IT:3", synth.engine.params.Pixels(start), steps=8, lr=0.05, progress=False)
    free, under = run(toy_standard), run(stimulated)
    rescored = stimulated.activations(under.images, "IT")["IT"][:, 3].mean()
    assert not torch.allclose(free.images, under.images)
    assert (free.metadata["interventions"] == []
            and under.metadata["interventions"] == ["replace(V4, 0, mask of 64 units)"])
    assert float(under.scores[0]) == pytest.approx(float(rescored), rel=1e-4)


def test_bad_interventions_get_clear_errors(toy_standard, x):
    with pytest.raises(UnknownNameError, match="intervention mode"):
        Intervention("V4", "multiply", 2.0)
    with pytest.raises(ConfigError, match="needs a mask"):
        Intervention("V4", "replace", 0.0)
    with pytest.raises(ConfigError, match="NaN"):
        Intervention("V4", "add", torch.tensor([float("nan")]))
    with pytest.raises(UnknownNameError, match="V5"):
        toy_standard.intervene(Intervention("V5", "add", 1.0))
    with pytest.raises(ConfigError, match="cannot write into 'logits'"):
        toy_standard.intervene(Intervention("logits", "add", 1.0))
    with pytest.raises(ConfigError, match="Intervention objects"):
        toy_standard.intervene("V4 * 2")
    with pytest.raises(ConfigError, match="does not fit"), torch.no_grad():
        toy_standard.intervene(Intervention("V4", "add", torch.ones(7, 1, 1)))(x)
    assert toy_standard.interventions == []


def test_a_checkpoint_made_without_a_stimulation_does_not_resume_under_one(toy_standard, x, tmp_path):
    from synth.errors import CheckpointError

    path = tmp_path / "run.pt"
    run = lambda m: synth.optimize(m, "IT:3", synth.engine.params.Pixels(x[:1]), steps=4, lr=0.05,
                                   checkpoint=path, checkpoint_every=2, progress=False)
    run(toy_standard)
    with pytest.raises(CheckpointError, match="interventions"):
        run(toy_standard.intervene(Intervention("V4", "scale", 2.0)))


class _Skip(torch.nn.Module):
    """A network whose output reads a tensor from below its 'mid' layer: it cannot be cut there."""

    def __init__(self):
        super().__init__()
        self.low, self.mid, self.out = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 1), torch.nn.Linear(4, 2)

    def forward(self, x):
        a = self.low(x)
        return self.out((self.mid(a) + a).mean((2, 3)))


def test_a_head_runs_the_network_past_a_layer_as_an_intervention_would(toy_standard, x):
    """``head(layer)``: the layers past one, from its response: the same logits as a full pass, and the same as an
    intervened model's where the response is edited first; None where the network cannot be cut there."""
    head = toy_standard.head("V4")
    gain = Intervention("V4", "scale", torch.linspace(0.0, 3.0, 128)[:, None, None])
    with torch.no_grad():
        v4 = toy_standard.activations(x, "V4")["V4"]
        assert torch.allclose(head(v4), toy_standard(x), atol=1e-5)
        assert torch.allclose(head(gain.apply(v4)), toy_standard.intervene(gain)(x), atol=1e-5)
    assert toy_standard.head("V4") is head  # traced once
    assert toy_standard.intervene(gain).head("V4") is None  # its hooks are not in a traced graph
    skip = synth.load_model(_Skip(), device="cpu", name="skip", classes=("a", "b"))
    assert skip.head("mid") is None and skip.head("low") is not None
    assert synth.load_model("toy-vone", device="cpu").head("IT") is None  # noise: its passes run whole
    with pytest.raises(UnknownNameError):
        toy_standard.head("V5")
