"""Cortical sheets: TDANN's retinotopic layout and spatial correlation loss."""
import numpy as np
import pytest
import torch
from PIL import Image

from synth.errors import ConfigError
from synth.zoo.sheets import retinotopic_sheet, spatial_loss


def test_the_layout_keeps_retinotopy_and_is_reproducible():
    sheet = retinotopic_sheet("V4", (16, 4, 5), size_mm=10.0, seed=1)
    assert sheet.positions.shape == (16 * 4 * 5, 2)
    assert (sheet.positions >= 0).all() and (sheet.positions <= 10).all()
    xy = sheet.positions.view(16, 4, 5, 2)
    # every channel at image position (h, w) lies in tile (h, w): x in [w, w+1) × 10/5 mm, y in [h, h+1) × 10/4 mm
    cols, rows = torch.arange(5).view(1, 1, 5) * 2.0, torch.arange(4).view(1, 4, 1) * 2.5
    assert ((xy[..., 0] >= cols) & (xy[..., 0] < cols + 2.0)).all()
    assert ((xy[..., 1] >= rows) & (xy[..., 1] < rows + 2.5)).all()
    assert torch.equal(sheet.positions, retinotopic_sheet("V4", (16, 4, 5), 10.0, seed=1).positions)
    assert not torch.equal(sheet.positions, retinotopic_sheet("V4", (16, 4, 5), 10.0, seed=2).positions)
    shuffled = sheet.shuffled(0)
    assert torch.equal(shuffled.positions.sort(0).values, sheet.positions.sort(0).values)
    with pytest.raises(ConfigError, match="needs 320×2 positions"):
        type(sheet)("V4", (16, 4, 5), sheet.positions[:10], 10.0)


def test_columns_spread_each_placed_channel_over_its_positions_retinotopically():
    from synth.zoo.sheets import column_sheet

    channels = retinotopic_sheet("IT", (16, 1, 1), size_mm=8.0, seed=3)
    cols = column_sheet(channels, (4, 4))
    assert cols.shape == (16, 4, 4) and not cols.per_channel and cols.size_mm == 8.0
    xy = cols.positions.view(16, 4, 4, 2)
    side = 8.0 / 4  # 16 columns tile the sheet: each 2 mm across
    centre = channels.positions.view(16, 1, 1, 2)
    assert ((xy - centre).abs() <= side / 2 + 1e-5).all()  # a channel's units stay in its column ...
    assert (xy[:, :, 1:, 0] >= xy[:, :, :-1, 0]).all() and (xy[:, 1:, :, 1] >= xy[:, :-1, :, 1]).all()  # in order
    assert (cols.positions >= 0).all() and (cols.positions <= 8.0).all()
    with pytest.raises(ConfigError, match="per-channel"):
        column_sheet(cols, (4, 4))


def test_the_spatial_loss_is_low_for_smooth_maps_near_one_without_topography_and_differentiable():
    sheet = retinotopic_sheet("IT", (64, 4, 4), size_mm=10.0, seed=0)
    g = torch.Generator().manual_seed(0)
    # each unit's response is a smooth function of its position: a sum of broad spatial modes, one per image
    freq = torch.randn(40, 2, generator=g) * 0.4
    phase = torch.rand(40, 1, generator=g) * 6.28
    smooth = torch.cos(freq @ sheet.positions.T + phase)                                   # 40 images × 1024 units
    noise = torch.randn(40, len(sheet), generator=g)
    topo = spatial_loss(smooth + 0.3 * noise, sheet, radius_mm=3.0, neighbourhoods=16)
    flat = spatial_loss(noise, sheet, radius_mm=3.0, neighbourhoods=16)
    shuffled = spatial_loss(smooth + 0.3 * noise, sheet.shuffled(1), radius_mm=3.0, neighbourhoods=16)
    assert topo < 0.6 and flat > 0.85 and shuffled > 0.85
    feats = (smooth + noise).view(40, 64, 4, 4).requires_grad_(True)
    spatial_loss(feats, sheet, radius_mm=3.0).backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="units per image"):
        spatial_loss(torch.zeros(8, 10), sheet, radius_mm=3.0)
    with pytest.raises(ConfigError, match="at least 3 images"):
        spatial_loss(noise[:2], sheet, radius_mm=3.0)
    with pytest.raises(ConfigError, match="larger radius"):
        spatial_loss(noise, sheet, radius_mm=1e-4, neighbourhoods=2)


