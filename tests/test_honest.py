"""Honest results: every figure a result reports is true of the images it returns; two runs side by side give
what each gives alone; a checkpoint resumes only its own run; a saved result loads only against its weights; and
a run owns its randomness, whatever torch's and numpy's global generators hold."""
import threading

import numpy as np
import pytest
import torch

import attacks
import metamers
import microstim
import synth
from attacks.common import logits as verdict_logits
from synth import Box, LpBall, optimize
from synth.engine.objectives import CrossEntropy, Match, parse
from synth.engine.params import Pixels
from synth.engine.results import Result
from synth.errors import CheckpointError
from synth.neuro.subject import Subject


@pytest.fixture(scope="module")
def vone():
    return synth.load_model("toy-vone", device="cpu")


def _images(n, size=64, seed=0):
    return synth.render(n, "test", start=100 + seed).tensor()[..., :size, :size].contiguous()


def _fresh(model, objective, images):
    """The objective measured anew on images: a plain forward pass, no transform."""
    objective = parse(objective).resolve(model)
    with torch.no_grad():
        return objective(model.activations(images, objective.layers))


# ------------------------------------------------------------------------------------- scores on the images
def test_synthesis_reports_the_scores_of_the_images_it_returns_not_of_a_transformed_copy(toy_standard):
    r = synth.synthesize(toy_standard, "IT:12", n=3, steps=4, seed=0, target=1e9, progress=False)
    torch.testing.assert_close(r.scores, _fresh(toy_standard, "IT:12", r.images), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r.best_scores, _fresh(toy_standard, "IT:12", r.best), rtol=1e-5, atol=1e-5)
    assert (r.best_scores >= r.scores - 1e-6).all()  # the best iterate is chosen on the same, untransformed score
    acts = toy_standard.activations(r.images, "IT")["IT"]
    torch.testing.assert_close(r.activations["IT"], acts, rtol=1e-5, atol=1e-5)
    assert not r.success.any()  # judged on the images: none reaches an unreachable target
    # history holds what each step's images scored themselves: the last step's images are the returned ones
    # moved by one more step, so its row is close to, but measured like, the final scores
    assert r.history.shape == (4, 3) and torch.isfinite(r.history).all()


def test_evolution_reports_the_scores_of_its_final_population(tiny):
    r = synth.evolve(tiny, "IT:1", population=8, generations=3, size=32, seed=0, progress=False)
    torch.testing.assert_close(r.scores, _fresh(tiny, "IT:1", r.images), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r.best_scores, _fresh(tiny, "IT:1", r.best), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["toy-standard", "toy-vone"])
def test_pgd_reports_the_verdicts_and_losses_of_its_adversarial_images(name, toy_standard, vone):
    model = toy_standard if name == "toy-standard" else vone
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    eot = 2 if model.stochastic else 1
    r = attacks.pgd(model, x, y, eps=["1/255", "4/255"], steps=4, eot=eot, seed=5, progress=False)
    z = verdict_logits(model, r.adversarial.flatten(0, 1), eot, seed=5).view(2, 4, -1)
    assert torch.equal(r.predictions, z.argmax(-1))
    assert torch.equal(r.success, z.argmax(-1) != y)
    loss = torch.stack([CrossEntropy("logits", y).score({"logits": z[k]}) for k in range(2)])
    torch.testing.assert_close(r.scores, loss, rtol=1e-5, atol=1e-5)


