"""Pretrained face networks from other frameworks, made into ordinary, trainable faceforge checkpoints.

An importer reads a foreign model file (dlib's ``.dat`` serialisation, an ONNX graph), builds the network as a
registered faceforge backbone and returns an :class:`~faceforge.importers.base.ImportedModel`;
:func:`~faceforge.importers.base.save_imported` writes it as a normal checkpoint whose metadata names the
source file, its SHA-256, its licence and the preprocessing. From there the model goes wherever a trained one
goes: ``eval``, ``embed``, ``export-onnx``, ``serve --model``, a distillation teacher, ``run.init``.

The importers register themselves in :data:`~faceforge.importers.base.IMPORTERS` when their module is
imported; ``faceforge import`` imports them (this package's ``__init__`` does not, so registration is one-way).
"""

from faceforge.importers.base import IMPORTERS, ImportedModel, ModelImportError, save_imported

__all__ = ["IMPORTERS", "ImportedModel", "ModelImportError", "save_imported"]
