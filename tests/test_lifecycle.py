"""The engine's lifecycle: checkpoints that resume bit for bit, runs that go on, stopping rules and schedules."""
import copy
import functools
import math

import pytest
import torch

import synth
from synth import Box, LpBall, optimize
from synth.engine.criteria import AllOf, Plateau, RelativeError, ScoreAtLeast, Where
from synth.engine.objectives import Match, parse
from synth.engine.params import Fourier, Pixels
from synth.engine.results import Result
from synth.engine.steps import Genetic, StepDecay, schedule
from synth.engine.transforms import standard
from synth.errors import CheckpointError, ConfigError


class Killed(Exception):
    """Stands for a run killed from outside (the machine went down)."""


def _killer(at: int | None):
    """A stopping rule that never stops anything, and raises at its ``at``-th call when ``at`` is given."""
    calls = [0]

    def never(scores, acts):
        calls[0] += 1
        if at is not None and calls[0] == at:
            raise Killed
        return torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)

    return never


def _start(seed=0):
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["adam-fourier", "apgd-ball", "sign-transforms"])
def test_a_killed_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one(tiny, tmp_path, kind):
    x0 = _start()

    def run(at, path):
        kw = dict(steps=23, stop=_killer(at), checkpoint=path, checkpoint_every=5, progress=False, seed=3)
        if kind == "adam-fourier":
            p = Fourier(3, 32, torch.Generator().manual_seed(1))
            return optimize(tiny, "IT:2 + 0.1*diversity(V4)", p, lr=0.05, lr_schedule="cosine", **kw)
        if kind == "apgd-ball":
            return optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(x0, 8 / 255), Box()], step="apgd",
                            lr=torch.full((3,), 16 / 255), random_start=True, **kw)
        return optimize(tiny, "IT:{1,2,3}", Pixels(x0), step="sign", lr=2 / 255, lr_schedule="step",
                        transforms=standard(32), eot=2, **kw)

    whole = run(None, tmp_path / "whole.pt")
    with pytest.raises(Killed):
        run(13, tmp_path / "killed.pt")  # dies during step 13: the checkpoint holds steps 1-10
    blob = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert blob["t"] == 10
    resumed = run(None, tmp_path / "killed.pt")
    assert torch.equal(whole.images, resumed.images)
    assert torch.equal(whole.history, resumed.history)
    assert torch.equal(whole.scores, resumed.scores)
    assert resumed.metadata["steps_run"] == 23


def test_a_run_goes_on_for_more_steps_from_its_final_checkpoint(tiny, tmp_path):
    path = tmp_path / "run.pt"
    kw = dict(lr=0.05, checkpoint=path, progress=False)
    short = optimize(tiny, "norm(V4)", Pixels(_start()), steps=10, **kw)
    again = optimize(tiny, "norm(V4)", Pixels(_start()), steps=10, **kw)  # finished: nothing more to do
    assert torch.equal(short.images, again.images)
    longer = optimize(tiny, "norm(V4)", Pixels(_start()), steps=30, **kw)
    straight = optimize(tiny, "norm(V4)", Pixels(_start()), steps=30, lr=0.05, progress=False)
    assert longer.history.shape == (30, 3) and torch.equal(longer.history[:10], short.history)
    assert torch.equal(longer.images, straight.images)  # a constant schedule: going on = running longer
    assert (longer.scores > short.scores).all()


