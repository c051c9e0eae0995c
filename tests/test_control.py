"""Population control on the shipped models: the issue's 'must show' numbers, reduced to run in seconds."""
import numpy as np
import pytest
import torch

import synth
from synth.neuro.control import population_control, stretch_units
from synth.neuro.readouts import features
from synth.neuro.subject import Subject


@pytest.fixture(scope="module")
def natural():
    """The whole natural test split: the maximum a stretch image must beat."""
    return synth.render(2000, "test", workers=2).tensor()


@pytest.mark.slow
def test_stretch_images_beat_the_natural_maximum_of_sampled_it_units(toy_standard, natural):
    g = torch.Generator().manual_seed(1)
    units = sorted(torch.randperm(256, generator=g)[:16].tolist())
    report = stretch_units(toy_standard, "IT", units, natural, steps=128, seed=0, progress=False)
    assert report["n_natural"] == 2000
    assert report["fraction_above"] >= 0.95, report
    assert report["median_ratio"] > 1.0


@pytest.mark.slow  # an experiment of half a minute: run by `make test` after the default suite
def test_one_hot_population_images_make_the_target_the_most_active_site(toy_standard, toy_robust, natural):
    probe = synth.load_model("toy-standard", device="cpu")  # a fresh copy: the readout is attached to it
    subject = Subject(toy_robust, "IT", natural[:600], n_sites=12, seed=0)
    report = population_control(probe, subject, natural[:600], layer="IT", repeats=4, seed=0, steps=128,
                                progress=False)
    assert report["onehot_model_success"] >= 0.8, report
    assert report["readout_median_r"] > 0.5 and 0 < report["readout_median_ceiling"] <= 1
    assert report["stretch"].images.shape == (12, 3, 64, 64)
    # The headline numbers, measured again: the subject shown the report's own images (its recordings are a pure
    # function of their seeds: natural seed 0, stretch seed 2, one-hot seed 3) against its best natural image.
    natural_mean = subject.record(natural[:600], 4, seed=0).mean(2)
    best = natural_mean.max(0)
    sites = np.arange(12)
    stretch = subject.record(report["stretch"].images, 4, seed=2).mean(2)[sites, sites]
    fraction, ratio = report["stretch_fraction_above_natural_max"], report["stretch_median_ratio"]
    assert fraction == pytest.approx((stretch > best).mean()) and 0 <= fraction <= 1
    assert fraction in {k / 12 for k in range(13)}  # a count of the 12 sites
    assert ratio == pytest.approx(np.median(stretch / best)) and ratio > 0
    assert (ratio > 1) <= (fraction >= 0.5)  # a median ratio above 1 needs half the sites above their best
    z = (subject.record(report["onehot"].images, 4, seed=3).mean(2) - natural_mean.mean(0)) / natural_mean.std(0)
    assert report["onehot_success"] == pytest.approx((z.argmax(1) == sites).mean())
    assert report["onehot_median_target_z"] == pytest.approx(np.median(z[sites, sites]))


def test_subject_records_poisson_noise_around_its_rates(toy_robust, natural):
    subject = Subject(toy_robust, "IT", natural[:200], n_sites=5, seed=3)
    rates = subject.rates(natural[:50])
    trials = subject.record(natural[:50], repeats=200, seed=0)
    assert trials.shape == (50, 5, 200)
    np.testing.assert_allclose(trials.mean(2), rates, atol=3.0 + 0.1 * rates.max())
    counts_var = (trials * subject.window).var(2)
    assert np.corrcoef(counts_var.ravel(), (rates * subject.window).ravel())[0, 1] > 0.9  # variance ∝ mean
    assert subject.channels == sorted(subject.channels) and len(set(subject.channels)) == 5
    pooled = features(toy_robust, natural[:3], "IT", pooled=True)[:, subject.channels]
    expected = (subject.baseline + (subject.max_rate - subject.baseline) * pooled / subject.scale).clamp_min(0)
    np.testing.assert_allclose(subject.rates(natural[:3]), expected.double().numpy(), rtol=1e-5)
