"""One result format (synth.files.save_record / load_record): every kind of record saved before it still loads with
the values it was written with, round-trips through the new format, and refuses another kind, a newer format or a
.pt that is not its own with a clear error.  The fixtures in tests/fixtures/formats were written by commit 30a0405
(before the one format) with ``tiny`` (see tests/fixtures/formats/README.md)."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import attacks
import metamers
import synth
from attacks.result import distances
from synth.engine.results import Result
from synth.errors import CheckpointError, ConfigError
from synth.files import load_record, save_record
from synth.neuro.readouts import Readout, features

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def expected(kind: str) -> dict:
    return json.loads((FIXTURES / kind / "expected.json").read_text())


def fixture_digest(t: torch.Tensor) -> str:
    """The digest ``expected.json`` records (how the fixtures' script hashed each tensor): sha256 of 'dtype:shape;'
    and the values' bytes, 16 hex digits.  Pinned here, so the fixtures do not depend on the library's digest."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def same_digests(tensors: dict, want: dict) -> None:
    assert {k: fixture_digest(v) for k, v in tensors.items()} == want


@pytest.fixture(scope="module")
def other(tiny):
    """A model of tiny's name and architecture with other weights."""
    return synth.load_model(type(tiny.net)(8, (8, 16, 16, 32)), device="cpu", name="tiny", classes=tiny.classes)


# ------------------------------------------------------------------------------------------ records saved before
def test_an_old_result_loads_with_its_values_and_weights(tiny, other):
    want = expected("result")
    r = Result.load(FIXTURES / "result", tiny)
    assert want["weights_sha256"] == tiny.weights_digest() and r.metadata == want["metadata"]
    same_digests({"images": r.images, "history": r.history, "scores": r.scores, "grad_norm": r.grad_norm,
                  **{f"activations.{k}": v for k, v in r.activations.items()}}, want["tensors"])
    with torch.no_grad():  # the saved activations are tiny's on the saved images
        torch.testing.assert_close(tiny.activations(r.images, "IT")["IT"], r.activations["IT"], atol=1e-4, rtol=1e-4)
    with pytest.raises(CheckpointError, match="load the model it was made with"):
        Result.load(FIXTURES / "result", other)


def test_an_old_attack_loads_with_its_values_and_weights(tiny, other):
    want = expected("attack")
    a = attacks.AttackResult.load(FIXTURES / "attack", tiny)
    assert (a.metadata, a.norm, a.classes) == (want["metadata"], want["norm"], want["classes"])
    assert a.checks == want["checks"]
    same_digests({k: getattr(a, k) for k in want["tensors"]}, want["tensors"])
    assert torch.equal(distances(a.adversarial, a.images, a.norm), a.distance)
    with torch.no_grad():
        assert torch.equal(tiny(a.images).argmax(1), a.clean_predictions)
    with pytest.raises(CheckpointError, match="load the model it was made with"):
        attacks.AttackResult.load(FIXTURES / "attack", other)


def test_old_metamers_load_with_their_values_and_judge_the_same(tiny, other):
    want = expected("metamer")
    m = metamers.MetamerResult.load(FIXTURES / "metamer", tiny)
    assert (m.stage, m.layer, m.names, m.error_target, m.metadata) == (want["stage"], want["layer"], want["names"],
                                                                      want["error_target"], want["metadata"])
    same_digests({"images": m.images, "references": m.references, "history": m.run.history,
                  **{f"stats.{st}.{k}": v for st, d in m.stats.items() for k, v in d.items()}}, want["tensors"])
    null = synth.render(8, "val", synth.World(size=32)).tensor()
    again = m.rescore(tiny, null)
    torch.testing.assert_close(again["V4"]["error"], m.stats["V4"]["error"], atol=1e-2, rtol=0)
    with pytest.raises(CheckpointError, match="load the model it was made with"):
        metamers.MetamerResult.load(FIXTURES / "metamer", other)


def test_an_old_robustness_table_loads_with_its_values():
    want = expected("robustness")
    t = attacks.RobustnessTable.load(FIXTURES / "robustness")
    assert (t.rows, t.conditions, t.settings) == (want["rows"], want["conditions"], want["settings"])
    assert t.column("tiny", "clean") == want["rows"][0]["clean"] and "| tiny |" in t.markdown()


def test_an_old_readout_loads_with_its_values_and_predicts_the_same(tiny):
    want = expected("readout")
    r = Readout.load(FIXTURES / "readout" / "v4sites")
    assert (r.layer, r.sites, r.info) == (want["layer"], want["sites"], want["info"])
    assert r.info["weights_sha256"] == tiny.weights_digest()
    same_digests({k: getattr(r, k) for k in ("weight", "bias", "site_mean", "site_std")},
                 {k: v for k, v in want["tensors"].items() if k != "prediction"})
    images = synth.render(20, "val", synth.World(size=32)).tensor()
    torch.testing.assert_close(r(features(tiny, images, "V4")), torch.tensor(want["prediction"]), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ the new format
def _sidecar(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_kind_round_trips_through_one_record_format(tiny, tmp_path):
    r = Result.load(FIXTURES / "result")
    paths = r.save(tmp_path / "r")
    back = Result.load(tmp_path / "r", tiny)
    assert all(torch.equal(getattr(back, k), getattr(r, k)) for k in ("images", "history", "scores", "best"))
    assert back.metadata == r.metadata and Image.open(paths[1]).text["phosphene:index"] == "1"

    a = attacks.AttackResult.load(FIXTURES / "attack")
    paths = a.save(tmp_path / "a")
    back = attacks.AttackResult.load(tmp_path / "a", tiny)
    assert all(torch.equal(getattr(back, k), getattr(a, k)) for k in ("adversarial", "success", "distance", "eps"))
    names = [p.relative_to(tmp_path / "a").as_posix() for p in paths]
    assert names == _sidecar(tmp_path / "a" / "attack.json")["files"] and names[-1] == "eps_4-255/adv_001.png"

    m = metamers.MetamerResult.load(FIXTURES / "metamer")
    paths = m.save(tmp_path / "m")
    back = metamers.MetamerResult.load(tmp_path / "m", tiny)
    assert [p.name for p in paths] == ["first.png", "second.png"] and not (tmp_path / "m" / "references.pt").exists()
    assert torch.equal(back.references, m.references) and torch.equal(back.images, m.images)
    assert all(torch.equal(back.stats[s][k], m.stats[s][k]) for s in m.stats for k in m.stats[s])

    t = attacks.RobustnessTable.load(FIXTURES / "robustness")
    t.save(tmp_path / "t")
    back = attacks.RobustnessTable.load(tmp_path / "t")
    assert (back.rows, back.conditions, back.settings) == (t.rows, t.conditions, t.settings)

    ro = Readout.load(FIXTURES / "readout" / "v4sites.pt")
    assert ro.save(tmp_path / "ro" / "v4.sites") == tmp_path / "ro" / "v4.pt"  # PATH.pt beside PATH.json, as before
    back = Readout.load(tmp_path / "ro" / "v4")
    assert torch.equal(back.weight, ro.weight) and back.info == ro.info

    digest = tiny.weights_digest()
    for side, kind, weights in ((tmp_path / "r" / "result.json", "result", digest),
                                (tmp_path / "a" / "attack.json", "attack", digest),
                                (tmp_path / "m" / "metamers.json", "metamers", digest),
                                (tmp_path / "t" / "robustness.json", "robustness", None),
                                (tmp_path / "ro" / "v4.json", "readout", digest)):
        s = _sidecar(side)
        assert s["kind"] == kind and s["format"] >= 1 and s["weights_sha256"] == weights, side
        assert (s["tensors_sha256"] is None) == (kind == "robustness"), side
    for pt in tmp_path.rglob("*.pt"):
        assert isinstance(torch.load(pt, weights_only=True), dict)
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_helper_refuses_another_kind_a_newer_format_and_a_foreign_pt(tmp_path):
    x = torch.rand(1, 3, 8, 8)
    paths = save_record(tmp_path / "rec", "result", 5, {"x": x}, {"metadata": {"seed": 1}}, weights_sha256="ab",
                        pngs=[("sub/one.png", x[0], {"seed": 1})])
    assert paths == [tmp_path / "sub" / "one.png"] and Image.open(paths[0]).text["phosphene:seed"] == "1"
    tensors, sidecar = load_record(tmp_path / "rec", "result", 5)
    assert torch.equal(tensors["x"], x) and sidecar["metadata"] == {"seed": 1} and sidecar["files"] == ["sub/one.png"]
    assert load_record(tmp_path / "rec", "result", 6)[1]["format"] == 5  # a newer phosphene reads an older record
    with pytest.raises(CheckpointError, match="is a result record, not a attack record"):
        load_record(tmp_path / "rec", "attack", 5)
    with pytest.raises(CheckpointError, match="format 5, newer than this phosphene reads"):
        load_record(tmp_path / "rec", "result", 4)
    with pytest.raises(ConfigError, match="no attack record"):
        load_record(tmp_path / "nothing", "attack", 3)
    with pytest.raises(ConfigError, match="cannot set"):
        save_record(tmp_path / "bad", "result", 5, {}, {"kind": "attack"})
    save_record(tmp_path / "other", "result", 5, {"x": x + 1}, {})
    shutil.copy(tmp_path / "other.pt", tmp_path / "rec.pt")
    with pytest.raises(CheckpointError, match="not the file rec.json was written with"):
        load_record(tmp_path / "rec", "result", 5)
    (tmp_path / "rec.pt").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_record(tmp_path / "rec", "result", 5)
    (tmp_path / "rec.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_record(tmp_path / "rec", "result", 5)
    (tmp_path / "rec.json").write_text(json.dumps({"format": 5}))
    with pytest.raises(CheckpointError, match="names no kind"):
        load_record(tmp_path / "rec", "result", 5)


@pytest.mark.parametrize("kind", ["result", "attack", "metamer", "robustness", "readout"])
def test_each_class_refuses_a_newer_format_and_another_kind(kind, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(FIXTURES / kind, folder)
    side, load = {"result": (folder / "result.json", lambda: Result.load(folder)),
                  "attack": (folder / "attack.json", lambda: attacks.AttackResult.load(folder)),
                  "metamer": (folder / "metamers.json", lambda: metamers.MetamerResult.load(folder)),
                  "robustness": (folder / "robustness.json", lambda: attacks.RobustnessTable.load(folder)),
                  "readout": (folder / "v4sites.json", lambda: Readout.load(folder / "v4sites"))}[kind]
    record = {**_sidecar(side), "kind": "metamers" if kind == "metamer" else kind}  # as the new format names it
    side.write_text(json.dumps({**record, "format": 99}))
    with pytest.raises(CheckpointError, match="newer than this phosphene reads"):
        load()
    side.write_text(json.dumps({**record, "kind": "sheets", "format": 1}))
    with pytest.raises(CheckpointError, match="is a sheets record"):
        load()
