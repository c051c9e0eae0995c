"""Generators as a search space: the shipped toy-gan loads and makes world-like images, the 'generator:NAME'
parametrization serves gradient synthesis and evolution and round-trips through save and load, and evolution
against a simulated subject never asks it for a gradient."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import synth
import synth.training.generators as recipes
import synth.zoo.generators as gens
from synth.engine.params import Generated, make
from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.neuro.subject import Presented, Subject


@pytest.fixture(scope="module")
def toy_gan():
    return gens.load_generator("toy-gan", device="cpu")


@pytest.mark.parametrize("name", ["toy-gan", "toy-deepsim"])
def test_shipped_generators_match_their_cards_and_look_more_like_the_world_than_noise(name, toy_standard):
    card = json.loads((gens.GENERATORS_DIR / f"{name}.json").read_text())
    m = card["metrics"]
    g = gens.load_generator(name, device="cpu")
    assert g.latent_dim == card["architecture"]["latent_dim"] and g.info["sha256"] == card["sha256"]
    assert sum(m["histogram"].values()) == round(m["confident_share"] * m["n"])
    _, images = recipes.sample(g, 200, seed=11)
    noise = make("fourier", 200, 64, "noise", torch.Generator().manual_seed(0), sd=0.5).image().detach()

    def confident(x):
        with torch.no_grad():
            p = torch.softmax(toy_standard(x), 1)
        sure = p.max(1).values >= m["confidence"]
        return float(sure.double().mean()), torch.bincount(p.argmax(1)[sure], minlength=8)

    share, counts = confident(images)
    assert abs(share - m["confident_share"]) < 0.1  # the card's number, on fresh samples
    # toy-standard is confident on noise too, but calls nearly all of it one or two things
    noise_share, noise_counts = confident(noise)
    spread = lambda k: int((k >= gens.SPREAD * k.sum()).sum())  # noqa: E731
    assert spread(counts) >= spread(noise_counts) + 2
    assert m["categories_spread"] == spread(torch.tensor(list(m["histogram"].values())))


def test_toy_gan_samples_are_seeded_and_distinct(toy_gan):
    codes, images = recipes.sample(toy_gan, 16, seed=3)
    assert images.shape == (16, 3, 64, 64) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert torch.equal(recipes.sample(toy_gan, 16, seed=3)[1], images)  # a seed is a sample set
    assert float(images.std(0).mean()) > 0.05  # distinct codes make distinct images: no collapse to one


def test_gradient_synthesis_in_the_latent_space_climbs_and_round_trips(toy_standard, tmp_path):
    r = synth.synthesize(toy_standard, "IT:5", n=2, param="generator:toy-gan", steps=25, lr=0.05,
                         transforms=None, relu_override=0, seed=1, progress=False)
    assert r.metadata["parametrization"] == "generator:toy-gan"
    assert r.metadata["parametrization_info"]["generator_sha256"] == gens.load_generator("toy-gan").info["sha256"]
    assert (r.scores > r.history[0]).all()
    assert r.codes.shape == (2, 128) and r.best_codes.shape == (2, 128)
    r.save(tmp_path)
    back = synth.Result.load(tmp_path, toy_standard)
    assert torch.equal(back.codes, r.codes) and torch.equal(back.best_codes, r.best_codes)
    # the saved recipe and codes remake the images: the parametrization by name, started from the codes
    again = make(back.metadata["parametrization"], 2, 64, back.codes, torch.Generator())
    with torch.no_grad():
        assert torch.allclose(again.image(), back.images, atol=1e-6)
        best = make(back.metadata["parametrization"], 2, 64, back.best_codes, torch.Generator()).image()
    assert torch.allclose(best, back.best, atol=1e-6)
    # and a new run continues from them
    more = synth.synthesize(toy_standard, "IT:5", n=2, param="generator:toy-gan", init=back.codes, steps=1,
                            transforms=None, relu_override=0, progress=False)
    assert torch.allclose(more.history[0], r.scores, atol=1e-4)


def test_generator_parametrization_refuses_bad_starts(toy_gan):
    gen = torch.Generator()
    with pytest.raises(ConfigError, match="codes"):
        make("generator:toy-gan", 2, 64, torch.rand(2, 3, 64, 64), gen)
    with pytest.raises(ConfigError, match="N×128"):
        Generated(toy_gan, torch.zeros(2, 64), 64)
    with pytest.raises(ConfigError, match="finite"):
        Generated(toy_gan, torch.full((1, 128), float("nan")), 64)
    with pytest.raises(UnknownNameError, match="toy-gan"):
        make("generator:toy-gna", 1, 64, "noise", gen)
    assert torch.equal(make("generator:toy-gan", 3, 64, "grey", gen).code, torch.zeros(3, 128))


def test_load_generator_by_shapes_and_clear_errors(toy_gan, tmp_path):
    plain = tmp_path / "mine.pt"
    torch.save({"state_dict": toy_gan.state_dict()}, plain)
    g = gens.load_generator(plain, device="cpu")
    assert (g.latent_dim, g.width, g.output_size) == (128, 32, 64)
    z = torch.randn(2, 128)
    with torch.no_grad():
        assert torch.equal(g(z), toy_gan(z))
    small = gens.WorldGAN(latent_dim=16, width=8, size=32)
    torch.save(small.state_dict(), tmp_path / "small.pt")
    g = gens.load_generator(tmp_path / "small.pt", device="cpu")
    assert (g.latent_dim, g.width, g.output_size) == (16, 8, 32)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither DeePSiM fc6"):
        gens.load_generator(tmp_path / "other.pt")
    broken = dict(toy_gan.state_dict())
    broken["net.5.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        gens.load_generator(tmp_path / "broken.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["toy-gan", "toy-deepsim"])
def test_recipe_writes_weights_card_and_sheet(name, tmp_path, monkeypatch):
    monkeypatch.setitem(recipes.GENERATOR_RECIPES, name, replace(recipes.GENERATOR_RECIPES[name], eval_n=64,
                                                              batch_size=16, latent_dim=16))
    card = recipes.train_generator(name, tmp_path, workers=1, epochs=1, n_train=64)
    assert {p.name for p in tmp_path.iterdir()} == {f"{name}.{ext}" for ext in ("pt", "json", "md", "png")}
    m = card["metrics"]
    assert m["n"] == 64 and sum(m["histogram"].values()) == round(m["confident_share"] * 64)
    assert card["history"][0]["epoch"] == 1 and all(np.isfinite(v) for v in card["history"][0].values())
    g = gens.load_generator(tmp_path / f"{name}.json", device="cpu")
    assert g.info["sha256"] == card["sha256"] and g.latent_dim == 16
    with torch.no_grad():
        assert g(torch.zeros(1, 16)).shape == (1, 3, 64, 64)
    assert "confidence" in (tmp_path / f"{name}.md").read_text()


def test_inverter_codes_are_draws_from_the_encoder_layers_gaussian():
    g = gens.load_generator("toy-deepsim", device="cpu")
    card = json.loads((gens.GENERATORS_DIR / "toy-deepsim.json").read_text())
    enc = synth.load_model(card["architecture"]["encoder"], device="cpu")
    natural = synth.render(300, "val").tensor()
    with torch.no_grad():
        real = enc.activations(natural, [g_layer := card["architecture"]["layer"]])[g_layer].flatten(1)
        drawn = g.features(torch.randn(300, g.latent_dim, generator=torch.Generator().manual_seed(0))).flatten(1)
    assert (drawn >= 0).all()
    # per-unit means and overall spread of the prior's features are those of natural responses
    assert torch.corrcoef(torch.stack([real.mean(0), drawn.mean(0)]))[0, 1] > 0.95
    assert 0.7 < float(drawn.std(0).mean() / real.std(0).mean()) < 1.3


class _NoBackward(torch.autograd.Function):
    """Identity forward; a backward that fails the test."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("the evolution asked the subject for a gradient")


