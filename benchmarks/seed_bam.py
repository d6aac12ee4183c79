"""The seed's BAM code, unchanged (a copy of tests/reference/seed_bam.py): the baseline."""

import torch
import torch.nn as nn


class ChannelGate(nn.Module):
    def __init__(self, channel, reduction_ratio=16, num_layers=1):
        super(ChannelGate, self).__init__()  # noqa: UP008
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.gate_c = nn.Sequential(
            nn.Linear(channel, channel // reduction_ratio),
            nn.BatchNorm1d(channel // reduction_ratio),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction_ratio, channel),
        )

    def forward(self, x):
        avg_pool = self.avgpool(x).squeeze(-1).squeeze(-1)  # [b, c]
        channel_attn = self.gate_c(avg_pool)  # [b, c]
        return channel_attn.unsqueeze(-1).unsqueeze(-1).expand_as(x)  # [b, c, h, w]


class SpatialGate(nn.Module):
    def __init__(self, channel, reduction_ratio=16, dilation_conv_num=2, dilation_val=4):
        super(SpatialGate, self).__init__()  # noqa: UP008
        reduced_c = channel // reduction_ratio
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(channel, reduced_c, kernel_size=1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(reduced_c))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(dilation_conv_num):
            self.gate_s.add_module(
                "gate_s_conv_di_%d" % i,  # noqa: UP031
                nn.Conv2d(
                    reduced_c,
                    reduced_c,
                    kernel_size=3,
                    padding=dilation_val,
                    dilation=dilation_val,
                ),
            )
            self.gate_s.add_module("gate_s_bn_di_%d" % i, nn.BatchNorm2d(reduced_c))  # noqa: UP031
            self.gate_s.add_module("gate_s_relu_di_%d" % i, nn.ReLU())  # noqa: UP031
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(reduced_c, 1, kernel_size=1))

    def forward(self, x):
        return self.gate_s(x).expand_as(x)


class BAM(nn.Module):
    def __init__(self, channel):
        super(BAM, self).__init__()  # noqa: UP008
        self.channel_att = ChannelGate(channel)
        self.spatial_att = SpatialGate(channel)

    def forward(self, x):
        att = torch.sigmoid(self.channel_att(x) + self.spatial_att(x))
        return att * x + x
