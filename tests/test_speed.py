"""Speed and memory options of the engine (bf16, channels-last, torch.compile, activation checkpointing) and the
batch-size finder: each keeps the run's meaning, says what it did in the metadata, and does what it claims."""
import pytest
import torch

import attacks
import metamers
import synth
from synth import Intervention, max_batch, optimize, synthesize
from synth.engine.memory import SavedTensors, _fits, _largest, step_bytes, weights
from synth.engine.params import Pixels
from synth.errors import CheckpointError, ConfigError, UnknownNameError

OPTIONS = ("precision", "channels_last", "compile", "checkpoint_activations")


def _start(n=3, size=32, seed=1):
    return 0.25 + 0.5 * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _grad(model, x, layer, **options):
    """The pixel gradient of the mean squared response of ``layer``, and the bytes autograd kept for it."""
    x = x.clone().requires_grad_(True)
    with SavedTensors(exclude=weights(model)) as saved:
        a = model.activations(x, layer, **options)[layer]
    g, = torch.autograd.grad(a.square().mean(), x)
    return g, saved.bytes


def test_default_run_records_the_options_and_a_plain_forward(tiny):
    r = optimize(tiny, "IT:2", Pixels(_start()), steps=2, progress=False)
    assert {k: r.metadata[k] for k in OPTIONS} == {"precision": "fp32", "channels_last": False, "compile": False,
                                                    "checkpoint_activations": False}


def test_bf16_runs_the_network_in_bfloat16_and_the_objective_and_step_in_float32(tiny):
    seen = []
    hook = tiny.net.V2.conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        kw = dict(step="sgd", lr=1e-3, steps=1, progress=False)
        half = optimize(tiny, "norm(V4)", Pixels(_start()), precision="bf16", **kw)
        full = optimize(tiny, "norm(V4)", Pixels(_start()), **kw)
    finally:
        hook.remove()
    assert seen[0] == torch.bfloat16 and seen[-1] == torch.float32
    assert half.metadata["precision"] == "bf16"
    assert half.history.dtype == half.scores.dtype == half.activations["V4"].dtype == torch.float32
    assert not torch.equal(half.images, full.images)  # bf16 really ran ...
    steps = [(r.images - _start()).flatten(1) for r in (half, full)]
    assert (torch.cosine_similarity(*steps, dim=1) > 0.97).all()  # ... and the gradient still points the same way


def test_fp16_and_unknown_precisions_are_refused(tiny):
    with pytest.raises(ConfigError, match="bf16"):
        optimize(tiny, "IT:2", Pixels(_start()), steps=1, precision="fp16", progress=False)
    with pytest.raises(UnknownNameError, match="precision"):
        optimize(tiny, "IT:2", Pixels(_start()), steps=1, precision="fp8", progress=False)


