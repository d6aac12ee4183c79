"""The official code's BAM block (Jongchan/attention-module, MODELS/bam.py), as a reference.

Its layer names differ from the seed's in the channel gate, and it combines the two maps with a
product: ``1 + sigmoid(M_c * M_s)``. Kept here, in test code only, to check torch_bam.compat.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class ChannelGate(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, num_layers=1):
        super().__init__()
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", Flatten())
        gate_channels = [gate_channel]
        gate_channels += [gate_channel // reduction_ratio] * num_layers
        gate_channels += [gate_channel]
        for i in range(len(gate_channels) - 2):
            self.gate_c.add_module(
                f"gate_c_fc_{i}", nn.Linear(gate_channels[i], gate_channels[i + 1])
            )
            self.gate_c.add_module(f"gate_c_bn_{i + 1}", nn.BatchNorm1d(gate_channels[i + 1]))
            self.gate_c.add_module(f"gate_c_relu_{i + 1}", nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(gate_channels[-2], gate_channels[-1]))

    def forward(self, in_tensor):
        avg_pool = F.avg_pool2d(in_tensor, in_tensor.size(2), stride=in_tensor.size(2))
        return self.gate_c(avg_pool).unsqueeze(2).unsqueeze(3).expand_as(in_tensor)


class SpatialGate(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, dilation_conv_num=2, dilation_val=4):
        super().__init__()
        self.gate_s = nn.Sequential()
        reduced = gate_channel // reduction_ratio
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(gate_channel, reduced, 1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(reduced))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(dilation_conv_num):
            self.gate_s.add_module(
                f"gate_s_conv_di_{i}",
                nn.Conv2d(reduced, reduced, 3, padding=dilation_val, dilation=dilation_val),
            )
            self.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(reduced))
            self.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(reduced, 1, 1))

    def forward(self, in_tensor):
        return self.gate_s(in_tensor).expand_as(in_tensor)


class BAM(nn.Module):
    def __init__(self, gate_channel, num_layers=1):
        super().__init__()
        self.channel_att = ChannelGate(gate_channel, num_layers=num_layers)
        self.spatial_att = SpatialGate(gate_channel)

    def forward(self, in_tensor):
        att = 1 + torch.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        return att * in_tensor
