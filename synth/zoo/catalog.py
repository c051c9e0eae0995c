"""The zoo's catalogue: which models and generators phosphene ships or loads, their cards, and Brain-Score's area
maps, read without torch, so that ``phosphene models`` answers at once; ``synth.zoo.models`` builds them."""
from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent.parent / "weights"
GENERATORS_DIR = WEIGHTS_DIR / "generators"
TOPOGRAPHIC = "toy-topo-dense"  # the default topographic model: Afraz's experiment, the Micro-stimulation page
CORNET_NAMES = ("cornet_z", "cornet_s")
VONENETS = ("vonenet_resnet50", "vonenet_alexnet", "vonenet_cornets")  # dicarlolab/vonenet layouts
# torchvision.models.list_models(module=torchvision.models) of the pinned torchvision (0.29.1), listed here so that
# the catalogue needs no torch import; tests/test_models.py checks it against the installed torchvision.
TORCHVISION_MODELS: tuple[str, ...] = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121",
    "densenet161", "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
    "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large",
    "mobilenet_v3_small", "regnet_x_16gf", "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf",
    "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101",
    "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0",
    "squeezenet1_1", "swin_b", "swin_s", "swin_t", "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn",
    "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14",
    "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)

# Brain-Score's published region commitments for torchvision ImageNet models (brain-score/vision,
# brainscore_vision/models/<model>/region_layer_map/*.json; behaviour = the model's last listed layer).
# Models missing here have no fixed published map (Brain-Score searches one per benchmark): pass ``areas=``.
BRAIN_SCORE_AREAS: dict[str, dict[str, str]] = {
    "alexnet": {"V1": "features.2", "V2": "features.7", "V4": "features.7", "IT": "features.12",
                "behavior": "classifier.5"},
    "vgg16": {"V1": "features.16", "V2": "features.16", "V4": "features.16", "IT": "features.23",
              "behavior": "classifier.3"},
    "resnet50": {"V1": "layer2.3", "V2": "layer3.0", "V4": "layer2.3", "IT": "layer4.0", "behavior": "avgpool"},
    "resnet101": {"V1": "layer1.2", "V2": "layer3.9", "V4": "layer3.2", "IT": "layer4.0", "behavior": "avgpool"},
    "resnet152": {"V1": "layer1.0", "V2": "layer3.11", "V4": "layer3.0", "IT": "layer4.0", "behavior": "avgpool"},
    "densenet121": {"V1": "features.transition1.pool", "V2": "features.transition2.pool",
                    "V4": "features.transition1.pool", "IT": "features.transition3.pool", "behavior": "features.norm5"},
    "densenet169": {"V1": "features.transition1.pool", "V2": "features.transition2.pool",
                    "V4": "features.transition2.pool", "IT": "features.transition3.pool", "behavior": "features.norm5"},
    "densenet201": {"V1": "features.transition1.pool", "V2": "features.transition2.pool",
                    "V4": "features.transition2.pool", "IT": "features.transition3.pool", "behavior": "features.norm5"},
    "efficientnet_b0": {"V1": "features.3.1.stochastic_depth", "V2": "features.6.1.stochastic_depth",
                        "V4": "features.4.1.stochastic_depth", "IT": "features.6.1.stochastic_depth",
                        "behavior": "classifier.1"},
    "inception_v3": {"V1": "Mixed_6a", "V2": "Mixed_6b", "V4": "Mixed_5b", "IT": "Mixed_7a", "behavior": "avgpool"},
    "convnext_tiny": {"V1": "features.5.0", "V2": "features.5.1", "V4": "features.4.1", "IT": "features.6.1",
                      "behavior": "classifier.2"},
}


def embedded_models() -> dict[str, dict]:
    """The shipped embedded models and their model cards."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(WEIGHTS_DIR.glob("*.json"))}


def available_generators() -> list[str]:
    """The shipped generators' names."""
    return sorted(p.stem for p in GENERATORS_DIR.glob("*.json"))


def torchvision_models() -> tuple[str, ...]:
    """Names of torchvision's ImageNet classification architectures."""
    return TORCHVISION_MODELS


def white_box_name(pgd: dict) -> str:
    """What measured a card's white-box number: the evaluate cascade, or (cards measured before it) a single PGD."""
    if pgd["attack"].startswith("attacks.evaluate"):
        return "attacks.evaluate (APGD-CE, APGD-T, Square)" if "square" in pgd["attack"] else \
            "attacks.evaluate (APGD-CE, APGD-T; EOT)"
    return f"PGD-{pgd['steps']}, attacks.pgd"
