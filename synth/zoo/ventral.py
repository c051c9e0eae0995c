"""The embedded ventral-stream network: four areas named V1, V2, V4, IT and a category decoder (CORnet-Z spirit).

Each area is conv → batch-norm → ReLU → max-pool with an ``output`` identity for hooks, as in CORnet; the decoder
pools over space and reads out the categories.  Sized for 64×64 images and for training on two CPU cores.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn


class Identity(nn.Module):
    """A named no-op whose output marks an area's response (CORnet's ``output`` convention)."""

    def forward(self, x):
        return x


class Area(nn.Sequential):
    """One cortical area: convolution, normalization, rectification, pooling (or none: the map kept whole)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, pool: bool = True):
        super().__init__(OrderedDict([
            ("conv", nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)),
            ("norm", nn.BatchNorm2d(c_out)),
            ("nonlin", nn.ReLU(inplace=True)),
            ("pool", nn.MaxPool2d(3, stride=2, padding=1) if pool else Identity()),
            ("output", Identity()),
        ]))


def init_weights(net: nn.Module) -> None:
    """He-initialized convolutions and a small-normal linear read-out, as VentralNet trains from."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VentralNet(nn.Sequential):
    """V1 → V2 → V4 → IT → decoder over ``n_classes`` categories; expects normalized input.  ``it_pool=False``
    keeps IT's map at V4's resolution (8×8 at 64 px, not 4×4): four times the IT units for a cortical sheet, the
    same weights."""

    def __init__(self, n_classes: int = 8, widths: tuple[int, ...] = (32, 64, 128, 256), v1_kernel: int = 7,
                 it_pool: bool = True):
        w1, w2, w4, wit = widths
        super().__init__(OrderedDict([
            ("V1", Area(3, w1, v1_kernel)),
            ("V2", Area(w1, w2)),
            ("V4", Area(w2, w4)),
            ("IT", Area(w4, wit, pool=it_pool)),
            ("decoder", nn.Sequential(OrderedDict([
                ("avgpool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("linear", nn.Linear(wit, n_classes)),
                ("output", Identity()),
            ]))),
        ]))
        init_weights(self)


# Layers that stand for each brain area; ``behavior`` is the pooled feature vector the decoder reads.
AREAS = {"V1": "V1", "V2": "V2", "V4": "V4", "IT": "IT", "behavior": "decoder.avgpool"}