def test_a_site_attack_reports_the_responses_of_its_images(toy_standard):
    x = _images(3)
    r = attacks.site_attack(toy_standard, x, "IT:12", eps=["2/255"], steps=4, progress=False)
    torch.testing.assert_close(r.scores[0], _fresh(toy_standard, "IT:12", r.adversarial[0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r.clean_scores, _fresh(toy_standard, "IT:12", x), rtol=1e-5, atol=1e-5)


def test_metamers_report_the_error_of_the_images_they_return(tiny):
    refs = _images(2, 32)
    null = _images(16, 32, seed=7)
    m = metamers.generate(tiny, refs, "V4", steps=12, null=null, retries=0, progress=False)
    with torch.no_grad():
        a = tiny.activations(m.images, "V4")["V4"]
        target = tiny.activations(refs, "V4")["V4"]
    torch.testing.assert_close(m.stats["V4"]["nse"], metamers.nse(a.flatten(1), target.flatten(1)), rtol=1e-4,
                               atol=1e-6)
    torch.testing.assert_close(m.run.scores, Match("V4", target, metric="normalized").score({"V4": a}), rtol=1e-4,
                               atol=1e-6)


# ------------------------------------------------------------------------------------- one model, many users
def test_a_stimulation_metamer_and_layout_change_in_one_thread_do_not_reach_a_synthesis_in_another(toy_topo):
    """The explorer's situation: one cached model, many sessions.  While one thread stimulates the sheet, runs a
    metamer (surrogate and fake-ReLU backward passes) and a channels-last run on the same model object, another
    thread's synthesis gives exactly the images it gives alone."""
    model = toy_topo
    run = lambda: synth.synthesize(model, "IT:5", n=2, steps=6, seed=1, progress=False)
    alone = run()
    sheet = synth.zoo.sheets.sheet_of(model, "IT")
    stim = microstim.microstimulation(sheet, (sheet.size_mm / 2, sheet.size_mm / 2), 200.0)
    busy, stop, errors = threading.Event(), threading.Event(), []
    x = _images(4)

    def meddle():
        try:
            while not stop.is_set():
                with torch.no_grad():
                    model.intervene(stim)(x)
                busy.set()
                metamers.generate(model, x[:1], "V4", steps=3, null=x, retries=0, progress=False)
                synth.synthesize(model, "IT:7", steps=2, channels_last=True, progress=False)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            busy.set()

    other = threading.Thread(target=meddle)
    other.start()
    busy.wait(60)
    try:
        beside = [run() for _ in range(2)]
    finally:
        stop.set()
        other.join()
    assert not errors, errors
    for r in beside:
        assert torch.equal(r.images, alone.images) and torch.equal(r.history, alone.history)
    assert model.interventions == [] and not model.readouts


def test_two_noisy_runs_side_by_side_each_draw_their_own_noise(vone):
    x, y = _images(2), torch.tensor([0, 5])
    attack = lambda seed: attacks.pgd(vone, x, y, eps="2/255", steps=2, eot=2, seed=seed, progress=False)
    alone = {s: attack(s) for s in (1, 2)}
    out: dict[int, list] = {1: [], 2: []}
    threads = [threading.Thread(target=lambda s=s: out[s].append(attack(s))) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in (1, 2):
        for r in out[s]:
            assert torch.equal(r.adversarial, alone[s].adversarial) and torch.equal(r.scores, alone[s].scores)


def test_readouts_belong_to_the_model_they_are_attached_to_and_a_second_one_keeps_the_first(toy_standard):
    images = _images(40)
    session = toy_standard.fork()
    responses = synth.neuro.readouts.Responses([str(i) for i in range(40)],
                                         synth.neuro.readouts.features(toy_standard, images, "V4", pooled=True)[:, :6]
                                         .numpy(), [f"s{i}" for i in range(6)])
    first = synth.fit_readout(session, images, responses, "V4", method="ridge")
    second = synth.fit_readout(session, images, synth.neuro.readouts.Responses(responses.image_ids,
                                                                         responses.values[:, ::-1].copy(),
                                                                         responses.sites), "V4", method="ridge")
    a, b = session.add_readout(first), session.add_readout(second)
    assert a != b and {a, b} <= set(session.readouts) and session.add_readout(first) == a
    assert not toy_standard.readouts and a not in toy_standard.layers  # the shared model never sees them
    with torch.no_grad():
        sa, sb = (session.activations(images[:4], name)[name] for name in (a, b))
    torch.testing.assert_close(sa, sb.flip(1), rtol=1e-4, atol=1e-4)  # the reversed sites, through the other readout
    stranger = synth.load_model("toy-robust", device="cpu")
    with pytest.raises(CheckpointError, match="weights"):
        stranger.add_readout(first)


# ------------------------------------------------------------------------------------- a resumed run is the same run
def _refused(tmp_path, first, second):
    path = tmp_path / "run.pt"
    first(path)
    with pytest.raises(CheckpointError, match="belongs to another run"):
        second(path)


def test_a_checkpoint_does_not_resume_around_another_ball_centre(tiny, tmp_path):
    x0 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(0.1, 0.9)
    run = lambda c: lambda path: optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(c, 4 / 255), Box()],
                                          step="sign", lr=1 / 255, steps=4, checkpoint=path, checkpoint_every=2,
                                          progress=False)
    _refused(tmp_path, run(x0), run(x0 + 0.01))


def test_a_checkpoint_does_not_resume_with_other_per_image_budgets_or_step_sizes(tiny, tmp_path):
    x0 = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(0.1, 0.9)
    eps = torch.tensor([1.0, 4.0, 8.0]) / 255

    def run(e, lr):
        return lambda path: optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(x0, e), Box()], step="sign",
                                     lr=lr, steps=4, checkpoint=path, checkpoint_every=2, progress=False)

    swapped = eps[[0, 2, 1]]  # the same range, other budgets per image
    _refused(tmp_path / "eps", run(eps, eps / 4), run(swapped, eps / 4))
    _refused(tmp_path / "lr", run(eps, eps / 4), run(eps, swapped / 4))


