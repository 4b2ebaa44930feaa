"""Images read in place from archives: chunked streams, tar indexes (built once, cached, or shipped), zips, errors."""

import os
import pickle
import tarfile

import numpy as np
import pytest

from geor_jax.data import archives, builder
from tests import data_fixtures


def test_chunked_file_reads_across_chunk_borders(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    whole = tmp_path / "whole"
    whole.write_bytes(data)
    paths = data_fixtures.split_file(str(whole), str(tmp_path / "part"), 4)
    with archives.ChunkedFile(paths) as stream:
        assert stream.size == len(data)
        for offset, size in [(0, 10), (2490, 30), (2500, 5000), (9990, 100), (0, 10_000), (10_000, 5)]:
            assert stream.pread(offset, size) == data[offset:offset + size]
        stream.seek(7499)
        assert stream.read(3) == data[7499:7502] and stream.tell() == 7502


def _members(count=6):
    return {f"mp-16-images/{i:02x}_a_{i}.jpg": data_fixtures.jpeg_bytes(i) for i in range(count)}


def test_split_tar_is_indexed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    members = _members()
    data_fixtures.write_tar(str(tmp_path / "whole.tar"), members)
    data_fixtures.split_file(str(tmp_path / "whole.tar"), str(tmp_path / "mp-16-images"), 3)
    index_dir = str(tmp_path / "indexes")
    locator = archives.ImageLocator(str(tmp_path), ["mp-16-images"], chunks=["mp-16-images[0-9][0-9]"],
                                    index_dir=index_dir)
    for name, data in members.items():
        source = locator.find(name.split("/")[1])
        assert source[0] == "tar" and archives.read_source(source) == data
    assert locator.find("nowhere.jpg") is None
    assert len(os.listdir(index_dir)) == 1

    def no_scan(*args):
        raise AssertionError("the tar was scanned again")

    monkeypatch.setattr(archives, "index_tar", no_scan)
    again = archives.ImageLocator(str(tmp_path), ["mp-16-images"], chunks=["mp-16-images[0-9][0-9]"],
                                  index_dir=index_dir)
    name, data = next(iter(members.items()))
    assert archives.read_source(again.find(name.split("/")[1])) == data


def test_shipped_g3_index_is_read_instead_of_scanning(tmp_path, monkeypatch):
    members = _members()
    infos = data_fixtures.write_tar(str(tmp_path / "whole.tar"), members)
    data_fixtures.split_file(str(tmp_path / "whole.tar"), str(tmp_path / "mp-16-images"), 3)
    data_fixtures.write_g3_tar_index(str(tmp_path / "metadata" / "tar_index.pkl"), infos)
    monkeypatch.setattr(archives, "index_tar", lambda *a: pytest.fail("scanned the tar despite a shipped index"))
    locator = archives.ImageLocator(str(tmp_path), ["mp-16-images"], chunks=["mp-16-images[0-9][0-9]"],
                                    shipped_indexes=["metadata/tar_index.pkl"])
    for name, data in members.items():
        assert archives.read_source(locator.find(name.split("/")[1])) == data


def test_a_shipped_index_of_another_archive_is_refused(tmp_path):
    infos = data_fixtures.write_tar(str(tmp_path / "other.tar"), {f"x/{i}.jpg": b"z" * (700 + i) for i in range(4)})
    data_fixtures.write_tar(str(tmp_path / "mp-16-images.tar"), _members(3))
    data_fixtures.write_g3_tar_index(str(tmp_path / "tar_index.pkl"), infos)
    with pytest.raises(archives.ArchiveError, match="tar_index.pkl: no header for 'x/0.jpg'.*another archive"):
        archives.ImageLocator(str(tmp_path), [""], archives=["mp-16-images.tar"], shipped_indexes=["tar_index.pkl"])


def test_a_pickled_index_runs_no_code(tmp_path):
    data_fixtures.write_tar(str(tmp_path / "mp-16-images.tar"), _members(2))

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    with open(tmp_path / "tar_index.pkl", "wb") as f:
        pickle.dump({"a.jpg": Exploit()}, f)
    with pytest.raises(archives.ArchiveError, match="refusing posix.system"):
        archives.ImageLocator(str(tmp_path), [""], archives=["mp-16-images.tar"], shipped_indexes=["tar_index.pkl"])
    assert not os.path.exists("pwned") and not (tmp_path / "pwned").exists()


def test_compressed_tar_is_a_one_line_error(tmp_path):
    with tarfile.open(tmp_path / "images.tar", "w:gz") as tar:
        tar.add(__file__, arcname="a.jpg")
    with pytest.raises(archives.ArchiveError, match="images.tar: not an uncompressed tar.*gunzip") as error:
        archives.ImageLocator(str(tmp_path), [""], archives=["images.tar"])
    assert "\n" not in str(error.value)


def test_zip_members_are_read_by_name(tmp_path):
    members = {"yfcc4k/1.jpg": b"one", "yfcc4k/sub/2.jpg": b"two"}
    data_fixtures.write_zip(str(tmp_path / "yfcc4k.zip"), members)
    locator = archives.ImageLocator(str(tmp_path), ["yfcc4k_rgb_images", "yfcc4k", ""], archives=["*.zip"])
    assert archives.read_source(locator.find("1.jpg")) == b"one"
    assert archives.read_source(locator.find("sub/2.jpg")) == b"two"
    assert locator.find("2.jpg") is None  # a base name matches only where the folder is known


def test_a_tar_cut_short_leaves_rows_unreadable_or_missing_not_a_crash(tmp_path):
    """A split tar missing its last chunk: whole members read, a cut one is unreadable, the rest are missing."""
    members = _members(4)
    infos = data_fixtures.write_tar(str(tmp_path / "whole.tar"), members)
    chunks = data_fixtures.split_file(str(tmp_path / "whole.tar"), str(tmp_path / "mp-16-images"), 2)
    kept = os.path.getsize(chunks[0])
    os.remove(chunks[1])
    expected = {"written": sum(i.offset_data + i.size <= kept for i in infos),
                "image_unreadable": sum(i.offset + 512 <= kept < i.offset_data + i.size for i in infos)}
    expected["image_missing"] = 4 - expected["written"] - expected["image_unreadable"]
    assert expected["written"] and expected["image_missing"]
    with open(tmp_path / "MP16_Pro_filtered.csv", "w") as f:
        f.write("IMG_ID,LAT,LON\n" + "".join(f"{n.split('/')[1]},35.0,139.0\n" for n in members))
    _, report = builder.build_records("mp16_pro", str(tmp_path), str(tmp_path / "data"), num_workers=0,
                                      max_missing_fraction=1.0, max_bad_fraction=1.0)
    assert {"written": report.written, "image_unreadable": report.bad["image_unreadable"],
            "image_missing": report.bad["image_missing"]} == expected
