"""BiSeNet face parsing (ResNet-18 context path), facexlib's network written here.

Why not facexlib: see `retinaface.py` (it drags in torchvision, which replaces the user's torch). Layers and
parameter names are facexlib 0.3's, so the released `parsing_bisenet.pth` loads unchanged (strict).
"""

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 19  # CelebAMask-HQ labels


class ConvBNReLU(nn.Module):
    def __init__(self, inp: int, oup: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, kernel, 1, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup)
        self.conv2, self.bn2 = nn.Conv2d(oup, oup, 3, 1, 1, bias=False), nn.BatchNorm2d(oup)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(inp, oup, 1, stride, bias=False), nn.BatchNorm2d(oup)) \
            if inp != oup or stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.relu((self.downsample(x) if self.downsample is not None else x) + residual)


class ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for index, (inp, oup, stride) in enumerate(((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)), 1):
            setattr(self, f"layer{index}", nn.Sequential(BasicBlock(inp, oup, stride), BasicBlock(oup, oup)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(inp, oup)
        self.conv_atten = nn.Conv2d(oup, oup, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(F.avg_pool2d(feat, feat.shape[2:]))))


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16, self.arm32 = AttentionRefinementModule(256, 128), AttentionRefinementModule(512, 128)
        self.conv_head32, self.conv_head16 = ConvBNReLU(128, 128), ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = F.interpolate(self.conv_avg(F.avg_pool2d(feat32, feat32.shape[2:])), feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(self.arm32(feat32) + avg, feat16.shape[2:], mode="nearest"))
        feat16_up = self.conv_head16(F.interpolate(self.arm16(feat16) + feat32_up, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(inp, oup, kernel=1)
        self.conv1 = nn.Conv2d(oup, oup // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(oup // 4, oup, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.avg_pool2d(feat, feat.shape[2:])))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, inp: int, mid: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(inp, mid)
        self.conv_out = nn.Conv2d(mid, CLASSES, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256)
        self.conv_out16, self.conv_out32 = BiSeNetOutput(128, 64), BiSeNetOutput(128, 64)  # training heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits at the input size (facexlib's first output; the auxiliary heads are unused)."""
        feat8, context8, _ = self.cp(x)
        out = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)
