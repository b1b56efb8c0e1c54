"""faceforge's version (``faceforge.__version__``), in a module of its own so that code anywhere in the package
can record it without importing the top-level package (which loads :mod:`faceforge.api` on demand)."""

__version__ = "0.1.0"
