"""Model metamers: the criterion's statistics, generation on the engine, resuming, saving, the CLI, the experiment."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

import metamers
import synth
from metamers.recognize import Recognizability, recognizability
from synth.cli import main
from synth.engine.criteria import Where
from synth.engine.gradients import last_relu, patched_backward
from synth.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def refs():
    return synth.render(4, "test", start=40).tensor()


@pytest.fixture(scope="module")
def null():
    return synth.render(32, "val").tensor()


def test_spearman_with_ties_and_nse_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 50, generator=g).clamp_min(0)  # ReLU-like: many tied zeros
    b = torch.randn(3, 50, generator=g).clamp_min(0)
    ours = metamers.spearman(a, b)
    for i in range(3):
        assert abs(float(ours[i]) - spearmanr(a[i].numpy(), b[i].numpy()).statistic) < 1e-5
    torch.testing.assert_close(metamers.nse(a, b), ((a - b).pow(2).sum(1) / b.pow(2).sum(1)))
    null = metamers.Null.measure(a, torch.cat([a[:1], b]), "L")  # the first reference is also in the null set
    assert null.max_rho[0] < 1 and null.min_nse[0] > 0           # ... and is not compared with itself


def test_a_tie_with_the_null_sets_best_rank_order_passes_but_a_worse_order_does_not():
    ref = torch.arange(1.0, 9.0)[None]                    # 8 units, as the embedded models' logits
    null = metamers.Null.measure(ref, torch.stack([ref[0] ** 2, ref[0].flip(0)]), "logits")
    assert float(null.max_rho[0]) == pytest.approx(1.0)  # a null image with the reference's rank order
    close = ref * 1.001                                   # the same order, far closer than that null image
    swapped = close[:, [1, 0, 2, 3, 4, 5, 6, 7]]          # two units swapped: rank order worse than the null's
    assert metamers.judge(close, ref, null)["criterion"].all()
    assert not metamers.judge(swapped, ref, null)["criterion"].any()


def test_the_criterion_fails_for_random_images_and_passes_for_metamers(toy_standard, refs, null):
    noise = torch.rand(refs.shape, generator=torch.Generator().manual_seed(1))
    judged = metamers.judge_all(toy_standard, noise, refs, "IT", null)
    assert not judged["IT"]["criterion"].any() and not judged["IT"]["passed"].any()
    r = metamers.generate(toy_standard, refs, "IT", steps=300, stop="criterion", null=null, progress=False)
    s = r.stats["IT"]
    assert s["criterion"].all()
    assert (s["spearman"] > s["null_max_spearman"]).all() and (s["nse"] < s["null_min_nse"]).all()
    assert max(r.metadata["steps_each"]) < 300  # each metamer stopped as soon as it passed
    assert set(r.stats) == {"V1", "V2", "V4", "IT", "logits"}  # judged at every stage
    assert r.metadata["fake_relu"] == "IT.nonlin" and r.metadata["objective"].startswith("match(IT, target='sha256:")


@pytest.mark.slow
def test_the_default_rule_stops_each_metamer_at_the_error_target(toy_standard, refs, null):
    r = metamers.generate(toy_standard, refs, "V2", steps=800, null=null, progress=False)
    s = r.stats["V2"]
    assert r.passed.all() and (s["error"] <= 0.05 + 1e-4).all() and s["criterion"].all()
    assert max(r.metadata["steps_each"]) < 800 and len(set(r.metadata["steps_each"])) > 1  # each stops on its own
    assert "fading" in r.metadata["surrogate"]


def test_failed_metamers_are_retried_and_kept_only_where_the_retry_is_better(tiny, refs, null):
    x, n32 = refs[:, :, :32, :32].contiguous(), null[:, :, :32, :32].contiguous()
    once = metamers.generate(tiny, x, "V4", steps=15, null=n32, retries=0, progress=False)
    seen = []
    again = metamers.generate(tiny, x, "V4", steps=15, null=n32, retries=1, progress=False,
                              watch=lambda t, images, scores: seen.append((t, len(images))))
    assert not once.passed.all() and once.metadata["retried"] == {}
    ts = [t for t, _ in seen]
    restarts = [i for i in range(1, len(ts)) if ts[i] == 0]  # the retry's steps are watched too
    assert len(restarts) == 1 and ts[:restarts[0]] == list(range(restarts[0])) and seen[0][1] == len(x)
    retried = [int(i) for i in again.metadata["retried"]]
    assert retried and all(v == {"lr": pytest.approx(once.metadata["lr"] / 3), "seed": 1}
                           for v in again.metadata["retried"].values())
    e0, e1 = once.stats["V4"]["error"], again.stats["V4"]["error"]
    for i in range(len(x)):
        if i in retried:
            assert e1[i] < e0[i] and not torch.equal(again.images[i], once.images[i])
        else:  # a metamer that passed, or whose retry was no better, is the first run's
            assert torch.equal(again.images[i], once.images[i]) and e1[i] == pytest.approx(float(e0[i]))
    assert again.run.history.shape[1] == again.run.grad_norm.shape[1] == len(x)
    assert torch.allclose(again.rescore(tiny, n32)["V4"]["error"], e1)  # the stats judge the merged images


def test_a_resumed_metamer_run_equals_an_uninterrupted_one(tiny, refs, null, tmp_path):
    x = refs[:2, :, :32, :32].contiguous()
    n32 = null[:, :, :32, :32].contiguous()

    class Killed(Exception):
        pass

    def run(kill_at, path):
        calls = [0]

        def rule(scores, acts):
            calls[0] += 1
            if calls[0] == kill_at:
                raise Killed
            return torch.zeros(scores.shape[0], dtype=torch.bool)

        return metamers.generate(tiny, x, "V2", steps=30, stop=Where(rule, "never"), null=n32, checkpoint=path,
                                 checkpoint_every=10, progress=False)

    whole = run(None, tmp_path / "a.pt")
    with pytest.raises(Killed):
        run(25, tmp_path / "b.pt")
    resumed = run(None, tmp_path / "b.pt")
    assert torch.equal(whole.images, resumed.images) and torch.equal(whole.run.history, resumed.run.history)


@pytest.mark.slow  # four short runs
def test_with_the_plateau_decay_a_larger_budget_runs_the_same_steps(tiny, refs, null):
    x, n32 = refs[:2, :, :32, :32].contiguous(), null[:, :, :32, :32].contiguous()
    never = Where(lambda scores, acts: torch.zeros(scores.shape[0], dtype=torch.bool), "never")
    def run(n: int, schedule: str):
        return metamers.generate(tiny, x, "V2", steps=n, stop=never, null=n32, retries=0, lr_schedule=schedule,
                                 progress=False)

    short, long = run(60, "plateau"), run(120, "plateau")
    # every clock counts steps (each image's decay, the surrogate's sharpening): the first 60 steps are the same
    assert torch.equal(short.run.history, long.run.history[:60])
    assert not torch.equal(long.run.history[59], long.run.history[-1])  # and the longer run went on
    fixed_short, fixed_long = run(60, "step"), run(120, "step")  # Feather's: a step halves at budget fractions
    assert not torch.equal(fixed_short.run.history, fixed_long.run.history[:60])


def test_results_save_load_check_weights_and_rescore(tiny, refs, null, tmp_path):
    x, n32 = refs[:2, :, :32, :32].contiguous(), null[:, :, :32, :32].contiguous()
    r = metamers.generate(tiny, x, "V4", steps=20, null=n32, names=["boat", "face"], progress=False)
    paths = r.save(tmp_path)
    assert [p.name for p in paths] == ["boat.png", "face.png"]
    meta = json.loads(Image.open(paths[0]).text["phosphene"])
    assert meta["stage"] == "V4" and meta["model"] == "tiny" and "seed" in meta and meta["steps"] == 20
    back = metamers.MetamerResult.load(tmp_path, tiny)
    assert torch.equal(back.images, r.images) and back.run.activations["V4"].shape == (2, 16, 4, 4)
    torch.testing.assert_close(back.stats["V4"]["error"], r.stats["V4"]["error"])
    torch.testing.assert_close(back.rescore(tiny, n32)["V4"]["error"], r.stats["V4"]["error"], atol=1e-2, rtol=0)
    other = synth.load_model(type(tiny.net)(8, (8, 16, 16, 32)), device="cpu", name="tiny", classes=tiny.classes)
    assert r.metadata["weights_sha256"] == tiny.weights_digest() != other.weights_digest()
    with pytest.raises(CheckpointError, match="weights"):  # the same name and architecture, other weights
        metamers.MetamerResult.load(tmp_path, other)
    with pytest.raises(CheckpointError, match="weights"):
        back.rescore(other, n32)


def test_options_and_bad_input(tiny, refs, null):
    x, n32 = refs[:2, :, :32, :32].contiguous(), null[:8, :, :32, :32].contiguous()
    r = metamers.generate(tiny, x, "V2", steps=5, null=n32, range_penalty=0.1, coarse_to_fine=True, progress=False)
    assert "outside(input)" in r.metadata["objective"] and r.metadata["parametrization"].startswith("blurred")
    assert r.metadata["constraints"] == [] and 0 <= float(r.images.min()) and float(r.images.max()) <= 1
    with pytest.raises(ConfigError, match="pixels"):
        metamers.generate(tiny, x, "input", steps=1, null=n32, progress=False)
    with pytest.raises(synth.UnknownNameError, match="IT"):
        metamers.generate(tiny, x, "ITT", steps=1, null=n32, progress=False)
    with pytest.raises(synth.ImageError):
        metamers.generate(tiny, x * 255, "V2", steps=1, null=n32, progress=False)


def test_fake_relu_passes_gradient_through_silent_units(tiny):
    from collections import OrderedDict
    stage = torch.nn.Sequential(OrderedDict(conv=torch.nn.Linear(4, 4), nonlin=torch.nn.ReLU(inplace=True)))
    net = torch.nn.Sequential(OrderedDict(IT=stage))
    torch.nn.init.constant_(stage.conv.bias, -10.0)  # every unit silent
    x = torch.rand(2, 4, requires_grad=True)

    def grad():
        x.grad = None
        (net(x) - 1.0).pow(2).sum().backward()  # each unit is asked to reach 1
        return x.grad.abs().sum()

    assert grad() == 0
    with patched_backward(net, modules={(name := last_relu(net, "IT")): "identity"}):
        assert grad() > 0 and torch.equal(net(x), torch.zeros(2, 4))  # same forward, gradient gets through
    assert name == "IT.nonlin" and grad() == 0 and stage.nonlin.inplace
    with patched_backward(tiny.net, modules={(name := last_relu(tiny.net, "V4")): "identity"}):
        assert name == "V4.nonlin"


def test_without_noise_makes_a_stochastic_model_deterministic_and_leaves_the_model_noisy():
    vone = synth.load_model("toy-vone", device="cpu")
    x = synth.render(2, "test").tensor()
    quiet = vone.without_noise()
    with torch.no_grad():
        a, b = quiet(x), quiet(x)
        c, d = vone(x), vone(x)
    assert vone.has_noise and not quiet.has_noise and torch.equal(a, b) and not torch.equal(c, d)
    assert vone.stochastic and not quiet.stochastic and quiet.weights_digest() == vone.weights_digest()


def _write(path, mode="RGB", size=(24, 24)):
    arr = np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray((arr[..., 0].astype(np.uint16) * 257))
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def test_cli_writes_one_metamer_per_input_and_refuses_bad_files(tmp_path, capsys):
    files = [str(_write(tmp_path / f"{m.replace(';', '')}.png" if m != "CMYK" else tmp_path / "cmyk.jpg", m))
             for m in ("RGB", "P", "RGBA", "CMYK", "I;16")]
    out = tmp_path / "out"
    code = main(["metamer", *files, "--model", "toy-standard", "--stage", "logits", "--steps", "40",
                 "--out", str(out)])
    assert code == 0
    written = sorted(p.name for p in out.glob("*.png") if p.name != "sheet.png")
    assert min(Image.open(out / "sheet.png").size) >= 750  # large enough to look at, its title not clipped
    assert written == sorted(f"{n}_logits.png" for n in ("RGB", "P", "RGBA", "cmyk", "I16"))
    rows = json.loads((out / "metamers.json").read_text())["metamers"]
    assert len(rows) == 5 and all("spearman" in r and "passed" in r for r in rows)
    kept = list(out.glob(".checkpoint-*"))  # gone once every metamer passed; else kept, and the user told why
    said = "`--resume` goes on from it" in capsys.readouterr().out
    assert (not kept and not said) if all(r["passed"] for r in rows) else (kept and said)
    bad = {"empty.png": b"", "text.png": b"not an image at all", "trunc.png": open(files[0], "rb").read()[:60]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)  # 64 M pixels, a few kB on disk
    _write(tmp_path / "dot.png", size=(1, 1))  # a 1×1 image: nothing for a model to see
    for name in [*bad, "bomb.png", "dot.png"]:
        capsys.readouterr()
        code = main(["metamer", str(tmp_path / name), "--model", "toy-standard", "--steps", "2", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and name in err and err.count("\n") == 1 and "Traceback" not in err


def test_recognizability_on_a_reduced_set_resumes_and_reports(tiny, tmp_path):
    from synth.zoo.ventral import AREAS, VentralNet
    torch.manual_seed(1)
    twin = synth.load_model(VentralNet(8, (8, 16, 16, 32)), device="cpu", name="twin", classes=tiny.classes,
                            areas=AREAS, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = synth.render(8, "test").tensor()[:, :, :32, :32].contiguous()
    y = torch.arange(8)
    kw = dict(images=x, labels=y, steps=15, out=tmp_path, progress=False,
              null=synth.render(16, "val").tensor()[:, :, :32, :32].contiguous())
    t = recognizability([tiny, twin], ["V2", "logits"], **kw)
    assert set(t.accuracy) == {"tiny", "twin"} and set(t.accuracy["tiny"]) == {"V2", "logits"}
    cell = t.accuracy["tiny"]["V2"]
    assert set(cell) == {"tiny", "twin"} and all(0 <= v <= 1 for o in cell.values() for v in o.values())
    assert t.headline("tiny", "V2") == cell["twin"]["blur"]  # the headline leaves the generating model out
    for f in ("metamers.md", "recognizability.json", "recognizability.csv", "metamers_examples.png",
              "metamers_recognition.png", "tiny/V2/metamers.json"):
        assert (tmp_path / f).is_file(), f
    before = (tmp_path / "tiny" / "V2" / "metamers.json").stat().st_mtime_ns
    again = recognizability([tiny, twin], ["V2", "logits"], **kw)  # resumes: reuses the saved metamers
    assert (tmp_path / "tiny" / "V2" / "metamers.json").stat().st_mtime_ns == before
    assert again.accuracy == t.accuracy
    doc = json.loads((tmp_path / "recognizability.json").read_text())
    assert Recognizability(**doc).headline("twin", "logits") == t.headline("twin", "logits")


def test_a_stochastic_observer_draws_its_own_noise_and_leaves_the_global_generator_alone():
    from metamers.recognize import observe

    vone = synth.load_model("toy-vone", device="cpu")
    x = synth.render(16, "test").tensor()
    torch.manual_seed(1)
    first = observe(vone, x, 1.0)
    after = torch.rand(3)
    torch.manual_seed(1)
    torch.rand(1000)  # whatever ran before
    assert torch.equal(observe(vone, x, 1.0), first)
    torch.manual_seed(1)
    observe(vone, x, 1.0)
    assert torch.equal(torch.rand(3), after)
