"""The recipes that made the shipped embedded models, runnable again with ``phosphene train NAME``.

Standard training is plain SGD on the embedded training split.  The robust model fine-tunes the standard one
with FGSM plus a random start (Wong, Rice & Kolter 2020, step 1.25 ε) and an ε ramped up over the first
epochs, because adversarial training from scratch stayed near chance on this CPU budget.  Every model is then
verified with a multi-step attack it was not trained against (foolbox LinfPGD-20), so catastrophic
overfitting to the single-step attack cannot hide.  Each run writes the weights and a model card beside them.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .data import SPLITS, ObjectImages, World
from .errors import UnknownNameError
from .files import atomic, sha256, write_text
from .models import IMAGENET_MEAN, IMAGENET_STD, WEIGHTS_DIR, load_model
from .probe import ProbeModel
from .ventral import AREAS, VentralNet


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained embedded model."""

    name: str
    description: str
    init: str | None = None          # fine-tune from this embedded model
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    eps: float = 0.0                 # adversarial training budget (Linf, pixels in [0,1]); 0 = standard training
    eps_ramp_epochs: float = 0.0
    fgsm_step: float = 1.25          # FGSM-RS step as a multiple of eps
    seed: int = 0
    widths: tuple[int, ...] = (32, 64, 128, 256)
    world: dict = field(default_factory=lambda: asdict(World()))
    eval_eps: float = 4 / 255
    eval_steps: int = 20
    eval_n: int = 1000


RECIPES: dict[str, Recipe] = {
    "toy-standard": Recipe("toy-standard", "VentralNet trained with cross-entropy on the embedded object set."),
    "toy-robust": Recipe("toy-robust", "toy-standard fine-tuned adversarially (FGSM + random start, Linf 4/255).",
                         init="toy-standard", epochs=12, lr=0.02, eps=4 / 255, eps_ramp_epochs=2.0),
}


def build(recipe: Recipe) -> ProbeModel:
    """An untrained embedded model with the recipe's architecture."""
    world = World(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.world.items()})
    return ProbeModel(VentralNet(len(world.categories), recipe.widths), name=recipe.name, classes=world.categories,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, areas=AREAS, input_size=world.size)