def test_swaps_recover_topography_that_a_shuffle_destroyed():
    """Units whose responses vary smoothly over the original layout, dealt shuffled positions, get them sorted back
    by swaps: the spatial loss falls, and the positions stay the same set (only exchanged)."""
    from synth.zoo.sheets import swap_optimize

    sheet = retinotopic_sheet("IT", (16, 4, 4), size_mm=10.0, seed=0)
    g = torch.Generator().manual_seed(0)
    freq = torch.randn(40, 2, generator=g) * 0.4
    smooth = torch.cos(freq @ sheet.positions.T + torch.rand(40, 1, generator=g) * 6.28)
    start = sheet.shuffled(3)
    swapped = swap_optimize(start, smooth, radius_mm=4.0, steps=150, swaps=40, progress=False)
    score = lambda s: float(spatial_loss(smooth, s, radius_mm=4.0, neighbourhoods=32))
    assert score(swapped) < score(start) - 0.2
    assert torch.equal(swapped.positions.sort(0).values, start.positions.sort(0).values)
    assert torch.equal(start.positions, sheet.shuffled(3).positions)  # the input sheet is left as it was


def test_microstimulation_spreads_with_current_and_drives_the_layer_through_to_the_decoder(toy_standard):
    import synth
    from microstim import inactivation, microstimulation, spread_mm

    assert spread_mm(50) == pytest.approx(0.00505 * (50 - 5.26)) and spread_mm(100) > spread_mm(50)
    with pytest.raises(ConfigError, match="below"):
        spread_mm(5)
    x = synth.render(8, "test").tensor()
    with torch.no_grad():
        clean = toy_standard.activations(x, ["IT", "logits"])
    sheet = retinotopic_sheet(toy_standard.layer("IT"), tuple(clean["IT"].shape[1:]), size_mm=10.0)
    stim = microstimulation(sheet, (5.0, 5.0), current_ua=50, rate_hz=200)
    gain = stim.value.flatten()
    d = ((sheet.positions - torch.tensor([5.0, 5.0])) ** 2).sum(1).sqrt()
    assert gain.max() <= 1 + 200 / 30 and gain[d > 10 * spread_mm(50)].max() < 1.01  # local, at most 1 + rate/30
    wide = microstimulation(sheet, (5.0, 5.0), current_ua=150).value.flatten()
    assert (wide >= gain - 1e-6).all() and (wide > 1.5).sum() > (gain > 1.5).sum()  # more current, wider spread
    with torch.no_grad():
        on = toy_standard.intervene(stim).activations(x, ["IT", "logits"])
    near = (d < spread_mm(50)).view(clean["IT"].shape[1:])
    assert (on["IT"][:, near] >= clean["IT"][:, near]).all() and (on["IT"][:, near] > clean["IT"][:, near]).any()
    assert torch.equal(on["IT"][:, ~near & (gain.view(near.shape) == 1)],
                       clean["IT"][:, ~near & (gain.view(near.shape) == 1)])
    assert not torch.allclose(on["logits"], clean["logits"])
    assert "50 µA, 200 Hz" in str(stim)
    with torch.no_grad():
        off = toy_standard.intervene(inactivation(sheet, (5.0, 5.0), radius_mm=2.0)).activations(x, "IT")["IT"]
    assert (off <= clean["IT"] + 1e-6).all() and off.sum() < 0.8 * clean["IT"].sum()
    with pytest.raises(ConfigError, match="point in mm"):
        microstimulation(sheet, (5.0,), 50)