@pytest.mark.parametrize("change", ["surrogate", "fake_relu"])
def test_a_metamer_checkpoint_does_not_resume_under_other_gradient_settings(tiny, tmp_path, change):
    refs, null = _images(2, 32), _images(16, 32, seed=7)
    run = lambda on: lambda path: metamers.generate(tiny, refs, "V4", steps=4, null=null, retries=0, checkpoint=path,
                                                    checkpoint_every=2, progress=False, **{change: on})
    _refused(tmp_path, run(True), run(False))


def _subject(model, seed):
    calibration = torch.rand(60, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return Subject(model, "IT", calibration, n_sites=4, seed=seed)


class Killed(Exception):
    """Stands for a run killed from outside."""


def test_evolution_against_a_subject_resumes_bit_for_bit_and_refuses_another_subject(tiny, tmp_path):
    subject = _subject(tiny, 0)

    def run(path, kill_at=None, who=subject):
        def watch(t, images, scores):
            if t == kill_at:
                raise Killed

        return synth.evolve(who, 0, population=6, generations=9, size=32, repeats=2, seed=4, checkpoint=path,
                            checkpoint_every=3, watch=watch, progress=False)

    whole = run(tmp_path / "whole.pt")
    with pytest.raises(Killed):
        run(tmp_path / "killed.pt", kill_at=7)  # the checkpoint holds generations 1-6 and 12 presentations
    assert torch.load(tmp_path / "killed.pt", weights_only=True)["objective"] == {"calls": 6}
    resumed = run(tmp_path / "killed.pt")
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.history, whole.history)
    assert torch.equal(resumed.best_scores, whole.best_scores)
    with pytest.raises(CheckpointError, match="belongs to another run"):
        run(tmp_path / "whole.pt", who=_subject(tiny, 1))  # other sites of the same model


# ------------------------------------------------------------------------------------- weights that cannot be skipped
def test_every_result_records_the_weights_digest_and_refuses_other_weights(tiny, tmp_path):
    other = synth.load_model(type(tiny.net)(8, (8, 16, 16, 32)), device="cpu", name="tiny", classes=tiny.classes)
    assert tiny.info["weights"] == other.info["weights"] == "as passed"  # nothing but the weights tells them apart
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r = synth.synthesize(tiny, "IT:1", n=1, size=32, steps=2, progress=False)
    a = attacks.pgd(tiny, x, [0, 1], eps="2/255", steps=2, progress=False)
    assert r.metadata["weights_sha256"] == a.metadata["weights_sha256"] == tiny.weights_digest()
    r.save(tmp_path / "r")
    a.save(tmp_path / "a")
    with pytest.raises(CheckpointError, match="load the model it was made with"):
        Result.load(tmp_path / "r", other)
    with pytest.raises(CheckpointError, match="load the model it was made with"):
        attacks.AttackResult.load(tmp_path / "a", other)
    assert torch.equal(attacks.AttackResult.load(tmp_path / "a", tiny).adversarial, a.adversarial)


# ------------------------------------------------------------------------------------- randomness the run owns
def _global_state():
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy()


def _owned(call):
    """``call``'s output under two different global generator states, checking it leaves each state as it was."""
    outs = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        np.random.seed(seed)
        before = _global_state()
        outs.append(call())
        after = _global_state()
        assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]), "the global state moved"
    return outs


def test_noisy_runs_give_the_same_result_whatever_the_global_generators_hold_and_leave_them_alone(vone):
    x, y = _images(2), torch.tensor([0, 5])
    for call in (lambda: synth.synthesize(vone, "IT:3", n=1, steps=2, eot=2, progress=False).images,
                 lambda: attacks.pgd(vone, x, y, eps="2/255", steps=2, eot=2, progress=False).adversarial,
                 lambda: metamers.generate(vone, x[:1], "V1", steps=2, null=x, retries=0, progress=False).images,
                 lambda: verdict_logits(vone, x, 4)):
        a, b = _owned(call)
        assert torch.equal(a, b)
    assert vone.stochastic  # the model really draws noise: a second pass with another seed differs
    first, second = (verdict_logits(vone, x, 1, seed=s) for s in (0, 1))
    assert not torch.equal(first, second)


def test_corruptions_draw_from_their_own_seeds_not_the_callers_generator():
    from attacks.robustness import _corrupt_job

    images = (_images(2).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    a, b = _owned(lambda: torch.from_numpy(_corrupt_job((images, "gaussian_noise", 3, 0))))
    assert torch.equal(a, b) and not torch.equal(a, torch.from_numpy(images))
