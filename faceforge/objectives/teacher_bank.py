"""The teachers of a run: the ``teachers:`` config list turned into embedding tables, built once, shared.

Every objective that reads teacher embeddings asks :meth:`TeacherBank.table` by name (None: the first teacher).
The first request embeds every training row with every configured teacher in one pass over the images, through
the on-disk embedding cache (:func:`faceforge.distill.teachers.build_teacher_tables`), so two objectives that use
the same teacher share one table and a second run reads the cache back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from faceforge.distill.teachers import TeacherTable, build_teacher_tables, default_teacher_cache

__all__ = ["TEACHER_VIEWS", "TeacherBank"]

#: what a teacher embeds: the un-augmented face, or both views so each row reads the one the student saw
TEACHER_VIEWS = ("original", "student")


class TeacherBank:
    """``teachers`` config entries (``model``, ``name``, ``flip``, ``view``, ``options``) -> lazily built tables."""

    def __init__(
        self,
        teachers: Sequence[dict[str, Any]],
        dataset: Any,
        cache_dir: str | None,
        progress: bool,
        embedder_factory: Callable[[str, dict[str, Any]], Any] | None = None,
    ) -> None:
        self.configs = [dict(t) for t in teachers]
        for i, t in enumerate(self.configs):
            if not t.get("model") or t["model"] == "???":
                raise ValueError(f"teachers.{i}.model is not set (a .pt checkpoint, an .onnx file or dlib)")
            view = t.setdefault("view", "original")
            if view not in TEACHER_VIEWS:
                raise ValueError(f"teachers.{i}.view must be one of {list(TEACHER_VIEWS)}, got {view!r}")
            if view == "student" and t.get("flip"):
                raise ValueError(
                    f"teachers.{i}: flip=true (the sum of both views) and view=student (the student's view) "
                    "exclude each other: set one"
                )
            t.setdefault("name", None)
            t["name"] = t["name"] or f"teacher{i}"
        self.names = [t["name"] for t in self.configs]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"teachers need distinct names, got {self.names}")
        self.dataset = dataset
        self.cache_dir = cache_dir
        self.progress = progress
        self.factory = embedder_factory
        self._tables: dict[str, TeacherTable] | None = None

    def __bool__(self) -> bool:
        return bool(self.configs)

    def table(self, name: str | None = None) -> TeacherTable:
        if not self.configs:
            raise ValueError("no teachers configured: add teachers=[{model: dlib, name: dlib}]")
        name = self.names[0] if name is None else name
        if name not in self.names:
            raise ValueError(f"no teacher named {name!r}; configured teachers: {self.names}")
        if self._tables is None:
            self._tables = {t.name: t for t in self._build()}
        return self._tables[name]

    @property
    def built(self) -> list[TeacherTable]:
        return list(self._tables.values()) if self._tables else []

    def _build(self) -> list[TeacherTable]:
        from faceforge.embedders import embedder_from_spec

        factory = self.factory or (lambda spec, opts: embedder_from_spec(spec, **opts))
        embedders = [factory(str(t["model"]), dict(t.get("options") or {})) for t in self.configs]
        cache = None if self.cache_dir == "none" else (self.cache_dir or default_teacher_cache())
        return build_teacher_tables(
            embedders,
            len(self.dataset),
            self.dataset.image,
            self.names,
            [bool(t.get("flip", False)) for t in self.configs],
            cache,
            progress=self.progress,
            views=[str(t.get("view", "original")) for t in self.configs],
        )

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "dim": t.dim,
                "model": t.description,
                "cache_folder": t.cache_folder,
                "embedded_this_run": t.computed,
                "valid_rows": int(t.valid.sum()),
                "view": "student" if t.mirrored_embeddings is not None else "original",
            }
            for t in self.built
        ]
