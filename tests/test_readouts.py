"""Readouts: Brain-Score-style fitting and scoring, file formats, attachment as a layer, bad input."""
import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import RidgeCV

import synth
from synth.errors import ConfigError, ImageError, UnknownNameError
from synth.neuro.readouts import (
    Readout,
    Responses,
    _linear_map,
    embedded_images,
    features,
    fit,
    load_responses,
    split_half_ceiling,
)


@pytest.fixture(scope="module")
def recording(tiny):
    """Sites that are noisy linear functions of tiny's V4 features, recorded 4 times on 120 images."""
    images = synth.render(120, "val", synth.World(size=32)).tensor()
    x = features(tiny, images, "V4").double().numpy()
    rng = np.random.default_rng(0)
    w = rng.normal(size=(x.shape[1], 6))
    clean = (x - x.mean(0)) @ w
    clean = clean / clean.std(0) * 5 + 20
    values = clean[:, :, None] + rng.normal(0, 2.0, size=(120, 6, 4))
    return images, Responses([f"val:{i}" for i in range(120)], values, [f"s{i}" for i in range(6)]), clean


@pytest.mark.parametrize("method", ["pls", "ridge"])
def test_fit_predicts_held_out_sites_and_reports_the_ceiling(tiny, recording, method):
    images, resp, clean = recording
    readout = fit(tiny, images, resp, "V4", method=method, folds=5)
    info = readout.info
    assert info["median_r"] > 0.7, info["median_r"]
    assert 0.8 < np.median(info["ceiling"]) <= 1.0
    assert len(info["r"]) == 6 and info["folds"] == 5 and info["repeats"] == 4
    pred = readout(features(tiny, images, "V4")).double().numpy()
    z = (resp.mean - resp.mean.mean(0)) / resp.mean.std(0)
    assert abs(pred.mean()) < 0.05 and np.corrcoef(pred[:, 0], z[:, 0])[0, 1] > 0.8  # z-units of natural responses
    rates = readout.to_rates(torch.from_numpy(pred)).numpy()
    assert abs(rates.mean() - resp.mean.mean()) < 1.0


def test_synthesized_images_join_the_fit_without_rescaling_the_sites_or_outweighing_natural_ones(tiny, recording):
    """A closed loop's refit: images driven far past the natural range (here by another map, at 10x the natural
    spread) neither set the z-units nor count in r, and weighted down they spoil the natural fit less."""
    images, resp, clean = recording
    rng = np.random.default_rng(2)
    extra = torch.rand(30, *images.shape[1:], generator=torch.Generator().manual_seed(0))
    wild = 20 + 50 * rng.normal(size=(30, 6, 1)) + rng.normal(0, 2.0, size=(30, 6, 4))
    both = Responses(resp.image_ids + [f"synth:{i}" for i in range(30)], np.concatenate([resp.values, wild]),
                     resp.sites)
    natural = np.arange(150) < 120
    x = features(tiny, images, "V4").double().numpy()
    fits = {w: fit(tiny, torch.cat([images, extra]), both, "V4", method="ridge", folds=5, natural=natural,
                   weights=np.where(natural, 1.0, w)) for w in (1.0, 0.05)}
    for readout in fits.values():
        np.testing.assert_allclose(readout.site_mean.double().numpy(), resp.mean.mean(0), rtol=1e-5)
        np.testing.assert_allclose(readout.site_std.double().numpy(), resp.mean.std(0), rtol=1e-5)
        assert readout.info["n_natural"] == 120 and readout.info["n_images"] == 150
    natural_r = {w: np.median([np.corrcoef(p, c)[0, 1] for p, c in zip(
        (r(torch.from_numpy(x).float()).double().numpy()).T, clean.T)]) for w, r in fits.items()}
    assert natural_r[0.05] > natural_r[1.0] + 0.05, natural_r
    assert fits[0.05].info["median_r"] > 0.7
    left_out = fit(tiny, torch.cat([images, extra]), both, "V4", method="pls", folds=5, natural=natural,
                   weights=natural.astype(float))  # weight 0 leaves an image out, for PLS too
    alone = fit(tiny, images, resp, "V4", method="pls", folds=5)
    assert torch.allclose(left_out.weight, alone.weight, atol=1e-6) and torch.allclose(left_out.bias, alone.bias,
                                                                                        atol=1e-5)
    with pytest.raises(ConfigError, match="method='ridge'"):
        fit(tiny, torch.cat([images, extra]), both, "V4", method="pls", natural=natural,
            weights=np.where(natural, 1.0, 0.1))
    with pytest.raises(ConfigError, match="natural-image mask"):
        fit(tiny, torch.cat([images, extra]), both, "V4", natural=natural[:100])


