"""faceforge: face recognition research and deployment toolkit."""

__version__ = "0.1.0"
