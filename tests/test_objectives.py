"""Objectives: values on known activations, composition, the string form and its parser, bad input."""
import math

import pytest
import torch

import synth
from synth.engine.objectives import Direction, Diversity, LayerNorm, Match, OneHot, Site, Stretch, parse
from synth.errors import ConfigError, UnknownNameError


@pytest.fixture
def acts():
    torch.manual_seed(0)
    return {"IT": torch.rand(3, 8, 4, 4), "V4": torch.rand(3, 6, 8, 8), "R": torch.randn(3, 5)}


def test_site_is_the_spatial_mean_of_a_channel_or_one_position(acts):
    torch.testing.assert_close(Site("IT", 2).score(acts), acts["IT"][:, 2].mean((1, 2)))
    torch.testing.assert_close(Site("IT", 2, (1, 3)).score(acts), acts["IT"][:, 2, 1, 3])
    torch.testing.assert_close(Site("R", 4).score(acts), acts["R"][:, 4])
    torch.testing.assert_close(Site("IT", (0, 5, 7)).score(acts),
                               torch.stack([acts["IT"][k, c].mean() for k, c in enumerate((0, 5, 7))]))


def test_onehot_is_the_log_softmax_of_the_target_over_its_population(acts):
    pop = acts["R"]
    torch.testing.assert_close(OneHot("R", 1).score(acts), torch.log_softmax(pop, 1)[:, 1])
    torch.testing.assert_close(OneHot("R", 1, tau=0.5).score(acts), torch.log_softmax(pop / 0.5, 1)[:, 1])
    assert (OneHot("R", 1).score(acts) < 0).all()


def test_layer_objectives(acts):
    torch.testing.assert_close(LayerNorm("V4").score(acts), acts["V4"].flatten(1).pow(2).mean(1))
    same = {"V4": acts["V4"][:1].expand(3, -1, -1, -1)}
    torch.testing.assert_close(Diversity("V4").score(same), torch.full((3,), -1.0))  # identical images: cos = 1
    assert (Diversity("V4").score(acts) > -1).all()
    v = torch.zeros(6)
    v[2] = 2.0
    torch.testing.assert_close(Direction("V4", v).score(acts), acts["V4"][:, 2].mean((1, 2)))
    target = acts["IT"][0]
    m = Match("IT", target).score(acts)
    assert m[0] == 0 and (m[1:] < 0).all()
    c = Match("IT", target, metric="cosine").score(acts)
    assert math.isclose(float(c[0]), 1.0, rel_tol=1e-5)


def test_arithmetic_composes_weighted_sums(acts):
    a, b = Site("IT", 1), LayerNorm("V4")
    combo = 2 * a - b / 4 + (-a)
    torch.testing.assert_close(combo.score(acts), a.score(acts) - b.score(acts) / 4)
    assert combo.layers == ("IT", "V4")
    with pytest.raises(ConfigError):
        a * float("nan")
    with pytest.raises(ConfigError):
        a + 3


@pytest.mark.parametrize("text", ["IT:12", "V4:5[3,4]", "stretch(V4:readout:site3)", "onehot(IT:4, tau=0.5)",
                                  "norm(V1)", "IT:12 + 0.1*diversity(V4)", "-norm(V1) - 2*IT:3", "IT:{3,5,7}",
                                  "layer4.0.conv1:7"])
def test_string_form_round_trips(text):
    assert str(parse(text)) == text
    assert str(parse(str(parse(text)))) == text


def test_parser_reads_variants():
    assert str(parse("V4:c5")) == "V4:5"
    assert str(parse("0.5*(IT:1 + IT:2)")) == "0.5*IT:1 + 0.5*IT:2"
    assert str(parse("IT:1 * 3")) == "3*IT:1"
    assert isinstance(parse("stretch(IT:2)"), Stretch)


@pytest.mark.parametrize("bad, message", [("IT", "not a site"), ("strech(IT:1)", "stretch"), ("IT:1 +", "expected"),
                                          ("norm(IT, tau=2)", "takes only"), ("IT:1 $ 2", "cannot read"),
                                          ("", "empty"), ("onehot(IT:1, tau=0)", "tau")])
def test_parser_errors_say_what_is_wrong(bad, message):
    with pytest.raises((ConfigError, UnknownNameError), match=message):
        parse(bad)


def test_bad_targets_and_indices_are_refused(acts):
    with pytest.raises(ConfigError, match="NaN"):
        Match("IT", torch.tensor([1.0, float("nan")]))
    with pytest.raises(ConfigError, match="NaN"):
        Direction("IT", torch.tensor([float("inf"), 1.0]))
    with pytest.raises(ConfigError, match="empty"):
        Match("IT", torch.zeros(0))
    with pytest.raises(ConfigError, match="out of range"):
        Site("IT", 8).score(acts)
    with pytest.raises(ConfigError, match="outside"):
        Site("IT", 1, (9, 0)).score(acts)
    with pytest.raises(ConfigError, match="one site per image"):
        Site("IT", (1, 2)).score(acts)
    with pytest.raises(ConfigError, match="does not fit"):
        Match("IT", torch.ones(5)).score(acts)
    with pytest.raises(ConfigError, match="resolved"):
        Site("R", "site3").score(acts)


def test_labels_take_a_rendered_batchs_numpy_labels():
    import numpy as np

    from synth.engine.objectives import Labels

    batch = synth.render(3, "test")
    assert isinstance(batch.labels, np.ndarray)
    assert Labels(batch.labels).values == tuple(int(v) for v in batch.labels)
    assert Labels(np.int64(2)).values == 2
    with pytest.raises(ConfigError, match="integers"):
        Labels(np.array([0.5, 1.5]))