@pytest.fixture(scope="module")
def guarded_subject(test_sample):
    """A subject (toy-robust IT sites) whose network refuses backward and records whether autograd was on."""
    model = synth.load_model("toy-robust", device="cpu")
    grad_on = []
    activations = model.activations

    def guarded(x, layers, **options):
        grad_on.append(torch.is_grad_enabled())
        return {k: _NoBackward.apply(v) for k, v in activations(x, layers, **options).items()}

    model.activations = guarded  # every response the subject gives passes through a backward that fails
    subject = Subject(model, "IT", test_sample.tensor()[:200], n_sites=4, seed=0)
    return subject, grad_on


@pytest.mark.parametrize("optimizer", ["genetic", "cmaes"])
def test_evolution_against_a_subject_makes_no_gradient_call(guarded_subject, optimizer):
    subject, grad_on = guarded_subject
    grad_on.clear()
    r = synth.evolve(subject, "site" + subject.sites[1][4:], code="generator:toy-gan", optimizer=optimizer,
                     population=10, generations=4, repeats=2, seed=0, progress=False)
    assert grad_on and not any(grad_on)  # every presentation ran with autograd off
    assert r.metadata["objective"] == f"presented({subject.sites[1]}, repeats=2)"
    assert r.metadata["model"] == "display" and r.metadata["presentations_per_generation"] == 20
    assert r.history.shape == (4, 10) and r.best_codes.shape == (10, 128)
    # the scores are spike rates: multiples of 1 / (window × repeats) spikes/s
    unit = 1 / (subject.window * 2)
    assert torch.allclose(r.history / unit, (r.history / unit).round(), atol=1e-3)


