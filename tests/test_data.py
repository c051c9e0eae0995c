"""The embedded image world: determinism, metadata, variation levels, controls, splits, Dataset, folders."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

import synth
from synth.errors import ConfigError, UnknownNameError
from synth.world.data import VARIATION, World, localizer, render, write_folder


def test_same_seed_same_pixels_and_different_seed_or_split_differs():
    a, b = render(16, "train", World(seed=3)), render(16, "train", World(seed=3))
    assert np.array_equal(a.images, b.images)
    assert a.metadata == b.metadata
    assert not np.array_equal(a.images, render(16, "train", World(seed=4)).images)
    assert not np.array_equal(a.images, render(16, "test", World(seed=3)).images)


def test_an_image_does_not_depend_on_the_batch_it_is_rendered_in():
    whole = render(12, "val")
    part = render(4, "val", start=8)
    assert np.array_equal(whole.images[8:], part.images)
    assert [m["index"] for m in part.metadata] == [8, 9, 10, 11]


def test_parallel_rendering_equals_serial():
    assert np.array_equal(render(24, "test", workers=2).images, render(24, "test", workers=1).images)


def test_categories_are_balanced_and_labels_match_metadata():
    b = render(80, "train")
    assert b.images.shape == (80, 64, 64, 3) and b.images.dtype == np.uint8
    counts = np.bincount(b.labels, minlength=8)
    assert (counts == 10).all()
    assert [b.classes[label] for label in b.labels] == [m["category"] for m in b.metadata]
    for key in ("category", "object", "variation", "yaw", "pitch", "roll", "tx", "ty", "scale", "background"):
        assert key in b.metadata[0]


def test_variation_levels_bound_pose_position_and_scale():
    low = render(32, "train", World(variation="low"))
    for m in low.metadata:
        assert m["yaw"] == m["roll"] == m["tx"] == m["ty"] == 0 and m["scale"] == 1 and m["clutter"] == 0
    high = render(64, "train", World(variation="high"))
    v = VARIATION["high"]
    rolls = np.array([m["roll"] for m in high.metadata])
    assert np.abs(rolls).max() <= v["roll"] and np.abs(rolls).max() > v["roll"] / 2
    assert all(v["scale_lo"] <= m["scale"] <= v["scale_hi"] for m in high.metadata)
    mixed = render(400, "train")
    levels = [m["variation"] for m in mixed.metadata]
    assert 0.05 < levels.count("low") / 400 < 0.2 and levels.count("high") > 100  # HvM's 1:4:4


def test_objects_cover_the_image_differently_from_background(monkeypatch):
    """Objects are drawn: a low-variation image differs from the same scene rendered with its object emptied of
    parts (the same random draws, so the same background, lighting and noise) where the object is, and only there."""
    from synth.world import data

    world = World(variation="low", clutter=False, size=96)  # centred objects; no clutter or loose parts
    scenes = render(8, "test", world).images.astype(float)
    real = data.build
    monkeypatch.setattr(data, "build", lambda *args: real(*args) and [])  # same draws, nothing to paint
    empty = render(8, "test", world).images.astype(float)
    ring = np.ones((96, 96), dtype=bool)
    ring[8:-8, 8:-8] = False
    centre = np.zeros((96, 96), dtype=bool)
    centre[24:72, 24:72] = True  # a quarter of the image
    diff = scenes - empty
    # the final contrast scaling moves the whole image by a constant that depends on its mean: take it out
    change = np.abs(diff - np.median(diff[:, ring], axis=1)[:, None, None]).mean(-1)
    assert (np.percentile(change[:, ring], 95, axis=1) <= 2).all()  # the far background is the same scene
    drawn = change > 5
    assert (drawn.mean((1, 2)) > 0.05).all()  # every image has an object covering part of it ...
    assert ((drawn & centre).sum((1, 2)) > 0.4 * drawn.sum((1, 2))).all()  # ... around the centre


def test_image_size_is_configurable_and_validated():
    assert render(2, "test", World(size=128)).images.shape[1:3] == (128, 128)
    with pytest.raises(ConfigError):
        World(size=4)
    with pytest.raises(UnknownNameError, match="medium"):
        World(variation="meduim")
    with pytest.raises(UnknownNameError, match="faces"):
        render(1, category="face")


def test_scrambled_faces_share_everything_but_the_configuration():
    w = World(variation="low", size=96)
    faces, scrambled = (render(6, "localizer", w, category="faces"),
                        render(6, "localizer", w, category="scrambled_faces"))
    for f, s in zip(faces.metadata, scrambled.metadata):
        assert (f["background"], f["object"], f["yaw"]) == (s["background"], s["object"], s["yaw"])
    diff = np.abs(faces.images.astype(int) - scrambled.images.astype(int)).mean(axis=(1, 2, 3))
    assert (diff > 1.0).all()  # features moved
    # but the head (skin) stays: mean colour inside the central region is close
    assert np.abs(faces.images[:, 30:66, 30:66].mean((1, 2))
                  - scrambled.images[:, 30:66, 30:66].mean((1, 2))).max() < 40


def test_phase_scrambling_keeps_the_amplitude_spectrum_and_destroys_the_image():
    w = World(variation="low")
    src = render(4, "localizer", w, category="phase_scrambled")
    for _, meta in zip(src.images, src.metadata):
        assert meta["category"] == "phase_scrambled" and meta["source_category"] in synth.CATEGORIES
    original, _ = w.image(0, "localizer")
    from synth.world.render import phase_scramble
    out = phase_scramble(original, np.random.default_rng(0))
    a0 = np.abs(np.fft.fft2(original[..., 0] / 255.0))
    a1 = np.abs(np.fft.fft2(out[..., 0] / 255.0))
    assert np.corrcoef(a0[1:, 1:].ravel(), a1[1:, 1:].ravel())[0, 1] > 0.9
    assert abs(np.corrcoef(original.ravel(), out.ravel())[0, 1]) < 0.5
    assert abs(original.mean() - out.mean()) < 5


def test_localizer_conditions():
    sets = localizer(4)
    assert set(sets) == {"faces", "objects", "scrambled_faces", "phase_scrambled"}
    assert all(m["category"] != "faces" for m in sets["objects"].metadata)
    assert all(len(b) == 4 for b in sets.values())


def test_write_folder_names_every_file_and_its_category(tmp_path):
    b = render(10, "test")
    csv_path = write_folder(b, tmp_path)
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 10
    for row, img in zip(rows, b.images):
        assert np.array_equal(np.asarray(Image.open(tmp_path / row["file"])), img)
        assert row["category"] in synth.CATEGORIES
    assert not list(tmp_path.glob("*.tmp"))


def test_dataset_yields_unit_range_tensors_and_labels():
    ds = synth.ObjectImages("val", n=16)
    x, y = ds[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert ds.classes[y] == ds.batch.metadata[3]["category"]
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 3, 64, 64) and yb.shape == (8,)
    with pytest.raises(UnknownNameError):
        synth.ObjectImages("training")


def test_localizer_default_is_clean():
    sets = localizer(8)
    for batch in sets.values():
        assert all(m["clutter"] == 0 and m["loose_parts"] == 0 for m in batch.metadata)
    assert render(40, "train", World(clutter=False)).metadata[0]["loose_parts"] == 0
