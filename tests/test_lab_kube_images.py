"""The lab's packed images follow the state directory they were packed for.

A process that ran one lab and then another (a private lab of a test whose
directory is gone, then the shared one) once got the first lab's archive path
for the pause image, and its node's containerd failed to import it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.lab import state
from cluster.lab.kube import images, paths


@pytest.fixture
def pause_binary() -> None:
    if not (paths.bin_dir() / "pause").is_file():
        pytest.fail(
            f"{paths.bin_dir() / 'pause'} is missing: `bash scripts/build-kube.sh` builds it",
            pytrace=False,
        )


def _archive(ref: str, state_dir: Path) -> Path:
    repo, tag = ref.removeprefix("rto.local/").split(":")
    return state_dir / "images" / f"kube-{repo}-{tag}.oci.tar"


def test_pause_image_is_packed_again_for_another_state_dir(
    pause_binary: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    monkeypatch.setattr(state, "STATE_DIR", first)
    ref = images.pause_image()
    assert _archive(ref, first).is_file()
    monkeypatch.setattr(state, "STATE_DIR", second)
    # Same content, same tag; the archive is written where this lab keeps them.
    assert images.pause_image() == ref
    assert _archive(ref, second).is_file()


def test_a_removed_archive_is_packed_again(
    pause_binary: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "STATE_DIR", tmp_path)
    ref = images.pause_image()
    _archive(ref, tmp_path).unlink()
    assert images.pause_image() == ref
    assert _archive(ref, tmp_path).is_file()