def test_presented_is_noisy_and_seeded(guarded_subject):
    subject, _ = guarded_subject
    images = recipes.sample(gens.load_generator("toy-gan", device="cpu"), 6, seed=0)[1]
    a, b = Presented(subject, 0, repeats=3, seed=4), Presented(subject, 0, repeats=3, seed=4)
    first = a({"input": images})
    assert torch.equal(first, b({"input": images}))  # same seed, same trials
    assert not torch.equal(first, a({"input": images}))  # each call is a new presentation
    with pytest.raises(ConfigError, match="out of range"):
        Presented(subject, 9)
    with pytest.raises(UnknownNameError, match="did you mean"):
        Presented(subject, subject.sites[0] + "0")


def test_evolution_from_a_readout_site_in_generator_space(toy_standard, test_sample):
    model = synth.load_model("toy-standard", device="cpu")
    images = test_sample.tensor()[:240]
    resp = synth.neuro.readouts.Responses([f"i{k}" for k in range(240)],
                                    synth.neuro.readouts.features(toy_standard, images, "V4", pooled=True)[:, :3, None]
                                    .double().numpy().repeat(2, 2), ["a", "b", "c"])
    name = model.add_readout(synth.fit_readout(model, images, resp, "V4", method="ridge"))
    r = synth.evolve(model, f"{name}:b", code="generator:toy-gan", optimizer="cmaes", population=12,
                     generations=6, seed=0, progress=False)
    assert float(r.history[-1].max()) > float(r.history[0].max())


def test_evolve_rejects_bad_settings(tiny, guarded_subject):
    with pytest.raises(UnknownNameError, match="evolution code"):
        synth.evolve(tiny, "IT:1", code="gan", population=4, generations=1, progress=False)
    with pytest.raises(ConfigError, match="repeats"):
        synth.evolve(tiny, "IT:1", repeats=3, population=4, generations=1, progress=False)
    with pytest.raises(ConfigError, match="repeats"):
        synth.evolve(guarded_subject[0], 0, repeats=0, population=4, generations=1, progress=False)