def test_selectivity_maps_find_a_patch_that_a_shuffled_sheet_breaks_up(tmp_path):
    from scipy import stats

    from microstim import patches, plot_sheet, selectivity, smoothness

    sheet = retinotopic_sheet("IT", (64, 8, 8), size_mm=10.0, seed=0)
    g = torch.Generator().manual_seed(0)
    d = ((sheet.positions - torch.tensor([3.0, 6.0])) ** 2).sum(1).sqrt()
    face_drive = 2.0 * torch.exp(-d ** 2 / (2 * 1.0 ** 2))       # a face patch of σ 1 mm around (3, 6) mm
    faces = torch.rand(30, len(sheet), generator=g) + face_drive
    objects = torch.rand(30, len(sheet), generator=g)
    t = selectivity(faces, objects)
    ref = stats.ttest_ind(faces.double().numpy(), objects.double().numpy(), axis=0, equal_var=False).statistic
    assert np.allclose(t.numpy(), ref, atol=1e-4)
    dp = selectivity(faces, objects, "dprime")
    assert torch.allclose(dp, (faces.mean(0) - objects.mean(0)) / ((faces.var(0) + objects.var(0)) / 2).sqrt(),
                          atol=1e-4)
    found = patches(sheet, t, threshold=5.0)
    assert len(found) == 1 and found[0]["units"] > 100
    assert abs(found[0]["center_mm"][0] - 3.0) < 0.5 and abs(found[0]["center_mm"][1] - 6.0) < 0.5
    shuffled = sheet.shuffled(0)
    assert patches(shuffled, t, threshold=5.0) == []
    assert smoothness(sheet, t) > 0.5 and abs(smoothness(shuffled, t)) < 0.1
    png = plot_sheet(sheet, t, str(tmp_path / "sheet.png"), threshold=5.0)
    assert Image.open(png).size[0] > 300
    silent = torch.zeros(5, 4)
    assert torch.equal(selectivity(silent, silent), torch.zeros(4))
    with pytest.raises(ConfigError, match="'t' or 'dprime'"):
        selectivity(faces, objects, "auc")


def test_face_choices_follow_the_signal_and_stimulating_face_selective_units_biases_them(toy_standard):
    """Afraz et al. in miniature: boosting toy-standard's most face-selective IT units shifts the psychometric
    curve toward 'face'; boosting as many of the least face-selective ones does not."""
    import synth
    from microstim import psychometric, selectivity
    from synth import Intervention

    loc = synth.localizer(24)
    faces, objects = loc["faces"].tensor(), loc["objects"].tensor()
    with torch.no_grad():
        t = selectivity(toy_standard.activations(faces, "IT")["IT"], toy_standard.activations(objects, "IT")["IT"])
    shape = toy_standard.activations(faces[:1], "IT")["IT"].shape[1:]
    top = t >= t.quantile(0.95)
    bottom = t <= t.quantile(0.05)
    base = psychometric(toy_standard, faces, objects, signals=(0.0, 0.3, 0.5, 1.0))
    frac = base["face_fraction"]
    assert base["signal"] == [-1.0, -0.5, -0.3, 0.0, 0.3, 0.5, 1.0]
    assert frac[-1] > 0.8 and frac[0] < 0.2 and frac[3] < frac[5] < frac[6]  # graded with the faces' signal
    shift = {}
    for name, units in (("face", top), ("non-face", bottom)):
        gain = torch.where(units, torch.tensor(3.0), torch.tensor(1.0)).view(shape)
        stimulated = toy_standard.intervene(Intervention("IT", "scale", gain))
        curve = psychometric(stimulated, faces, objects, signals=(0.0, 0.3, 0.5, 1.0))
        shift[name] = float(np.mean(curve["face_fraction"]) - np.mean(base["face_fraction"]))
    assert shift["face"] > 0.1 and shift["face"] > shift["non-face"] + 0.1


def test_behaviour_inputs_are_checked(tiny):
    from microstim import degrade, face_choices

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(degrade(x, 1.0), x.clamp(0, 1)) and not torch.allclose(degrade(x, 0.5), x)
    with pytest.raises(ConfigError, match="fraction in"):
        degrade(x, 1.5)
    with pytest.raises(ConfigError, match="no class 'monkeys'"):
        face_choices(tiny, x, face_class="monkeys")


