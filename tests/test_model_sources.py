"""``unsafe2safe_ray.models``: one resolver for every loader (hub id, local folder, s3:// copied
once per node, tiny://). The S3 cases use the real moto server and the real loaders."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from unsafe2safe_ray import models
from unsafe2safe_ray.models import hub_kwargs, resolve_model_source, source_kind


def test_kinds_and_pass_through(tmp_path, monkeypatch):
    assert source_kind("Qwen/Qwen2.5-VL-7B-Instruct") == "hub"
    assert source_kind("tiny://clip") == "tiny"
    assert source_kind("s3://bucket/model") == source_kind("gs://bucket/model") == "remote"
    assert source_kind(str(tmp_path)) == source_kind("file:///x") == source_kind("./m") == "local"
    # Hub ids stay ids (the hub libraries honour HF_HUB_OFFLINE); the revision goes to from_pretrained.
    assert resolve_model_source("org/name", revision="abc") == "org/name"
    assert hub_kwargs("org/name", "abc") == {"revision": "abc"}
    assert hub_kwargs(str(tmp_path), "abc") == hub_kwargs("org/name", None) == {}
    assert resolve_model_source(f"file://{tmp_path}") == str(tmp_path)
    # ray.data.llm downloads s3:// and gs:// on each node itself.
    assert resolve_model_source("s3://bucket/model", keep_remote=True) == "s3://bucket/model"
    with pytest.raises(ValueError, match="unknown tiny model"):
        resolve_model_source("tiny://nope")


@pytest.fixture()
def copies(monkeypatch, tmp_path):
    """A fresh per-test model cache; counts the remote copies made into it."""
    monkeypatch.setenv("U2S_MODEL_CACHE", str(tmp_path / "model-cache"))
    made: list[Path] = []
    real = models._copy_tree

    def counting(fs, files, dest):
        made.append(dest)
        real(fs, files, dest)

    monkeypatch.setattr(models, "_copy_tree", counting)
    return made


def _upload(fs, local: Path, uri: str) -> None:
    for file in local.rglob("*"):
        if file.is_file() and file.name != ".complete":
            fs.put_file(str(file), f"{uri}/{file.relative_to(local).as_posix()}")


@pytest.mark.slow
def test_editor_and_clip_load_from_s3_copied_once(s3_bucket, tiny_models, copies):
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.editors import EditRequest, load_editor
    from unsafe2safe_ray.eval.quality import ClipScorer

    bucket, fs = s3_bucket
    _upload(fs, tiny_models / "instruct_pix2pix", f"{bucket}/models/ip2p")
    _upload(fs, tiny_models / "clip", f"{bucket}/models/clip")
    editor_uri, clip_uri = f"s3://{bucket}/models/ip2p", f"s3://{bucket}/models/clip"

    # Concurrent actors on one node: one copies, the others wait for it and reuse the copy.
    paths: list[str] = []
    threads = [threading.Thread(target=lambda: paths.append(resolve_model_source(editor_uri))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(copies) == 1 and len(set(paths)) == 1
    assert (Path(paths[0]) / "model_index.json").is_file() and (Path(paths[0]) / ".complete").is_file()

    config = load_config("tiny", overrides=["edit.editor=instruct-pix2pix", f"edit.instruct_pix2pix_model={editor_uri}",
                                            "edit.steps=1"])
    editor = load_editor("instruct-pix2pix", config)
    image = np.full((64, 64, 3), 128, np.uint8)
    out = editor.edit([EditRequest(image=image, instruction="make it blue")])[0]
    assert out.shape == image.shape and out.dtype == np.uint8

    scorer = ClipScorer(clip_uri)
    assert scorer.image_embeddings([image]).shape[0] == 1
    ClipScorer(clip_uri)  # loading again reuses the node's copy
    assert len(copies) == 2  # one per model, however many loads

    # A changed prefix is a new listing digest, so it is copied again (never a stale model).
    fs.pipe(f"{bucket}/models/clip/extra.txt", b"changed")
    assert resolve_model_source(clip_uri) != str(copies[1]).rsplit(".tmp", 1)[0]
    assert len(copies) == 3
