"""The worker pool's start method, its one-thread limits and the lazy registry entries that keep workers light."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

from faceforge.core import workers
from faceforge.core.registry import Registry


def test_start_method_forks_only_a_lone_thread_without_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with monkeypatch.context() as alone:  # (earlier tests may have left threads in this process)
        alone.setattr(workers.threading, "active_count", lambda: 1)
        assert workers.start_method() == "fork"
        alone.setitem(sys.modules, "torch", object())  # PyTorch imported: its OpenMP pool cannot fork
        assert workers.start_method() == "spawn"
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert workers.start_method() == "spawn"  # another thread may hold a lock the child would inherit
    finally:
        stop.set()
        other.join()


def test_one_thread_limits_blas_and_restores_it() -> None:
    import cv2  # noqa: F401  (its OpenBLAS loaded too, as one_thread() imports it)
    import numpy as np
    from threadpoolctl import threadpool_limits

    np.linalg.svd(np.eye(4))  # (numpy's OpenBLAS loaded)

    def blas() -> dict[str, int]:
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):  # two threads each, whatever OMP_NUM_THREADS says
        before = blas()
        assert before and set(before.values()) == {2}
        with workers.one_thread():
            assert set(blas().values()) == {1}
        assert blas() == before


def test_lazy_registry_entry_imports_its_module_on_first_use() -> None:
    reg: Registry[object] = Registry("thing")
    reg.register_lazy("json_thing", "json")  # a module that registers nothing
    assert "json_thing" in reg and reg.names() == ["json_thing"]
    with pytest.raises(KeyError, match="did not register it"):
        reg.get("json_thing")
    reg.register_lazy("x", "json")
    with pytest.raises(KeyError, match="registered twice"):
        reg.register_lazy("x", "json")
    reg.register("x")(dict)  # the module's own registration replaces the promise
    assert reg.get("x") is dict and reg.names() == ["json_thing", "x"]  # (still promised, still failing)


def test_lazy_entry_whose_module_fails_to_import_keeps_saying_why() -> None:
    reg: Registry[object] = Registry("thing")
    reg.register_lazy("heavy", "faceforge_no_such_module_here")
    for _ in range(2):  # the second lookup names the import error too, not "unknown thing"
        with pytest.raises(ModuleNotFoundError, match="faceforge_no_such_module_here"):
            reg.get("heavy")
    assert "heavy" in reg


def test_one_thread_restores_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with workers.one_thread():
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.delenv("OMP_NUM_THREADS")
    with workers.one_thread():
        pass
    assert "OMP_NUM_THREADS" not in os.environ


def test_prepare_workers_fork_without_pytorch_and_write_the_one_process_files(
    data_dir: Path, tmp_path: Path
) -> None:
    """A ``prepare`` with YuNet never imports PyTorch (MTCNN is registered lazily), so its pool forks; the
    workers write the faces themselves; the files and the report equal one process's."""
    script = textwrap.dedent(
        """
        import shutil, sys
        from pathlib import Path
        from faceforge.deploy import align_photos
        from faceforge.deploy.prepare import prepare_folder
        from faceforge.core.workers import start_method
        align_photos.MIN_PHOTOS_PER_WORKER = 4
        lfw, tmp = Path(sys.argv[1]), Path(sys.argv[2])
        src = tmp / "photos"
        for person in sorted(lfw.iterdir())[:12]:
            photo = sorted(person.glob("*.jpg"))[0]
            (src / person.name).mkdir(parents=True)
            shutil.copy(photo, src / person.name / photo.name)
        (src / person.name / "broken.jpg").write_bytes(b"not a jpeg")
        method = start_method()
        reports = []
        for workers in (1, 2):
            rep = prepare_folder(src, tmp / f"w{workers}", align_photos.DetectorSpec("yunet"), workers=workers,
                                 progress=False)
            reports.append({k: v for k, v in rep.to_dict().items() if k != "out_dir"})
        assert reports[0] == reports[1], reports
        assert reports[0]["faces_written"] == 12 and len(reports[0]["unreadable"]) == 1, reports[0]
        files = sorted(p.relative_to(tmp / "w1") for p in (tmp / "w1").rglob("*.jpg"))
        assert files == sorted(p.relative_to(tmp / "w2") for p in (tmp / "w2").rglob("*.jpg"))
        assert all((tmp / "w1" / f).read_bytes() == (tmp / "w2" / f).read_bytes() for f in files)
        print(method, "torch" in sys.modules)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(data_dir / "lfw" / "images"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["fork", "False"]
