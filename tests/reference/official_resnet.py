"""The official code's ResNet with BAM (Jongchan/attention-module, MODELS/model_resnet.py).

Written from that file, in test code only, to check torch_bam.compat's whole-network loading.
As there: the stride of a downsampling bottleneck is in its 3x3 conv (torchvision's "v1.5"),
the BAMs are attributes ``bam1``..``bam3`` applied after ``layer1``..``layer3``, the ImageNet
head is ``AvgPool2d(7)`` (so 224x224 inputs), and BAM combines its maps by a product. Its CIFAR
networks (``network_type`` "CIFAR10"/"CIFAR100") have a 3x3 stride-1 stem, no max-pool, and
``avg_pool2d(x, 4)`` (32x32 inputs).
"""

import torch.nn as nn
import torch.nn.functional as F

from .official_bam import BAM


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, network_type="ImageNet"):
        super().__init__()
        self.inplanes = 64
        self.network_type = network_type
        if network_type == "ImageNet":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.avgpool = nn.AvgPool2d(7)
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.bam1 = BAM(64 * block.expansion)
        self.bam2 = BAM(128 * block.expansion)
        self.bam3 = BAM(256 * block.expansion)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes,
                    planes * block.expansion,
                    kernel_size=1,
                    stride=stride,
                    bias=False,
                ),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.network_type == "ImageNet":
            x = self.maxpool(x)
        x = self.bam1(self.layer1(x))
        x = self.bam2(self.layer2(x))
        x = self.bam3(self.layer3(x))
        x = self.layer4(x)
        x = self.avgpool(x) if self.network_type == "ImageNet" else F.avg_pool2d(x, 4)
        return self.fc(x.view(x.size(0), -1))


def ResidualNet(depth, num_classes=1000, network_type="ImageNet"):
    if depth == 18:
        return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, network_type)
    if depth == 34:
        return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, network_type)
    if depth == 50:
        return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, network_type)
    raise ValueError(depth)