def test_cli_evolves_and_synthesizes_in_generator_space(tmp_path, capsys):
    from synth.cli import main

    assert main(["synth", "--objective", "IT:4", "--evolve", "--code", "generator:toy-gan", "--optimizer", "cmaes",
                 "--population", "6", "--steps", "2", "--out", str(tmp_path / "evo")]) == 0
    assert "best image evolved" in capsys.readouterr().out
    back = synth.Result.load(tmp_path / "evo")
    assert back.metadata["code"] == "generator:toy-gan" and back.best_codes.shape == (6, 128)
    assert main(["synth", "--objective", "IT:4", "--param", "generator:toy-gan", "--steps", "2",
                 "--out", str(tmp_path / "grad")]) == 0
    assert synth.Result.load(tmp_path / "grad").metadata["parametrization"] == "generator:toy-gan"
    with pytest.raises(SystemExit):
        main(["synth", "--objective", "IT:4", "--param", "gan", "--out", str(tmp_path / "x")])
    assert "generator:NAME" in capsys.readouterr().err
    assert main(["synth", "--objective", "IT:4", "--param", "generator:nope", "--steps", "1",
                 "--out", str(tmp_path / "y")]) == 2
    assert "unknown generator 'nope'" in capsys.readouterr().err


def test_batch_jobs_in_generator_space_hash_the_generator(tmp_path):
    from synth.batch import JOB_KEYS, weights_digest

    job = {**JOB_KEYS, "objective": "IT:1", "method": "evolution"}
    fourier = weights_digest({**job, "code": "fourier"})
    gan = weights_digest({**job, "code": "generator:toy-gan"})
    copy = tmp_path / "gan.pt"
    copy.write_bytes((gens.GENERATORS_DIR / "toy-gan.pt").read_bytes())
    assert fourier != gan == weights_digest({**job, "code": f"generator:{copy}"})  # by content, not by path
    state = torch.load(copy, weights_only=True)
    state["net.1.weight"] = state["net.1.weight"] + 0.01  # "retrained" in place
    torch.save(state, copy)
    assert weights_digest({**job, "code": f"generator:{copy}"}) != gan
    assert weights_digest({**job, "method": "gradient", "param": "generator:toy-gan"}) == gan


def test_evolve_sites_keeps_each_budgets_best_and_measures_it_as_the_natural_images(guarded_subject, test_sample):
    from synth.neuro.control import evolve_sites

    subject, grad_on = guarded_subject
    natural = test_sample.tensor()[:60]
    grad_on.clear()
    report = evolve_sites(subject, natural, [0, subject.sites[2]], code="generator:toy-gan", optimizer="genetic",
                          population=8, generations=5, budgets=[40, 16], check=4, seed=3, progress=False)
    assert grad_on and not any(grad_on)
    assert report["budgets"] == [16, 40] and report["images"].shape == (2, 2, 3, 64, 64)
    nat = subject.record(natural, 4, seed=[3, 1]).mean(2)[:, [0, 2]]  # the same trials the report drew
    rates = subject.rates(natural)[:, [0, 2]]
    for k, (row, site) in enumerate(zip(report["sites"], [0, 2])):
        assert row["site"] == subject.sites[site] and row["natural_best_image"] == int(nat[:, k].argmax())
        assert row["natural_best"] == pytest.approx(float(nat[:, k].max()))
        assert row["ratio"] == pytest.approx([e / row["natural_best"] for e in row["evolved"]])
        true = subject.rates(report["images"][k])[:, site] / float(rates[:, k].max())
        assert row["true_ratio"] == pytest.approx(true.tolist(), rel=1e-5)
    assert report["median_ratio"] == pytest.approx(np.median([r["ratio"] for r in report["sites"]], 0).tolist())
    with pytest.raises(ConfigError, match="more than 5 generations"):
        evolve_sites(subject, natural, [0], code="fourier", population=8, generations=5, budgets=[48],
                     progress=False)
    with pytest.raises(ConfigError, match="less than one generation"):
        evolve_sites(subject, natural, [0], code="fourier", population=8, generations=5, budgets=[4, 40],
                     progress=False)
