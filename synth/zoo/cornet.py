"""CORnet-Z and CORnet-S (Kubilius, Schrimpf et al. 2018/2019), written to load the published checkpoints.

Parameter names match dicarlolab/CORnet so its ``.pth`` files load unchanged (after the 'module.' prefix is
stripped).  CORnet-S's recurrent areas run ``times`` steps; each step's output is a separate node, so
``IT.output`` is the first time step and ``IT.output_1`` the second.  Unlike the reference code, the stride of
the recurrent convolution is passed per step instead of being mutated on the module, which keeps the graph
traceable for truncated feature extraction.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

from synth.zoo.ventral import Identity


class CORblockZ(nn.Module):
    """One CORnet-Z area: convolution, ReLU, max-pool."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2)
        self.nonlin = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.output = Identity()

    def forward(self, x):
        return self.output(self.pool(self.nonlin(self.conv(x))))


def _decoder(width: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                                      ("linear", nn.Linear(width, n_classes)), ("output", Identity())]))


def cornet_z(n_classes: int = 1000) -> nn.Sequential:
    """CORnet-Z: four feed-forward areas and a linear decoder (xavier-initialized as published)."""
    model = nn.Sequential(OrderedDict([
        ("V1", CORblockZ(3, 64, kernel_size=7, stride=2)), ("V2", CORblockZ(64, 128)),
        ("V4", CORblockZ(128, 256)), ("IT", CORblockZ(256, 512)), ("decoder", _decoder(512, n_classes))]))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class CORblockS(nn.Module):
    """One recurrent CORnet-S area: a bottleneck block applied ``times`` times with per-step batch norms."""

    scale = 4

    def __init__(self, c_in: int, c_out: int, times: int = 1):
        super().__init__()
        self.times = times
        self.conv_input = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
        self.skip = nn.Conv2d(c_out, c_out, kernel_size=1, stride=2, bias=False)
        self.norm_skip = nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_out, c_out * self.scale, kernel_size=1, bias=False)
        self.nonlin1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out * self.scale, c_out * self.scale, kernel_size=3, stride=2, padding=1, bias=False)
        self.nonlin2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(c_out * self.scale, c_out, kernel_size=1, bias=False)
        self.nonlin3 = nn.ReLU(inplace=True)
        self.output = Identity()
        for t in range(times):
            setattr(self, f"norm1_{t}", nn.BatchNorm2d(c_out * self.scale))
            setattr(self, f"norm2_{t}", nn.BatchNorm2d(c_out * self.scale))
            setattr(self, f"norm3_{t}", nn.BatchNorm2d(c_out))

    def forward(self, inp):
        x = self.conv_input(inp)
        for t in range(self.times):
            skip = self.norm_skip(self.skip(x)) if t == 0 else x
            x = self.nonlin1(getattr(self, f"norm1_{t}")(self.conv1(x)))
            x = F.conv2d(x, self.conv2.weight, stride=2 if t == 0 else 1, padding=1)
            x = self.nonlin2(getattr(self, f"norm2_{t}")(x))
            x = getattr(self, f"norm3_{t}")(self.conv3(x))
            x = self.nonlin3(x + skip)
            out = self.output(x)
        return out


def cornet_s(n_classes: int = 1000) -> nn.Sequential:
    """CORnet-S: a V1 stem, recurrent V2 (2 steps), V4 (4 steps) and IT (2 steps), and a linear decoder."""
    v1 = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)), ("norm1", nn.BatchNorm2d(64)),
        ("nonlin1", nn.ReLU(inplace=True)), ("pool", nn.MaxPool2d(3, stride=2, padding=1)),
        ("conv2", nn.Conv2d(64, 64, kernel_size=3, padding=1, bias=False)), ("norm2", nn.BatchNorm2d(64)),
        ("nonlin2", nn.ReLU(inplace=True)), ("output", Identity())]))
    model = nn.Sequential(OrderedDict([
        ("V1", v1), ("V2", CORblockS(64, 128, times=2)), ("V4", CORblockS(128, 256, times=4)),
        ("IT", CORblockS(256, 512, times=2)), ("decoder", _decoder(512, n_classes))]))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


# Brain-Score's commitments (candidate_models cornets.py; brain-score/vision models/cornet_s): each area's output,
# behaviour read from the decoder's pooled features.  For CORnet-S the block name is its last time step.
AREAS = {
    "cornet_z": {"V1": "V1.output", "V2": "V2.output", "V4": "V4.output", "IT": "IT.output",
                 "behavior": "decoder.avgpool"},
    "cornet_s": {"V1": "V1.output", "V2": "V2", "V4": "V4", "IT": "IT", "behavior": "decoder.avgpool"},
}
