"""Atomic outputs: a failure leaves neither a partial file/folder nor a temp file behind."""

from __future__ import annotations

import pytest

from vlm3d_ttg.errors import InvalidInputError
from vlm3d_ttg.io import atomic_path, check_writable, write_directory_atomic, write_text_atomic


def test_folder_write_is_atomic(tmp_path):
    def fails(staging):
        (staging / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_directory_atomic(tmp_path / "model", fails)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a staging folder is left


def test_existing_folder_is_kept(tmp_path):
    write_directory_atomic(tmp_path / "model", lambda d: (d / "a.txt").write_text("first"))
    write_directory_atomic(tmp_path / "model", lambda d: (d / "a.txt").write_text("second"))
    assert (tmp_path / "model" / "a.txt").read_text() == "first"


def test_failed_file_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "result.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "mesh.glb") as tmp:
        assert tmp.suffix == ".glb" and tmp.parent == tmp_path
        tmp.write_bytes(b"glTF")
    assert (tmp_path / "mesh.glb").read_bytes() == b"glTF"


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "x.glb") == tmp_path / "new" / "deeper" / "x.glb"
    with pytest.raises(InvalidInputError, match="is a directory"):
        check_writable(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        check_writable(blocker / "x.glb")


def test_a_folder_written_without_its_required_files_never_takes_the_place(tmp_path):
    # (transformers' save_pretrained off rank 0 of a process group writes a processor but no weights)
    with pytest.raises(RuntimeError, match="made no model.safetensors"):
        write_directory_atomic(tmp_path / "critic", lambda d: (d / "config.json").write_text("{}"),
                               required=("config.json", "model.safetensors"))
    assert not (tmp_path / "critic").exists() and list(tmp_path.iterdir()) == []
    write_directory_atomic(tmp_path / "critic", lambda d: [(d / n).write_text("x") for n in ("config.json", "model.safetensors")],
                           required=("config.json", "model.safetensors"))
    assert sorted(p.name for p in (tmp_path / "critic").iterdir()) == ["config.json", "model.safetensors"]
