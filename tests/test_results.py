"""Results save and load with their recipe; PNG metadata; image reading handles odd modes and bad files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import synth
from synth.engine.results import Result
from synth.errors import ImageError
from synth.files import read_png


def test_result_round_trips_with_its_recipe(tiny, tmp_path):
    r = synth.synthesize(tiny, "stretch(IT:4)", n=2, size=32, steps=6, seed=3, progress=False)
    paths = r.save(tmp_path)
    back = Result.load(tmp_path)
    assert torch.equal(back.images, r.images) and torch.equal(back.history, r.history)
    assert back.metadata == json.loads(json.dumps(r.metadata))
    for key in ("model", "weights_sha256", "layers", "objective", "parametrization", "seed", "steps", "phosphene"):
        assert key in back.metadata
    img, meta = read_png(paths[1])
    assert meta["objective"] == "stretch(IT:4)" and meta["seed"] == 3 and meta["steps"] == 6 and meta["index"] == 1
    assert (img - r.images[1]).abs().max() <= 1 / 255
    assert Image.open(paths[0]).text["phosphene:model"] == "tiny"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "LA", "CMYK"])
def test_odd_image_modes_become_rgb(tmp_path, mode):
    rgb = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8))
    im = (rgb.convert(mode) if mode != "I;16"
          else Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)))
    path = tmp_path / f"x.{'tif' if mode == 'CMYK' else 'png'}"
    im.save(path)
    x, meta = read_png(path)
    assert x.shape == (3, 8, 8) and 0 <= x.min() and x.max() <= 1 and meta == {}


def test_unreadable_images_raise_image_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="cannot read"):
        read_png(tmp_path / "broken.png")
    with pytest.raises(ImageError, match="cannot read"):
        read_png(tmp_path / "missing.png")
