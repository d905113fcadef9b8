"""RetinaFace (ResNet-50), the released fallback detector: facexlib's network and `detect_faces`, written here.

Why not facexlib: it needs torchvision (the ResNet-50 backbone and `ops.nms`), and installing torchvision
replaces the user's torch with whatever build the newest torchvision wants (CUDA on a CPU machine, another
CUDA on a cluster). The layers, parameter names and arithmetic below are facexlib 0.3's, so the released
`detection_Resnet50_Final.pth` loads unchanged (strict) and gives the same boxes; the backbone is
torchvision's ResNet-50 v1.5 layout (stride on the 3x3 conv) under the `body.` prefix.
"""

from itertools import product
from math import ceil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
ANCHORS = 2
WIDTH = 256  # FPN / SSH channels


def _conv_bn(inp: int, oup: int, kernel: int, leaky: float | None) -> nn.Sequential:
    layers = [nn.Conv2d(inp, oup, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(oup)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    def __init__(self, inp: int, width: int, stride: int, downsample: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inp, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(inp, width * 4, 1, stride, bias=False),
                                        nn.BatchNorm2d(width * 4)) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet50Body(nn.Module):
    """torchvision's ResNet-50 up to layer4 (what facexlib's IntermediateLayerGetter keeps); -> layers 2-4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        inp = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layers = [Bottleneck(inp, width, stride, True)] + [Bottleneck(width * 4, width, 1, False)
                                                               for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            inp = width * 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.output1, self.output2, self.output3 = (_conv_bn(c, WIDTH, 1, 0.0) for c in (512, 1024, 2048))
        self.merge1, self.merge2 = _conv_bn(WIDTH, WIDTH, 3, 0.0), _conv_bn(WIDTH, WIDTH, 3, 0.0)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out1, out2, out3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(WIDTH, WIDTH // 2, 3, None)
        self.conv5X5_1 = _conv_bn(WIDTH, WIDTH // 4, 3, 0.0)
        self.conv5X5_2 = _conv_bn(WIDTH // 4, WIDTH // 4, 3, None)
        self.conv7X7_2 = _conv_bn(WIDTH // 4, WIDTH // 4, 3, 0.0)
        self.conv7x7_3 = _conv_bn(WIDTH // 4, WIDTH // 4, 3, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5),
                                 self.conv7x7_3(self.conv7X7_2(branch5))], dim=1))


class Head(nn.Module):
    """ClassHead / BboxHead / LandmarkHead: a 1x1 conv, flattened to (B, anchors, values)."""

    def __init__(self, values: int) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(WIDTH, ANCHORS * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.fpn = ResNet50Body(), FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        self.ClassHead = nn.ModuleList(Head(2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        classes = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, F.softmax(classes, dim=-1), landmarks

    @torch.no_grad()
    def detect_faces(self, bgr: np.ndarray, conf_threshold: float = 0.8, nms_threshold: float = 0.4) -> np.ndarray:
        """facexlib's `detect_faces` at the original size: (N, 15) rows of x1, y1, x2, y2, score, 5 (x, y)."""
        device = next(self.parameters()).device
        image = torch.from_numpy(bgr.astype(np.float32).transpose(2, 0, 1)).unsqueeze(0).to(device)
        image = image - torch.tensor(BGR_MEAN, device=device).view(1, 3, 1, 1)
        height, width = image.shape[2:]
        loc, conf, landmarks = self(image)
        priors = prior_boxes(height, width).to(device)
        scale = torch.tensor([width, height] * 2, dtype=torch.float32, device=device)
        boxes = (decode_boxes(loc[0], priors) * scale).cpu().numpy()
        points = (decode_landmarks(landmarks[0], priors) * scale[:2].repeat(5)).cpu().numpy()
        scores = conf[0, :, 1].cpu().numpy()
        keep = np.where(scores > conf_threshold)[0]
        order = keep[scores[keep].argsort()[::-1]]
        dets = np.hstack((boxes[order], scores[order, None])).astype(np.float32, copy=False)
        kept = nms(dets, nms_threshold)
        return np.concatenate((dets[kept], points[order][kept]), axis=1)


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """facexlib's PriorBox: (cx, cy, w, h) relative to the image, per feature cell and min size."""
    anchors = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        for i, j in product(range(ceil(height / step)), range(ceil(width / step))):
            for size in sizes:
                anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height]
    return torch.tensor(anchors, dtype=torch.float32).view(-1, 4)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    return torch.cat([priors[:, :2] + pre[:, k:k + 2] * VARIANCE[0] * priors[:, 2:] for k in range(0, 10, 2)], dim=1)


def nms(dets: np.ndarray, threshold: float) -> list[int]:
    """torchvision.ops.nms (what facexlib calls): greedy by score, a box dropped when its IoU with a kept one
    is above `threshold`; areas without the +1 of the older numpy NMS. `dets` is already sorted by score."""
    x1, y1, x2, y2 = (dets[:, k].astype(np.float32) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order, keep = np.arange(len(dets)), []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter = (np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
                 * np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None))
        order = rest[inter / (areas[best] + areas[rest] - inter) <= threshold]
    return keep