def accuracy(model: ProbeModel, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of a model on [0,1] images."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(model.device)
            correct += int((model(x).argmax(1).cpu() == labels[i:i + batch_size]).sum())
    return correct / max(1, len(images))


def pgd_accuracy(model: ProbeModel, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 20,
                 batch_size: int = 250) -> float:
    """Accuracy under foolbox's Linf PGD (random start, step 2.5·ε/steps as in Madry et al. 2018)."""
    import foolbox as fb

    model.eval()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = fb.attacks.LinfPGD(steps=steps, rel_stepsize=2.5 / steps, random_start=True)
    robust = 0
    for i in range(0, len(images), batch_size):
        x, y = images[i:i + batch_size].to(model.device), labels[i:i + batch_size].to(model.device)
        _, _, success = attack(fmodel, x, y, epsilons=eps)
        robust += int((~success).sum())
    return robust / max(1, len(images))


def _fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float) -> torch.Tensor:
    """One FGSM step from a uniform random start, through foolbox (a 1-step Linf PGD)."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = fb.attacks.LinfPGD(steps=1, abs_stepsize=step, random_start=True)
    adv, _, _ = attack(fmodel, x, y, epsilons=eps)
    return adv.detach()


def train(name: str, out_dir: str | os.PathLike = WEIGHTS_DIR, workers: int = 2, epochs: int | None = None,
          n_train: int | None = None) -> dict:
    """Run a recipe: render the data, train, evaluate on the test split, write ``NAME.pt`` and ``NAME.json``."""
    if name not in RECIPES:
        raise UnknownNameError("training recipe", name, RECIPES)
    recipe = RECIPES[name]
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    world = World(**recipe.world)
    t0 = time.time()
    train_set = ObjectImages("train", n_train, world, workers=workers, progress=True)
    val_set = ObjectImages("val", None, world, workers=workers, progress=True)
    render_s = time.time() - t0

    model = build(recipe)
    if recipe.init:
        model.net.load_state_dict(load_model(recipe.init, device="cpu").net.state_dict())
    steps_per_epoch = len(train_set) // recipe.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                          weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.epochs * steps_per_epoch,
                                                pct_start=0.15 if not recipe.init else 0.05)
    gen = torch.Generator().manual_seed(recipe.seed)
    history = []
    t1 = time.time()
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{recipe.epochs}", unit="batch")
        loss_sum = correct = seen = 0
        for b in bar:
            idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            x, y = train_set.images[idx], train_set.labels[idx]
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if recipe.eps > 0:
                ramp = min(1.0, (epoch + b / steps_per_epoch) / recipe.eps_ramp_epochs) if recipe.eps_ramp_epochs else 1
                eps = recipe.eps * ramp
                model.eval()  # the attack sees inference behaviour and leaves batch-norm statistics alone
                x = _fgsm_rs(model, x, y, eps, recipe.fgsm_step * eps)
                model.train()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        val = accuracy(model, val_set.images, val_set.labels)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_acc": val})
        print(f"{name} epoch {epoch + 1}: train loss {loss_sum / seen:.3f} acc {correct / seen:.3f}, val acc {val:.3f}")
    train_s = time.time() - t1

    test_set = ObjectImages("test", None, world, workers=workers)
    model.eval()
    test_acc = accuracy(model, test_set.images, test_set.labels)
    sub = slice(0, recipe.eval_n)
    pgd = pgd_accuracy(model, test_set.images[sub], test_set.labels[sub], recipe.eval_eps, recipe.eval_steps)
    weights = out_dir / f"{name}.pt"
    with atomic(weights) as tmp:
        torch.save(model.net.state_dict(), tmp)
    card = {
        "name": name,
        "description": recipe.description,
        "architecture": {"family": "ventralnet", "n_classes": len(world.categories), "widths": list(recipe.widths)},
        "classes": list(world.categories),
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input_size": world.size, "areas": AREAS,
        "weights": weights.name, "sha256": sha256(weights),
        "data": {"world": asdict(world), "n_train": len(train_set), "n_val": len(val_set), "n_test": len(test_set),
                 "splits": SPLITS},
        "recipe": {**asdict(recipe), "command": f"phosphene train {name}"},
        "history": history,
        "metrics": {
            "test_top1": test_acc, "test_n": len(test_set),
            "pgd_linf": {"eps": recipe.eval_eps, "eps_255": round(recipe.eval_eps * 255, 3), "steps": recipe.eval_steps,
                         "accuracy": pgd, "n": len(test_set.images[sub]),
                         "attack": f"foolbox LinfPGD(steps={recipe.eval_steps}, rel_stepsize=2.5/steps, random_start)"},
        },
        "timing": {"render_s": round(render_s, 1), "train_s": round(train_s, 1),
                   "device": f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} threads"},
        "versions": {"phosphene": __version__, "torch": torch.__version__, "numpy": np.__version__},
    }
    write_text(out_dir / f"{name}.json", json.dumps(card, indent=2))
    write_text(out_dir / f"{name}.md", model_card_markdown(card))
    return card


def model_card_markdown(card: dict) -> str:
    """A human-readable model card from the JSON one."""
    m, t, r = card["metrics"], card["timing"], card["recipe"]
    pgd = m["pgd_linf"]
    lines = [
        f"# {card['name']}", "", card["description"], "",
        "| | |", "|---|---|",
        f"| test top-1 (n={m['test_n']}) | {m['test_top1']:.1%} |",
        f"| Linf PGD-{pgd['steps']} at ε={pgd['eps_255']}/255 (n={pgd['n']}) | {pgd['accuracy']:.1%} |",
        f"| training ε (Linf) | {r['eps'] * 255:.3g}/255 |",
        f"| epochs / batch / lr | {r['epochs']} / {r['batch_size']} / {r['lr']} |",
        f"| initialized from | {r['init'] or 'scratch'} |",
        f"| training time | {t['train_s'] / 60:.1f} min on {t['device']} (+{t['render_s']:.0f} s rendering) |",
        f"| data | embedded world {card['data']['world']}, {card['data']['n_train']} training images |",
        f"| reproduce | `{r['command']}` (seed {r['seed']}) |",
        f"| weights sha256 | `{card['sha256'][:16]}…` |",
        "", f"Attack: {pgd['attack']}.", "",
    ]
    return "\n".join(lines)