def test_per_channel_sheets_pool_over_space_and_stimulate_every_position_of_a_channel(tiny):
    from microstim import microstimulation, spread_mm

    sheet = retinotopic_sheet("IT", (32, 1, 1), size_mm=10.0, seed=0)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = tiny.activations(x, "IT")["IT"]
    assert clean.shape[2:] != (1, 1) and sheet.per_channel
    assert torch.allclose(sheet.responses(clean), clean.mean((2, 3)))
    assert spatial_loss(clean, sheet, radius_mm=4.0).isfinite()
    site = tuple(sheet.positions[5].tolist())
    with torch.no_grad():
        on = tiny.intervene(microstimulation(sheet, site, current_ua=100)).activations(x, "IT")["IT"]
    gain = on.sum((0, 2, 3)) / clean.sum((0, 2, 3)).clamp_min(1e-9)
    d = ((sheet.positions - torch.tensor(site)) ** 2).sum(1).sqrt()
    assert gain[5] > 5 and torch.allclose(gain[d > 3], torch.ones(int((d > 3).sum())), atol=5e-3)
    active = clean.sum((0, 2, 3)) > 1e-3
    expected = 1 + (200 / 30) * torch.exp(-d / spread_mm(100))  # falls off with distance from the site
    assert torch.allclose(gain[active], expected[active], rtol=1e-4)
    assert torch.allclose(on[:, 5], clean[:, 5] * gain[5], rtol=1e-4)  # the whole channel, at every position
    with pytest.raises(ConfigError, match="32 units per image, but the sheet for 'IT' places 16"):
        retinotopic_sheet("IT", (16, 1, 1), 10.0).responses(clean)


