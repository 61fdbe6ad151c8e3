"""Local file publication and the artifact-root layout (``schemas/storage.py``)."""

import pytest

from schemas.storage import at_root, root_of, write_bytes_atomic, write_image_atomic, write_text_atomic


def test_at_root_finds_stage_and_key_under_any_root(tmp_path):
    recorded = "old/cwd/root/maps/ab12"
    assert at_root(tmp_path, recorded) == str(tmp_path / "maps" / "ab12")
    assert at_root("s3://bucket/runs/", recorded) == "s3://bucket/runs/maps/ab12"
    assert root_of("s3://bucket/runs/maps/ab12/") == "s3://bucket/runs"
    assert root_of(tmp_path / "maps" / "ab12") == str(tmp_path)
    assert at_root(root_of("s3://b/r/scores/k"), "/mirror/r/maps/ab12") == "s3://b/r/maps/ab12"


def test_atomic_writes_replace_whole_files_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    assert write_text_atomic(target, "ρ one") == target
    write_text_atomic(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    write_text_atomic(target, "lone \udcff", errors="replace")
    assert target.read_bytes() == b"lone ?"
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "lone \udcff")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")
    assert target.read_bytes() == b"lone ?"  # a failed write leaves the old file whole
    import numpy as np
    from PIL import Image

    png = write_image_atomic(tmp_path / "m.png", np.array([[0, 300]], dtype=np.uint16), format="PNG")
    assert np.asarray(Image.open(png)).tolist() == [[0, 300]]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "m.png", "sub"]
