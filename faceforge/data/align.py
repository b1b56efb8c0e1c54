"""5-point similarity alignment to the ArcFace 112x112 template.

The template is insightface's ``arcface_dst`` (python-package ``insightface/utils/face_align.py``): the
96x112 reference points of SphereFace/CosFace shifted by +8 px on x. Point order: left eye, right eye,
nose tip, left mouth corner, right mouth corner, in image coordinates (the person's right eye first).

The transform is the least-squares similarity (Umeyama 1991) from the detected landmarks to the template,
``skimage.transform.SimilarityTransform`` as insightface uses, followed by ``cv2.warpAffine`` with a black
border. For output sizes other than 112, the template is scaled like insightface's ``estimate_norm``:
sizes that are multiples of 112 scale by size/112; multiples of 128 scale by size/128 and add 8*ratio on x.

Landmarks are checked before the transform is estimated (:func:`check_landmarks`): five finite points,
no coordinate beyond ``MAX_COORDINATE`` pixels (1e7: far beyond any decodable image, small enough that the
least-squares sums cannot overflow), and spread over at least ``MIN_SPREAD`` = 1 pixel (root mean square
distance from their centroid; five points inside one pixel give no usable scale or rotation). A failure
raises :class:`LandmarksError`, which a folder job lists and skips.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from faceforge.core.errors import InputError

ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

TEMPLATE_NAME = "arcface_112"

MAX_COORDINATE = 1e7
MIN_SPREAD = 1.0


class LandmarksError(InputError):
    """Five points that cannot define an alignment (wrong shape, NaN/inf, absurd values, degenerate)."""


def template_for_size(size: int) -> np.ndarray:
    """Return the 5-point template for a square output of ``size`` pixels (insightface ``estimate_norm``)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * (size / 112.0)
    if size % 128 == 0:
        ratio = size / 128.0
        dst = ARCFACE_TEMPLATE_112 * ratio
        dst[:, 0] += 8.0 * ratio
        return dst
    raise ValueError(f"alignment size {size} is not a multiple of 112 or 128 (use 112 for ArcFace models)")


def check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """``landmarks`` as float64 [5, 2] if they can define an alignment, else :class:`LandmarksError`."""
    lmk = np.asarray(landmarks, dtype=np.float64)
    if lmk.shape != (5, 2):
        raise LandmarksError(f"expected 5 landmarks of shape (5, 2), got {lmk.shape}")
    if not np.all(np.isfinite(lmk)):
        raise LandmarksError("landmarks contain NaN or infinity")
    if np.abs(lmk).max() > MAX_COORDINATE:
        raise LandmarksError(
            f"a landmark coordinate is beyond {MAX_COORDINATE:g} pixels ({np.abs(lmk).max():g})"
        )
    spread = float(np.sqrt(((lmk - lmk.mean(axis=0)) ** 2).sum(axis=1).mean()))
    if spread < MIN_SPREAD:
        raise LandmarksError(
            f"the five points lie within {spread:.3g} px of each other (degenerate: no scale or rotation)"
        )
    return lmk


def estimate_similarity(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 affine matrix of the least-squares similarity mapping ``landmarks`` [5, 2] to the template."""
    lmk = check_landmarks(landmarks)
    tform = SimilarityTransform.from_estimate(lmk, template_for_size(size))
    if not tform or not np.all(np.isfinite(tform.params)):
        raise LandmarksError(f"could not estimate a similarity transform from landmarks {lmk.tolist()}")
    return tform.params[:2].astype(np.float64)


def warp_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Align one face: warp ``image`` (H, W, C uint8) so its landmarks land on the template."""
    matrix = estimate_similarity(landmarks, size)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` to ``points`` [N, 2]."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]