def test_sheets_save_load_and_attach_safely_and_tdann_npz_positions_load_by_path(tiny, tmp_path):
    import synth
    from synth.errors import CheckpointError, UnknownNameError
    from synth.zoo.sheets import load_sheets, save_sheets, sheet_of

    with torch.no_grad():
        shapes = {k: tuple(v.shape[1:]) for k, v in tiny.activations(torch.zeros(1, 3, 64, 64), ["V4", "IT"]).items()}
    sheets = {"V4": retinotopic_sheet("V4", shapes["V4"], 8.0, seed=1), "IT": retinotopic_sheet("IT", (32, 1, 1), 10.0)}
    path = save_sheets(sheets, tmp_path / "positions.pt")
    back = load_sheets(path)
    assert set(back) == {"V4", "IT"} and torch.equal(back["V4"].positions, sheets["V4"].positions)
    assert back["IT"].shape == (32, 1, 1) and back["IT"].size_mm == 10.0
    folder = tmp_path / "tdann"
    folder.mkdir()  # TDANN's LayerPositions fields, exported once with np.savez
    np.savez(folder / "V4.npz", name="V4", dims=np.array(shapes["V4"]), coordinates=sheets["V4"].positions.numpy(),
             neighborhood_width=2.0)
    model = synth.load_model(tiny.net, device="cpu", name="tiny", classes=tiny.classes, areas=tiny.areas,
                             positions=folder)
    assert torch.allclose(sheet_of(model, "V4").positions, sheets["V4"].positions)
    assert sheet_of(model, "V4").size_mm == pytest.approx(float(sheets["V4"].positions.max()))
    with pytest.raises(UnknownNameError, match="V4"):
        sheet_of(model, "IT")
    with pytest.raises(ConfigError, match="no cortical sheets"):
        sheet_of(tiny, "IT")
    wrong = {"IT": retinotopic_sheet("IT", (32, 2, 2), 10.0)}
    with pytest.raises(CheckpointError, match=r"answers with \(32, 4, 4\)"):
        synth.load_model(tiny.net, device="cpu", classes=tiny.classes, areas=tiny.areas,
                         positions=save_sheets(wrong, tmp_path / "wrong.pt"))
    (tmp_path / "IT.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(CheckpointError, match="pickle"):
        load_sheets(tmp_path / "IT.pkl")
    np.savez(tmp_path / "bad.npz", xy=np.zeros((3, 2)))
    with pytest.raises(CheckpointError, match="'coordinates'"):
        load_sheets(tmp_path / "bad.npz")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a positions file"):
        load_sheets(tmp_path / "other.pt")


@pytest.mark.slow
def test_a_recipe_with_topography_trains_with_the_spatial_loss_and_ships_positions(tmp_path, monkeypatch):
    """The toy-topo recipe in miniature: swaps before training, the spatial loss in the history, positions saved
    beside the weights (hash in the card) and attached when the card loads."""
    from dataclasses import replace

    import synth
    from synth.training import recipes as training

    small = replace(training.RECIPES["toy-topo"], name="tiny-topo", init=None, widths=(8, 16, 16, 32), epochs=1,
                    eval_n=8, eval_steps=2, swap_steps=20)
    monkeypatch.setitem(training.RECIPES, "tiny-topo", small)
    card = training.train("tiny-topo", tmp_path, workers=2, n_train=256)
    assert card["history"][0]["spatial_loss"] > 0
    topo = card["topography"]
    assert (tmp_path / topo["positions"]).is_file() and topo["layers"]["IT"]["shape"] == [32, 1, 1]
    assert topo["layers"]["V4"]["shape"] == [16, 8, 8]
    model = synth.load_model(str(tmp_path / "tiny-topo.json"), device="cpu")
    assert set(model.sheets) == {"V4", "IT"} and model.sheets["IT"].size_mm == 10.0
    start = retinotopic_sheet("V4", (16, 8, 8), 8.0, seed=0)
    assert not torch.equal(model.sheets["V4"].positions, start.positions)  # swapped ...
    assert torch.equal(model.sheets["V4"].positions.sort(0).values, start.positions.sort(0).values)  # ... not moved
    m = card["metrics"]["topography"]["IT"]
    assert m["units"] == 32 and -1 <= m["face_smoothness"] <= 1 and "face_smoothness_shuffled" in m


def test_the_dense_recipe_keeps_it_unpooled_and_lays_its_units_out_in_columns():
    """toy-topo-dense's architecture and first layout in miniature: the same tensors as a pooled VentralNet, IT's
    8×8 map, its 32 × 8 × 8 units in columns; an unknown layout is refused with the known ones."""
    from dataclasses import replace

    import synth
    from synth.errors import UnknownNameError
    from synth.training import recipes as training
    from synth.zoo.ventral import VentralNet

    small = replace(training.RECIPES["toy-topo-dense"], init=None, widths=(8, 16, 16, 32), swap_steps=5)
    model = training.build(small)
    assert set(model.net.state_dict()) == set(VentralNet(8, (8, 16, 16, 32)).state_dict())
    images = synth.render(16, "train").tensor()
    with torch.no_grad():
        assert model.activations(images[:2], "IT")["IT"].shape == (2, 32, 8, 8)
    sheets = training.initial_sheets(small, model, images)
    it = sheets[model.layer("IT")]
    assert it.shape == (32, 8, 8) and len(it) == 2048 and training.architecture(small)["it_pool"] is False
    spread = it.positions.view(32, 64, 2)
    assert (spread.amax(1) - spread.amin(1)).max() <= 10.0 / np.sqrt(32) + 1e-5  # each channel within its column
    with pytest.raises(UnknownNameError, match="did you mean 'columns'"):
        training.initial_sheets(replace(small, topography={"IT": {"size_mm": 10.0, "radius_mm": 1.5,
                                                                   "layout": "column"}}), model, images)


def test_toy_topo_ships_its_sheets_and_has_face_patches_that_shuffling_removes(toy_topo):
    from microstim import face_patches, localizer_maps, smoothness

    assert set(toy_topo.sheets) == {"V4", "IT"} and toy_topo.sheets["IT"].per_channel
    t = localizer_maps(toy_topo, "IT", n=40)["faces_vs_objects"]
    sheet = toy_topo.sheets["IT"]
    found, threshold = face_patches(sheet, t)
    assert found and found[0]["area_mm2"] >= 2 and found[0]["units"] >= 5
    assert face_patches(sheet.shuffled(0), t, threshold)[0] == []
    assert smoothness(sheet, t, 1.25) > smoothness(sheet.shuffled(0), t, 1.25) + 0.2


@pytest.mark.slow  # an experiment of half a minute: run by `make test` after the default suite
def test_afraz_stimulating_face_selective_sites_biases_choices_and_the_shuffled_control_loses_it(toy_topo, tmp_path):
    """Afraz et al. 2006 in miniature on toy-topo's IT: the shift in face choices follows the site's recorded face
    selectivity, more so than with the positions shuffled (same weights), where the stimulation's spread reaches
    units the electrode did not record."""
    from PIL import Image

    from microstim import afraz, current_for_spread, plot_afraz, spread_mm

    assert spread_mm(current_for_spread(1.0)) == pytest.approx(1.0)
    r = afraz(toy_topo, "IT", sites=60, n=16, spreads_mm=(1.0,), signals=(0.15, 0.3), progress=False)
    assert r["spread_mm"] == pytest.approx(spread_mm(50)) and len(r["topographic"]["shift"]) == 60
    assert r["topographic"]["r"] > 0.4 and r["topographic"]["p"] < 1e-3
    assert all(c["r"] > c["r_shuffled"] for c in r["curve"])
    assert np.mean([c["r"] - c["r_shuffled"] for c in r["curve"]]) > 0.1
    png = plot_afraz(r, tmp_path / "afraz.png")
    assert Image.open(png).size[0] > 800
    with pytest.raises(ConfigError, match="between 3 and 256 sites"):
        afraz(toy_topo, "IT", sites=1000, progress=False)


@pytest.mark.slow  # Afraz's own experiment, whole: half a minute
def test_on_the_dense_sheet_afraz_at_50_microamps_needs_the_topography(toy_topo_dense):
    """The default topographic model at Afraz et al.'s 50 µA and 200 Hz, 86 sites: the shift in face choices follows
    the recorded selectivity (r >= 0.5), and shuffling the positions of the same weights loses it (by 0.2 or more,
    one-sided p < 0.01); its face map has patches where the shuffled sheet has none."""
    from microstim import afraz, face_patches, localizer_maps

    t = localizer_maps(toy_topo_dense, "IT", 100)["faces_vs_objects"]
    r = afraz(toy_topo_dense, "IT", face_map=t, progress=False)
    assert r["sites"] == 86 and r["current_ua"] == 50 and r["rate_hz"] == 200
    assert r["topographic"]["r"] >= 0.5, r["topographic"]
    assert r["difference"] >= 0.2 and r["difference_p"] < 0.01, (r["difference"], r["difference_p"])
    sheet = toy_topo_dense.sheets["IT"]
    found, threshold = face_patches(sheet, t)
    assert found and face_patches(sheet.shuffled(0), t, threshold)[0] == []


@pytest.mark.slow  # a kill and a resume of a small Afraz run
def test_a_killed_afraz_run_resumes_from_its_finished_sites_and_gives_the_same_report(toy_topo, tmp_path,
                                                                                      monkeypatch):
    import importlib

    import synth.files

    af = importlib.import_module("microstim.afraz")  # the module: `microstim.afraz` is also its function's name
    settings = dict(sites=5, n=8, spreads_mm=(1.0,), signals=(0.0, 0.15), progress=False, batch=2)
    t = torch.randn(len(af.sheet_of(toy_topo, "IT")), generator=torch.Generator().manual_seed(0))
    whole = af.afraz(toy_topo, "IT", face_map=t, **settings)
    partial, writes, real_write = tmp_path / "sites.partial.json", [], synth.files.write_text

    def killed_after_seven_sites(path, text):  # afraz imports write_text when it runs: it gets this one
        real_write(path, text)
        writes.append(path)
        if len(writes) == 4:  # 5 topographic sites (batches of 2, 2, 1) and 2 shuffled ones are on disk
            raise KeyboardInterrupt

    monkeypatch.setattr(synth.files, "write_text", killed_after_seven_sites)
    with pytest.raises(KeyboardInterrupt):
        af.afraz(toy_topo, "IT", face_map=t, partial=partial, **settings)
    monkeypatch.undo()
    assert partial.is_file()
    calls, real_stimulation = [], af.microstimulation
    monkeypatch.setattr(af, "microstimulation", lambda *a, **k: calls.append(a[1]) or real_stimulation(*a, **k))
    resumed = af.afraz(toy_topo, "IT", face_map=t, partial=partial, **settings)
    assert len(calls) == 3 * 2  # only the 3 shuffled sites left, at 2 currents (50 µA and 1 mm): none twice
    assert any(whole["topographic"]["shift"]) and any(whole["shuffled"]["shift"])  # stimulation moved choices
    assert resumed["topographic"]["shift"] == whole["topographic"]["shift"]
    assert resumed["shuffled"]["shift"] == whole["shuffled"]["shift"] and not partial.exists()
    monkeypatch.setattr(type(toy_topo), "head", lambda self, layer: None)  # every stimulation a full pass
    full = af.afraz(toy_topo, "IT", face_map=t, **settings)
    assert full["topographic"]["shift"] == whole["topographic"]["shift"]  # the batched head gives the same choices
    assert full["shuffled"]["shift"] == whole["shuffled"]["shift"]
