"""MTCNN face detection with five landmarks (Zhang et al., IEEE SPL 2016), in PyTorch on RGB uint8 images.

Three cascaded networks, each refining the boxes the previous one kept:

1. **P-Net**, fully convolutional, on an image pyramid with scales ``s_k = (12 / min_face) * factor**k``
   while ``min(H, W) * s_k >= 12``. Every 12x12 window (stride 2 at that scale) whose face probability is at
   least ``thresholds[0]`` becomes a box ``((2 i + 1) / s, (2 i + 12) / s)`` in the 1-based pixel
   coordinates of the original MATLAB code; NMS (IoU 0.5) per scale, then NMS (0.7) over all scales.
2. **R-Net** on 24x24 crops of the squared boxes (probability ``>= thresholds[1]``, NMS 0.7).
3. **O-Net** on 48x48 crops (probability ``>= thresholds[2]``), which also gives the landmarks; final NMS
   with IoU over the *smaller* box (0.7), as the reference implementation does.

After every stage the boxes move by the predicted offsets, ``x1 += dx1 * w`` and so on, and are made square
around their centre with side ``max(w, h)``. Crops are cut with zero padding outside the image (as the
original code does) and resized with area interpolation; pixels enter the networks as ``(x - 127.5) / 128``.

Landmarks come in the ArcFace order (image-left eye, image-right eye, nose, image-left mouth corner,
image-right mouth corner) and in 0-based pixel coordinates; boxes are 0-based ``x1, y1, x2, y2``.

Batching (:meth:`MTCNNDetector.detect_many`): images of one size share P-Net's forward pass at each pyramid
scale, and R-Net and O-Net each run once on the crops of every image's candidates; ``faceforge prepare`` hands
the detector a chunk of photos at a time, in one process per core.

The weights are the P/R/O-Net state dicts that ship in the facenet-pytorch wheel
(:mod:`faceforge.core.model_files`; ``faceforge fetch mtcnn``). Their dense layers were converted from
Caffe models trained on transposed images, which is why R-Net and O-Net flatten their feature maps in
(W, H, C) order. The networks are defined here; only the weight files are taken from the wheel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from faceforge.core.model_files import find_model_dir
from faceforge.deploy.detection import DETECTORS, Detection, _check_rgb, finite_detections, resize_for_search


class PNet(nn.Module):
    """Proposal network: 12x12 receptive field, stride 2; outputs face probability and box offsets maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network on 24x24 crops: face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 crops: face probability, box offsets and 5 landmarks (x1..x5, y1..y5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first.

    Overlap is ``inter / union`` (``mode="union"``) or ``inter / min(area_a, area_b)`` (``"min"``), with
    areas in MTCNN's inclusive-pixel convention ``(x2 - x1 + 1) * (y2 - y1 + 1)``.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool) -> np.ndarray:
    """Move box corners by offsets scaled by the box size (``+1`` in the size for R/O-Net stages)."""
    extra = 1.0 if inclusive else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    return boxes + offsets * np.stack([w, h, w, h], axis=1)


def square(boxes: np.ndarray) -> np.ndarray:
    """Square boxes around their centres with side ``max(w, h)``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def crop_resize(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut 1-based inclusive boxes (rounded) out of ``image`` with zero padding; resize to ``size``.

    Returns float32 [N, 3, size, size] normalised as ``(x - 127.5) / 128``.
    """
    h, w = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    for k, b in enumerate(np.fix(boxes).astype(np.int64)):
        x1, y1, x2, y2 = int(b[0]) - 1, int(b[1]) - 1, int(b[2]), int(b[3])  # 0-based, end exclusive
        bw, bh = max(1, x2 - x1), max(1, y2 - y1)
        patch = np.zeros((bh, bw, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return ((out - 127.5) * 0.0078125).transpose(0, 3, 1, 2)


def pyramid_scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """``(12 / min_face) * factor**k`` for every k with ``min(H, W) * scale >= 12``."""
    m = 12.0 / min_face
    side = min(height, width) * m
    scales = []
    while side >= 12:
        scales.append(m * factor ** len(scales))
        side *= factor
    return scales


@DETECTORS.register("mtcnn")
class MTCNNDetector:
    """MTCNN on RGB uint8 images (see the module doc); returns :class:`Detection` objects, best first.

    Args:
        model_path: folder holding ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (default: found or fetched by
            :func:`~faceforge.core.model_files.find_model_dir`).
        score_threshold: O-Net probability a face must reach (the reference uses 0.7).
        stage_thresholds: P-Net and R-Net thresholds (reference 0.6, 0.7).
        min_face: smallest face side searched, in pixels (reference 20).
        factor: pyramid scale step (reference 0.709).
        max_side: larger images are searched on a downscaled copy; results map back to the original.
    """

    name = "mtcnn"
    default_min_score = 0.7

    def __init__(
        self,
        model_path: str | Path | None = None,
        score_threshold: float = 0.7,
        stage_thresholds: Sequence[float] = (0.6, 0.7),
        min_face: float = 20.0,
        factor: float = 0.709,
        max_side: int = 1280,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if min_face < 12:
            raise ValueError(f"min_face must be at least 12 pixels (P-Net's window), got {min_face}")
        self.model_path = find_model_dir("mtcnn", model_path)
        self.thresholds = (float(stage_thresholds[0]), float(stage_thresholds[1]), float(score_threshold))
        self.min_face, self.factor, self.max_side = float(min_face), float(factor), int(max_side)
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, fname in ((self.pnet, "pnet.pt"), (self.rnet, "rnet.pt"), (self.onet, "onet.pt")):
            path = self.model_path / fname
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except Exception as exc:  # any failure here means a wrong or damaged file
                raise ValueError(
                    f"{path}: not an MTCNN state dict for {type(net).__name__} ({exc})"
                ) from None
            net.eval()

    def _proposals(self, prob: np.ndarray, reg: np.ndarray, scale: float) -> np.ndarray | None:
        """One image's P-Net windows at one scale above the threshold, after NMS (IoU 0.5)."""
        ys, xs = np.nonzero(prob >= self.thresholds[0])
        if len(ys) == 0:
            return None
        boxes = np.stack(
            [(2 * xs + 1) / scale, (2 * ys + 1) / scale, (2 * xs + 12) / scale, (2 * ys + 12) / scale],
            axis=1,
        )
        cand = np.concatenate([boxes, prob[ys, xs, None], reg[:, ys, xs].T], axis=1)
        return cand[nms(cand[:, :4], cand[:, 4], 0.5)]

    @torch.inference_mode()
    def _stage1(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """P-Net over every image's pyramid; images of one size share one forward pass per scale."""
        found: list[list[np.ndarray]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(img.shape[:2], []).append(i)
        for (h, w), members in by_size.items():
            for scale in pyramid_scales(h, w, self.min_face, self.factor):
                hs, ws = math.ceil(h * scale), math.ceil(w * scale)
                x = np.stack(
                    [cv2.resize(images[i], (ws, hs), interpolation=cv2.INTER_AREA) for i in members]
                ).astype(np.float32)
                x = torch.from_numpy(((x - 127.5) * 0.0078125).transpose(0, 3, 1, 2).copy())
                prob, reg = self.pnet(x)
                prob, reg = prob.numpy(), reg.numpy()
                for k, i in enumerate(members):
                    cand = self._proposals(prob[k], reg[k], scale)
                    if cand is not None:
                        found[i].append(cand)
        out = []
        for parts in found:
            if not parts:
                out.append(np.zeros((0, 5)))
                continue
            cand = np.concatenate(parts)
            cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
            boxes = square(regress(cand[:, :4], cand[:, 5:9], inclusive=False))
            out.append(np.concatenate([boxes, cand[:, 4:5]], axis=1))
        return out

    @staticmethod
    def _crops(
        images: Sequence[np.ndarray], cands: Sequence[np.ndarray], size: int
    ) -> tuple[Tensor, list[int]]:
        """Every image's candidate crops in one batch, and where each image's rows end."""
        parts = [crop_resize(img, c[:, :4], size) for img, c in zip(images, cands, strict=True) if len(c)]
        ends = np.cumsum([len(c) for c in cands]).tolist()
        return torch.from_numpy(np.concatenate(parts)), ends

    @torch.inference_mode()
    def _stage2(self, images: Sequence[np.ndarray], cands: list[np.ndarray]) -> list[np.ndarray]:
        """R-Net on the 24x24 crops of every image's candidates, in one forward pass."""
        if not any(len(c) for c in cands):
            return cands
        x, ends = self._crops(images, cands, 24)
        prob_all, reg_all = (t.numpy() for t in self.rnet(x))
        out = []
        for cand, lo, hi in zip(cands, [0, *ends[:-1]], ends, strict=True):
            if len(cand) == 0:
                out.append(cand)
                continue
            prob, reg = prob_all[lo:hi], reg_all[lo:hi]
            keep = prob >= self.thresholds[1]
            boxes, prob, reg = cand[keep, :4], prob[keep], reg[keep]
            order = nms(boxes, prob, 0.7)
            boxes = square(regress(boxes[order], reg[order], inclusive=True))
            out.append(np.concatenate([boxes, prob[order, None]], axis=1))
        return out

    @torch.inference_mode()
    def _stage3(
        self, images: Sequence[np.ndarray], cands: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """O-Net on the 48x48 crops of every image's candidates, in one forward pass: boxes, scores, points."""
        empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
        if not any(len(c) for c in cands):
            return [empty for _ in cands]
        x, ends = self._crops(images, cands, 48)
        prob_all, reg_all, lmk_all = (t.numpy() for t in self.onet(x))
        out = []
        for cand, lo, hi in zip(cands, [0, *ends[:-1]], ends, strict=True):
            if len(cand) == 0:
                out.append(empty)
                continue
            prob, reg, lmk = prob_all[lo:hi], reg_all[lo:hi], lmk_all[lo:hi]
            keep = prob >= self.thresholds[2]
            boxes, prob, reg, lmk = cand[keep, :4], prob[keep], reg[keep], lmk[keep]
            bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            # landmarks relative to the (1-based) box, returned in 0-based pixel coordinates
            lx = bw * lmk[:, :5] + boxes[:, 0:1] - 1
            ly = bh * lmk[:, 5:] + boxes[:, 1:2] - 1
            boxes = regress(boxes, reg, inclusive=True)
            order = nms(boxes, prob, 0.7, mode="min")
            points = np.stack([lx, ly], axis=2)
            out.append((boxes[order], prob[order], points[order]))
        return out

    def detect_many(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """:meth:`__call__` on several images at once: P-Net batched across images of one size per pyramid
        scale, R-Net and O-Net batched across all images' candidates. Each image's detections come out of
        the same per-image steps (thresholds, NMS, box regression) as on its own."""
        searched = [resize_for_search(_check_rgb(im), self.max_side) for im in images]
        imgs = [im for im, _, _ in searched]
        results = self._stage3(imgs, self._stage2(imgs, self._stage1(imgs)))
        out = []
        for image, (_, sx, sy), (boxes, probs, points) in zip(images, searched, results, strict=True):
            dets = []
            for box, p, pts in zip(boxes, probs, points, strict=True):
                b = np.array([(box[0] - 1) * sx, (box[1] - 1) * sy, box[2] * sx, box[3] * sy])
                dets.append(Detection(box=b, score=float(p), landmarks=pts * np.array([sx, sy])))
            dets = finite_detections(dets, image.shape)
            dets.sort(key=lambda d: -d.score)
            out.append(dets)
        return out

    def __call__(self, image: np.ndarray) -> list[Detection]:
        return self.detect_many([image])[0]