@pytest.mark.parametrize("reg", [PLSRegression(n_components=3, scale=False), RidgeCV(alphas=(0.1, 1.0, 10.0))])
def test_linear_map_equals_the_regressors_predictions(reg):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 12)) * rng.uniform(0.5, 3, 12), rng.normal(size=(50, 3))
    reg.fit(x, y)
    w, b = _linear_map(reg)
    np.testing.assert_allclose(x @ w.T + b, reg.predict(x), atol=1e-8)


def test_split_half_ceiling_is_one_without_noise_and_near_zero_for_pure_noise():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(200, 3, 1))
    assert np.allclose(split_half_ceiling(np.repeat(signal, 4, axis=2)), 1.0)
    assert split_half_ceiling(rng.normal(size=(200, 3, 4))).max() < 0.3
    with pytest.raises(ConfigError, match="2 repeats"):
        split_half_ceiling(rng.normal(size=(20, 3, 1)))


def test_response_files_npz_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 3, 2))
    np.savez(tmp_path / "r.npz", responses=values, image_ids=[f"test:{i}" for i in range(12)], sites=["a", "b", "c"])
    r = load_responses(tmp_path / "r.npz")
    assert r.sites == ["a", "b", "c"] and r.values.shape == (12, 3, 2) and r.image_ids[3] == "test:3"
    lines = ["image_id,a,b"] + [f"test:{i},{i},{2 * i + rep}" for i in range(12) for rep in range(3)]
    (tmp_path / "r.csv").write_text("\n".join(lines))
    c = load_responses(tmp_path / "r.csv")
    assert c.values.shape == (12, 2, 3) and c.values[5, 1].tolist() == [10, 11, 12]
    (tmp_path / "bad.csv").write_text("image,a\nx,1\n")
    with pytest.raises(ConfigError, match="image_id"):
        load_responses(tmp_path / "bad.csv")
    with pytest.raises(ConfigError, match="NaN"):
        Responses([str(i) for i in range(12)], np.full((12, 2), np.nan), ["a", "b"])
    with pytest.raises(ConfigError, match="do not match"):
        Responses(["a"] * 12, np.zeros((12, 3)), ["a", "b"])
    with pytest.raises(ConfigError, match=".npz or .csv"):
        (tmp_path / "r.txt").write_text("x")
        load_responses(tmp_path / "r.txt")


def test_readout_saves_loads_and_becomes_a_layer_with_named_sites(tiny, recording, tmp_path):
    images, resp, _ = recording
    readout = fit(tiny, images, resp, "V4", folds=3)
    path = readout.save(tmp_path / "v4sites")
    loaded = Readout.load(path)
    assert loaded.sites == readout.sites and torch.equal(loaded.weight, readout.weight)
    model = synth.load_model(tiny.net, device="cpu", areas=tiny.areas, name="tiny-copy", mean=(0.5,) * 3,
                             std=(0.25,) * 3)
    name = model.add_readout(loaded)
    assert name == "V4:readout" and "V4:readout" in model.layers and model.sites(name) == readout.sites
    out = model.activations(images[:4], "V4:readout")["V4:readout"]
    torch.testing.assert_close(out, readout(features(tiny, images[:4], "V4")))
    r = synth.synthesize(model, "stretch(V4:readout:s2)", size=32, steps=20, progress=False, transforms=None)
    assert r.scores[0] > r.history[0, 0]
    assert r.metadata["objective"] == "stretch(V4:readout:s2)"  # the site keeps its name in the recipe
    with pytest.raises(UnknownNameError, match="'s2'"):
        synth.synthesize(model, "stretch(V4:readout:s22)", size=32, steps=1, progress=False)
    with pytest.raises(ConfigError, match="no named sites"):
        model.sites("IT")
    with pytest.raises(ConfigError, match="no readout"):
        Readout.load(tmp_path / "nothing")


def test_embedded_image_ids_and_folders(tmp_path):
    imgs = embedded_images(["test:3", "val:0"])
    expected, _ = synth.World().image(3, "test")
    assert torch.equal((imgs[0].permute(1, 2, 0) * 255).round().byte(), torch.from_numpy(expected))
    with pytest.raises(ConfigError, match="split:index"):
        embedded_images(["cat.png"])
    with pytest.raises(ImageError, match="not in"):
        embedded_images(["cat.png"], images_dir=tmp_path)
