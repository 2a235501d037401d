"""Integrity: markers record sizes and checksums; damage is listed by `status`, refused by the
reader, and rewritten by `--shards damaged`; `iter_samples()` streams and never yields a
committed image row without its image."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _corpus import write_good_images
from unsafe2safe_ray import open_output
from unsafe2safe_ray.cli import app
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job, shard_status
from unsafe2safe_ray.storage.commits import IntegrityError

pytestmark = pytest.mark.usefixtures("ray_local")
N = 8  # 4 shards of 2


def _config():
    return load_config("none", overrides=["io.shard_size=2", "io.read_batch_size=2", "io.write_batch_size=2"])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    write_good_images(root / "in", N)
    run_job(str(root / "in"), str(root / "out"), _config(), run_id="first")
    return root


@pytest.fixture()
def out(base, tmp_path):
    """A private copy of the committed output (its plan still points at the shared input)."""
    dest = tmp_path / "out"
    shutil.copytree(base / "out", dest)
    return dest


def _marker(out: Path, shard: int) -> dict:
    return json.loads((out / "_commits" / f"shard-{shard:05d}.json").read_text())


def _file(out: Path, shard: int, kind: str) -> Path:
    [rel] = _marker(out, shard)["files"][kind]
    return out / rel


def _strip_sizes(out: Path, shard: int) -> None:
    path = out / "_commits" / f"shard-{shard:05d}.json"
    marker = json.loads(path.read_text())
    marker.pop("file_info", None)
    marker.pop("version", None)
    path.write_text(json.dumps(marker))


def test_markers_record_each_files_size_and_checksum(out):
    for shard in range(4):
        text = (out / "_commits" / f"shard-{shard:05d}.json").read_text()
        marker = json.loads(text)
        assert len(text) < 4000 and text.count("\n") > 5  # small, and readable JSON
        listed = {rel for names in marker["files"].values() for rel in names}
        assert set(marker["file_info"]) == listed and len(listed) == 3
        for rel, info in marker["file_info"].items():
            data = (out / rel).read_bytes()
            assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    st = shard_status(str(out), verify=True)
    assert st["damaged"] == [] and st["unverifiable"] == [] and st["damage"] == {}


def _damage(out: Path) -> dict[int, Path]:
    tar = _file(out, 0, "images")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # truncated tar
    captions = _file(out, 1, "captions")
    captions.unlink()  # deleted Parquet part
    private = _file(out, 2, "private")
    data = bytearray(private.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    private.write_bytes(bytes(data))
    return {0: tar, 1: captions, 2: private}


def test_damage_is_listed_refused_and_rewritten(out, base):
    damaged = _damage(out)
    # Sizes are always checked; the flipped bit needs checksums.
    st = shard_status(str(out))
    assert st["damaged"] == [0, 1] and st["committed"] == [0, 1, 2, 3]
    st = shard_status(str(out), verify=True)
    assert st["damaged"] == [0, 1, 2]
    assert st["damage"]["0"] == [f"images/{damaged[0].name}: {damaged[0].stat().st_size} bytes, "
                                 f"marker recorded {_marker(out, 0)['file_info'][f'images/{damaged[0].name}']['size']}"]
    assert st["damage"]["1"] == [f"captions/{damaged[1].name}: missing"]
    assert st["damage"]["2"] == [f"private/{damaged[2].name}: sha256 differs from the marker's"]

    runner = CliRunner()
    result = runner.invoke(app, ["status", str(out), "--verify"])
    assert result.exit_code == 1 and "damaged       3  (shards 0-2)" in result.output
    for path in damaged.values():
        assert path.name in result.output
    assert "--shards damaged" in result.output
    plain = runner.invoke(app, ["status", str(out)])
    assert plain.exit_code == 1 and "damaged       2  (shards 0-1)" in plain.output

    # The reader: one clear error naming the damaged file.
    reader = open_output(str(out))
    with pytest.raises(IntegrityError, match=rf"{damaged[1].name} \(shard 1\): missing"):
        reader.captions()
    with pytest.raises(IntegrityError, match=rf"{damaged[0].name} \(shard 0\): \d+ bytes, its marker recorded \d+"):
        next(iter(reader.iter_samples()))
    with pytest.raises(IntegrityError, match=rf"{damaged[2].name} \(shard 2\): sha256 differs"):
        reader.private()

    # --shards damaged rewrites exactly those shards; then status is clean.
    before3 = _marker(out, 3)
    redo = run_job(str(base / "in"), str(out), _config(), shards="damaged", run_id="repair")
    assert redo.selected_shards == [0, 1, 2] and redo.committed_shards == [0, 1, 2]
    assert _marker(out, 3) == before3
    st = shard_status(str(out), verify=True)
    assert st["damaged"] == [] and st["pending"] == []
    assert runner.invoke(app, ["status", str(out), "--verify"]).exit_code == 0
    for path in damaged.values():
        assert not path.exists()  # the replaced run's files are gone
    reader = open_output(str(out))
    keys = reader.captions().column("key").to_pylist()
    assert sorted(keys) == [f"{i:09d}" for i in range(N)]
    samples = list(reader.iter_samples())
    assert len(samples) == N and all(s["image"] is not None for s in samples)
    assert run_job(str(base / "in"), str(out), _config(), shards="damaged", run_id="noop").selected_shards == []


def _cut_after_first_sample(tar_path: Path) -> None:
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    assert len(members) == 4  # two samples: image + sidecar each
    first = members[1]
    end = first.offset_data + -(-first.size // 512) * 512
    tar_path.write_bytes(tar_path.read_bytes()[:end])


def test_tar_cut_after_one_sample_never_yields_an_image_row_without_image(out):
    tar = _file(out, 0, "images")
    _cut_after_first_sample(tar)
    with pytest.raises(IntegrityError, match=rf"{tar.name} \(shard 0\): \d+ bytes"):
        list(open_output(str(out)).iter_samples())
    # Without recorded sizes (a marker from an older version) the join still refuses.
    _strip_sizes(out, 0)
    st = shard_status(str(out))
    assert st["unverifiable"] == [0] and st["damaged"] == []
    samples = open_output(str(out)).iter_samples()
    first = next(samples)
    assert first["key"] == "000000000" and first["image"] is not None
    with pytest.raises(IntegrityError, match=r"no image for the committed passed row 000000001"):
        next(samples)


def test_old_markers_without_sizes_still_read_and_are_reported_unverifiable(out):
    for shard in range(4):
        _strip_sizes(out, shard)
    st = shard_status(str(out), verify=True)
    assert st["unverifiable"] == [0, 1, 2, 3] and st["damaged"] == []
    assert len(list(open_output(str(out)).iter_samples())) == N
    _file(out, 3, "private").unlink()  # missing files are still found
    assert shard_status(str(out))["damaged"] == [3]
    result = CliRunner().invoke(app, ["status", str(out)])
    assert "unverifiable  4  0-3" in result.output


def test_iter_samples_streams(out, monkeypatch):
    from unsafe2safe_ray import output

    decoded = []
    real = output.image_from_bytes

    def counting(data):
        decoded.append(len(data))
        return real(data)

    monkeypatch.setattr(output, "image_from_bytes", counting)
    samples = open_output(str(out)).iter_samples()
    first = next(samples)
    assert first["key"] == "000000000" and first["meta"]["key"] == "000000000"
    assert first["caption"]["status"] == "passed" and first["image"].shape[2] == 3
    assert len(decoded) == 1  # one image decoded before the first sample, not a whole shard
    rest = list(samples)
    assert [s["key"] for s in [first, *rest]] == [f"{i:09d}" for i in range(N)]
    assert all(s["meta"]["key"] == s["key"] == s["caption"]["key"] for s in rest)


def test_dataset_checks_sizes_too(out):
    tar = _file(out, 3, "images")
    tar.write_bytes(tar.read_bytes()[:-512])
    assert open_output(str(out)).captions().num_rows == N
    with pytest.raises(Exception, match="IntegrityError|damaged committed file"):
        open_output(str(out)).dataset().count()

