"""Output keys are unique by construction (issue 14 item 2): two different ids never share a file
name, a tar member or an object key, whatever they hold; and every key is path-safe and dot-free,
so it is the webdataset sample name as it is."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sdbatch.manifests.ids import MAX_KEY_LENGTH, safe_key

# Ids built to collide: separators, dots, escapes-lookalikes, long shared prefixes, any unicode.
_PIECES = st.sampled_from(["a", "b", "_", "-", ".", "..", " ", "/", "\\", "~", "~2e", "~~", "%2e", "\x00", "é",
                           "猫", "\U0001F600", "c8687a08aa5d", "x" * 60])
IDS = st.one_of(
    st.text(max_size=200),
    st.lists(_PIECES, max_size=12).map("".join),
    st.tuples(st.just("p" * 150), st.text(max_size=8)).map("".join),
)
_PATH_SAFE = re.compile(r"[A-Za-z0-9_~-]+")


def assert_path_safe(key: str) -> None:
    assert _PATH_SAFE.fullmatch(key), key  # so no "/", "\\", ".", "..", NUL or space
    assert not key.startswith(("-", ".")), key
    assert 0 < len(key) <= MAX_KEY_LENGTH, key


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(st.lists(IDS, min_size=2, max_size=8, unique=True))
def test_distinct_ids_give_distinct_path_safe_dot_free_keys(ids):
    keys = [safe_key(i) for i in ids]
    assert len(set(keys)) == len(keys), list(zip(ids, keys))
    for key in keys:
        assert_path_safe(key)


def test_the_reported_collisions_are_gone():
    assert safe_key("a_b-c8687a08aa5d") != safe_key("a b")  # files layout
    assert safe_key("a.b") != safe_key("a_b")  # webdataset: the key is the sample name, no dot
    assert "." not in safe_key("a.b")


def test_common_ids_are_their_own_keys():
    for row_id in ("row_001", "cat-01", "r0123456789abcdef01234567", "IMG_2024-05-01_x", "p0-s7-g5_5"):
        assert safe_key(row_id) == row_id


def test_escapes_are_readable_and_long_ids_keep_a_prefix():
    assert safe_key("a b") == "a~20b"
    assert safe_key("ok-id.1") == "ok-id~2e1"
    assert safe_key("-x") == "~2dx"
    long_a, long_b = "x" * 500 + "a", "x" * 500 + "b"
    assert safe_key(long_a) != safe_key(long_b)
    assert safe_key(long_a).startswith("x" * 80) and "~~" in safe_key(long_a)
    assert len(safe_key(long_a)) == MAX_KEY_LENGTH
    assert_path_safe(safe_key(""))


def test_two_rows_whose_ids_collided_give_two_images_in_both_layouts(tmp_path, tiny_base):
    import tarfile

    import pyarrow.dataset as ds
    from click.testing import CliRunner

    from helpers import write_manifest
    from sdbatch.cli.main import main

    ids = ["a_b-c8687a08aa5d", "a b", "a.b", "a_b"]
    manifest = write_manifest(tmp_path / "m.parquet", {"id": ids, "prompt": ["p"] * 4, "steps": [2] * 4,
                                                       "width": [32] * 4, "height": [32] * 4})
    for layout in ("files", "webdataset"):
        out = tmp_path / layout
        result = CliRunner().invoke(main, ["run", str(manifest), "--model", tiny_base, "--out", str(out), "--device",
                                           "cpu", "--executor", "local", "--layout", layout], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        meta = ds.dataset(str(out / "metadata")).to_table().to_pylist()
        assert sorted(r["id"] for r in meta) == sorted(ids) and all(r["status"] == "ok" for r in meta)
        images = {r["image"] for r in meta}
        assert len(images) == 4, images
        if layout == "files":
            assert all((out / image).is_file() for image in images)
        else:
            (tar,) = (out / "shards").glob("*.tar")
            with tarfile.open(tar) as f:
                members = [m.name for m in f.getmembers() if m.name.endswith(".png")]
            assert len(members) == 4 and {m.split(".", 1)[0] for m in members} == {safe_key(i) for i in ids}