def test_a_checkpoint_of_another_run_is_refused_and_an_unreadable_one_named(tiny, tmp_path):
    path = tmp_path / "run.pt"
    optimize(tiny, "IT:1", Pixels(_start()), steps=3, checkpoint=path, progress=False)
    with pytest.raises(CheckpointError, match="objective was 'IT:1', now 'IT:2'"):
        optimize(tiny, "IT:2", Pixels(_start()), steps=3, checkpoint=path, progress=False)
    with pytest.raises(CheckpointError, match="seed"):
        optimize(tiny, "IT:1", Pixels(_start()), steps=3, checkpoint=path, seed=9, progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        optimize(tiny, "IT:1", Pixels(_start()), steps=3, checkpoint=bad, progress=False)


def test_evolution_resumes_with_its_generator(tiny, tmp_path):
    def run(at, path):
        gen = torch.Generator().manual_seed(0)
        param = Fourier(12, 32, gen, max_freq=4, sd=2.0)
        return optimize(tiny, "IT:3", param, step=Genetic(param.code, gen, elite=3), steps=12, stop=_killer(at),
                        checkpoint=path, checkpoint_every=4, progress=False)

    whole = run(None, tmp_path / "a.pt")
    with pytest.raises(Killed):
        run(7, tmp_path / "b.pt")
    assert torch.equal(run(None, tmp_path / "b.pt").images, whole.images)


def test_relative_error_plateau_callable_and_all_of(tiny):
    x = _start()
    with torch.no_grad():
        ref = tiny.activations(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)), "V2")["V2"]
    rel = RelativeError("V2", ref, 0.5)
    r = optimize(tiny, Match("V2", ref, metric="normalized"), Pixels(x), steps=300, lr=0.02, stop=rel,
                 progress=False)
    errors = (r.activations["V2"] - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    assert r.success.all() and (errors <= 0.5 + 1e-6).all()
    assert r.metadata["steps_run"] < 300  # every image stopped when it met the target
    assert torch.allclose(r.scores, -errors, atol=1e-5)  # the normalized distance is that error
    # a plateau: a constant objective never improves, so every image stops after `patience` steps
    p = optimize(tiny, "0*norm(V4)", Pixels(x), steps=100, stop=Plateau(patience=7, min_delta=0.0),
                 progress=False)
    assert p.metadata["steps_run"] == 8 and p.success.all()
    # any callable; and AllOf needs both parts
    first = optimize(tiny, "norm(V4)", Pixels(x), steps=50, progress=False).history[0]
    w = optimize(tiny, "norm(V4)", Pixels(x), steps=50, progress=False, stop=lambda s, a: s > 1.5 * first.max())
    assert w.success.all() and w.metadata["steps_run"] < 50 and (w.scores > 1.5 * first.max()).all()
    both = AllOf([ScoreAtLeast(-1e9), Where(lambda s, a: s > 1e9)])
    a = optimize(tiny, "norm(V4)", Pixels(x), steps=5, stop=both, progress=False)
    assert not a.success.any() and a.metadata["steps_run"] == 5
    assert str(ScoreAtLeast(1) & Plateau(5)) == "score >= 1 and plateau(patience=5, min_delta=0.001, relative)"
    with pytest.raises(ConfigError, match="one bool per image"):
        optimize(tiny, "norm(V4)", Pixels(x), steps=2, stop=lambda s, a: s, progress=False)


def test_step_decay_and_caller_optimizers(tiny):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = schedule("step", opt, 80)
    lrs = []
    for _ in range(80):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and lrs[9] == 1.0 and lrs[10] == 0.5 and lrs[79] == 0.5 ** 7
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    s2 = schedule(StepDecay(stages=2, gamma=0.1), opt2, 10)
    for _ in range(5):
        opt2.step()
        s2.step()
    assert math.isclose(opt2.param_groups[0]["lr"], 0.1)
    factory = functools.partial(torch.optim.Adam, lr=0.03, amsgrad=True)
    r = optimize(tiny, "norm(V4)", Pixels(_start()), step=factory, steps=15, progress=False)
    assert r.scores.mean() > r.history[0].mean() and "Adam" in r.metadata["step_rule"]
    with pytest.raises(ConfigError, match="not a torch.optim.Optimizer"):
        optimize(tiny, "norm(V4)", Pixels(_start()), step=lambda p: 3, steps=2, progress=False)


def test_match_and_direction_round_trip_and_results_keep_full_activations(tiny, tmp_path):
    x = _start()
    with torch.no_grad():
        ref = tiny.activations(x, "V4")["V4"]
    m = Match("V4", ref, metric="normalized")
    again = parse(str(m))
    assert torch.equal(again.target, ref) and str(again) == str(m)
    r = optimize(tiny, str(m), Pixels(torch.rand(3, 3, 32, 32)), steps=3, progress=False)
    assert r.activations["V4"].shape == ref.shape  # full maps, not spatial means
    assert r.population("V4").shape == (3, ref.shape[1])
    r.save(tmp_path / "r")
    digest = str(m).split("sha256:")[1][:16]
    from synth.engine import objectives
    del m, again, r
    objectives._TARGETS.pop(digest, None)
    with pytest.raises(ConfigError, match="not loaded"):
        parse(f"match(V4, target='sha256:{digest}', metric=normalized)")
    loaded = Result.load(tmp_path / "r", model=tiny)
    assert torch.equal(parse(loaded.metadata["objective"]).target, ref)  # the saved result makes it known again
    torch.save(ref[0], tmp_path / "t.pt")
    from_file = parse(f"match(V4, target='{tmp_path / 't.pt'}')")
    assert str(from_file) == f"match(V4, target='{tmp_path / 't.pt'}', metric=mse)"
    other = synth.load_model(type(tiny.net)(8, (8, 16, 16, 32)), device="cpu", name="tiny", classes=tiny.classes)
    with pytest.raises(CheckpointError, match="load the model it was made with"):
        Result.load(tmp_path / "r", model=other)  # an in-memory model of the same name and class, other weights
    nudged = copy.deepcopy(tiny)
    weight = next(nudged.parameters())
    kept = weight.detach().clone()
    with torch.no_grad():
        weight[0].add_(1e-3)  # one weight changed in place: the digest follows
    with pytest.raises(CheckpointError, match="load the model it was made with"):
        Result.load(tmp_path / "r", model=nudged)
    with torch.no_grad():
        weight.copy_(kept)
    assert nudged.weights_digest() == tiny.weights_digest()  # restored: the same digest, computed again
    Result.load(tmp_path / "r", model=tiny.fork())  # a fork shares the weights


def test_match_from_an_image_file(tiny, tmp_path):
    from synth.files import write_png
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    write_png(img, tmp_path / "ref.png", {})
    m = parse(f"match(IT, image='{tmp_path / 'ref.png'}', metric=normalized)").resolve(tiny)
    with torch.no_grad():
        a = tiny.activations(((img * 255).round() / 255)[None], "IT")
    assert float(m.score(a)[0]) > -1e-5
    with pytest.raises(ConfigError, match="exactly one of"):
        Match("IT")