def test_channels_last_lays_the_weights_out_for_the_run_only_and_keeps_the_result(tiny):
    conv = tiny.net.V1.conv.weight
    before = conv.data_ptr()
    ran, shared = [], []  # the layout the run's convolution saw; the shared model's meanwhile
    hook = tiny.net.V1.conv.register_forward_hook(  # a fork carries the model's hooks onto its own modules
        lambda m, i, o: ran.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
    try:
        r = optimize(tiny, "IT:2", Pixels(_start()), steps=6, channels_last=True, progress=False,
                     callback=lambda t, n: shared.append(conv.is_contiguous() and conv.data_ptr() == before))
        plain = optimize(tiny, "IT:2", Pixels(_start()), steps=6, progress=False)
    finally:
        hook.remove()
    assert ran[:6] == [True] * 6 and shared == [True] * 6 and r.metadata["channels_last"] is True
    assert conv.data_ptr() == before and conv.is_contiguous()  # the very tensor it had, in its own layout
    assert r.activations["IT"].is_contiguous()
    assert torch.allclose(r.images, plain.images, atol=1e-5) and torch.allclose(r.history, plain.history, atol=1e-5)


def test_a_compiled_forward_gives_the_eager_run_also_while_modules_are_patched(tiny):
    grey = torch.full((2, 3, 32, 32), 0.5)  # IT:1 is silent at grey: only a redirected ReLU's gradient moves it
    dead = optimize(tiny, "IT:1", Pixels(grey), steps=2, compile="aot_eager", progress=False)
    assert (dead.history == 0).all()  # compiled with the plain ReLUs
    kw = dict(steps=6, relu_override=3, progress=False)  # redirected ReLUs for 3 steps, then the plain ones
    eager = optimize(tiny, "IT:1", Pixels(grey), **kw)
    compiled = optimize(tiny, "IT:1", Pixels(grey), compile="aot_eager", **kw)  # must not reuse the plain graph
    assert (eager.history[-1] > 0).all()
    assert compiled.metadata["compile"] == "aot_eager"
    assert torch.allclose(compiled.images, eager.images, atol=1e-6)
    assert torch.allclose(compiled.history, eager.history, atol=1e-6)
    with pytest.raises(UnknownNameError, match="torch.compile backend"):
        optimize(tiny, "IT:1", Pixels(grey), steps=1, compile="no-such-backend", progress=False)


@pytest.mark.parametrize("layer", ["IT", "logits"])
def test_checkpointed_activations_give_the_same_gradients_from_fewer_saved_bytes(tiny, layer):
    x = _start(4)
    g, kept = _grad(tiny, x, layer)
    g_ck, kept_ck = _grad(tiny, x, layer, checkpoint_activations=True)
    assert torch.allclose(g, g_ck, atol=1e-7) and g.abs().max() > 0
    assert kept_ck < kept / 3
    run = optimize(tiny, f"norm({layer})", Pixels(x), steps=5, progress=False)
    run_ck = optimize(tiny, f"norm({layer})", Pixels(x), steps=5, checkpoint_activations=True, progress=False)
    assert torch.allclose(run.images, run_ck.images, atol=1e-6) and torch.allclose(run.grad_norm, run_ck.grad_norm)
    assert run_ck.metadata["checkpoint_activations"] is True


def test_a_recomputed_stage_draws_the_same_noise(noisy):
    runs = []
    for recompute in (False, True):  # the noise comes from the run's generator, restored for the recomputation
        runs.append(optimize(noisy, "norm(net.IT)", Pixels(_start()), steps=4, eot=2, progress=False,
                             checkpoint_activations=recompute))
    assert torch.allclose(runs[0].images, runs[1].images, atol=1e-6)
    assert torch.allclose(runs[0].history, runs[1].history, atol=1e-6)


def test_recompute_and_compile_are_refused_where_the_forward_runs_with_hooks(tiny):
    stimulated = tiny.intervene(Intervention("V1", "scale", 0.5))
    for options in ({"checkpoint_activations": True}, {"compile": "eager"}):
        with pytest.raises(ConfigError, match="interventions"):
            optimize(stimulated, "IT:2", Pixels(_start()), steps=1, progress=False, **options)


def test_precision_is_part_of_a_checkpoint_and_layout_and_recompute_are_not(tiny, tmp_path):
    path = tmp_path / "run.pt"
    kw = dict(checkpoint=path, progress=False)
    short = optimize(tiny, "norm(V4)", Pixels(_start()), steps=4, **kw)
    with pytest.raises(CheckpointError, match="precision was 'fp32', now 'bf16'"):
        optimize(tiny, "norm(V4)", Pixels(_start()), steps=8, precision="bf16", **kw)
    longer = optimize(tiny, "norm(V4)", Pixels(_start()), steps=8, channels_last=True, checkpoint_activations=True,
                      **kw)
    assert torch.equal(longer.history[:4], short.history)
    blob = torch.load(path, weights_only=True)  # a checkpoint of the format that drew noise from the global generator
    blob["format"] = 1
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="older phosphene"):
        optimize(tiny, "norm(V4)", Pixels(_start()), steps=8, **kw)


def test_front_ends_pass_the_options_to_the_engine(tiny):
    s = synthesize(tiny, "IT:2", size=32, steps=2, transforms=None, progress=False, precision="bf16",
                   channels_last=True)
    assert s.metadata["precision"] == "bf16" and s.metadata["channels_last"] is True
    x, kw = _start(4), dict(eps=[2 / 255, 8 / 255], steps=5, progress=False)
    plain, recomputed = attacks.pgd(tiny, x, **kw), attacks.pgd(tiny, x, checkpoint_activations=True, **kw)
    assert recomputed.metadata["checkpoint_activations"] is True
    assert torch.allclose(plain.adversarial, recomputed.adversarial, atol=1e-6)
    m = metamers.generate(tiny, x[:2], "V2", steps=3, retries=0, null=_start(8, seed=2), progress=False,
                          checkpoint_activations=True)
    assert m.run.metadata["checkpoint_activations"] is True


def test_max_batch_is_the_largest_batch_within_a_memory_budget(tiny):
    per_image = step_bytes(tiny, "IT:2", 2, size=32) - step_bytes(tiny, "IT:2", 1, size=32)
    budget = step_bytes(tiny, "IT:2", 6, size=32) + per_image // 2
    found = max_batch(tiny, "IT:2", size=32, memory=budget)
    assert found == 6
    assert step_bytes(tiny, "IT:2", found, size=32) <= budget < step_bytes(tiny, "IT:2", found + 1, size=32)
    assert max_batch(tiny, "IT:2", size=32, memory=budget, checkpoint_activations=True) > 2 * found
    with pytest.raises(ConfigError, match="more than the budget"):
        max_batch(tiny, "IT:2", size=32, memory=per_image // 2)


def test_the_batch_search_gallops_then_bisects_and_stays_within_its_limit():
    calls = []

    def fits(b):
        calls.append(b)
        return b <= 37

    assert _largest(fits, 1000) == 37 and len(calls) <= 2 * 10  # about log2(limit) trials each way
    calls.clear()
    assert _largest(fits, 1000, guess=300) == 37 and len(calls) <= 2 * 10  # an estimate too high walks down
    assert _largest(fits, 20) == 20 and _largest(lambda b: True, 1) == 1
    with pytest.raises(ConfigError, match="not even one"):
        _largest(lambda b: False, 64)


def test_a_trial_step_that_runs_out_of_device_memory_does_not_fit(tiny, monkeypatch):
    def step(model, objective, batch, size=None, **engine):
        if batch > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return batch

    monkeypatch.setattr(synth.engine.memory, "step_bytes", step)
    assert _largest(lambda b: _fits(tiny, "IT:2", b, 32, {}), 64) == 5
