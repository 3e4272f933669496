"""Atomic, deterministic outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.io import atomic_write, load_arrays, save_arrays


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"complete old output")

    def half_then_crash(f) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"complete old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_arrays_round_trip_with_identical_bytes(tmp_path: Path) -> None:
    arrays = {"train_x": np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32),
              "train_fine": np.arange(5), "meta_task": np.array("coarse_to_fine")}
    a, b = save_arrays(tmp_path / "a.npz", arrays), save_arrays(tmp_path / "b.npz", dict(reversed(arrays.items())))
    assert a.read_bytes() == b.read_bytes()
    back = load_arrays(a)
    assert back.keys() == arrays.keys()
    assert back["meta_task"].shape == () and str(back["meta_task"]) == "coarse_to_fine"
    np.testing.assert_array_equal(back["train_x"], arrays["train_x"])


def test_corrupt_array_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not a readable array file"):
        load_arrays(bad)
    with pytest.raises(FileNotFoundError, match="missing.npz: expected output of an earlier stage"):
        load_arrays(tmp_path / "missing.npz")


def test_written_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    """mkstemp's 0600 must not leak: a metrics file is read by other users and tools."""
    import os
    import stat

    from pipeline.io import write_text

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "m.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
