"""Sane bounds for numbers read from data files, checked before they size anything.

A class label ``L`` makes the training head ``L + 1`` rows wide, so a label read from a file is checked
before it is believed: it must be a finite whole number in ``[0, bound)``, where ``bound`` is what the
file itself says about its number of identities when it says it (an insightface ``.rec``'s range record)
and :data:`MAX_CLASSES` otherwise. ``MAX_CLASSES = 2**24`` (16.8 million identities) is four times the
largest public face set (WebFace260M, 4 million identities) and still a head that fits in memory
(16.8M x 512 x 4 bytes = 34 GB); a label of 1e12 would ask for terabytes.
"""

from __future__ import annotations

import math

MAX_CLASSES = 2**24


def checked_label(value: float, bound: int = MAX_CLASSES) -> int:
    """``value`` as an int class label, or ValueError saying why it cannot be one (the caller names the file)."""
    v = float(value)
    if not math.isfinite(v) or v != int(v):
        raise ValueError(f"label {value!r} is not a whole number")
    if not 0 <= v < bound:
        what = "the number of identities the file declares" if bound != MAX_CLASSES else "MAX_CLASSES"
        raise ValueError(f"label {int(v)} is outside [0, {bound}) ({what})")
    return int(v)
