"""The typed row contract: nested Arrow types in the published tables, the box frame stated in
the schema, and outputs written by the previous schema version (JSON text columns) still read."""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from _corpus import write_good_images
from unsafe2safe_ray import records
from unsafe2safe_ray.config import load_config


def test_no_json_text_columns_remain_and_boxes_state_their_frame():
    for schema in (records.PIPELINE_SCHEMA, records.CAPTIONS_SCHEMA, records.PRIVATE_SCHEMA):
        for name in ("regions", "verification", "categories", "privacy_review"):
            if name in schema.names:
                assert not pa.types.is_string(schema.field(name).type), (schema, name)
    bbox = records.REGION.field("bbox")
    assert bbox.metadata[b"frame"] == b"decoded image" and bbox.metadata[b"exclusive"] == b"x1,y1"
    assert "text" not in records.PUBLIC_REGION.names
    assert records.CAPTIONS_SCHEMA.metadata[b"unsafe2safe.schema_version"] == records.SCHEMA_VERSION.encode()


def _as_version_1(table: pa.Table) -> pa.Table:
    """A captions part as version 1 wrote it: nested values as JSON text, no version metadata."""
    rows = table.to_pylist()
    for row in rows:
        row["regions"] = json.dumps([{"category": "people", "bbox": [1, 2, 10, 20], "score": 0.9,
                                      "source": "detector", "kind": "face"}])
        row["verification"] = json.dumps({"ok": True, "checks_run": ["faces", "text"], "leaks": []})
    fields = [pa.field(f.name, pa.string()) if f.name in ("regions", "verification") else f
              for f in records.CAPTIONS_SCHEMA]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def test_an_output_written_by_schema_version_1_reads_typed(tmp_path, ray_local):
    from unsafe2safe_ray.job import run_job
    from unsafe2safe_ray.output import open_output

    write_good_images(tmp_path / "in", 2)
    run_job(str(tmp_path / "in"), str(tmp_path / "out"), load_config("none"))
    marker_path = next((tmp_path / "out" / "_commits").glob("shard-*.json"))
    marker = json.loads(marker_path.read_text())
    [rel] = marker["files"]["captions"]
    part = tmp_path / "out" / rel
    buf = io.BytesIO()
    pq.write_table(_as_version_1(pq.read_table(part)), buf)
    part.write_bytes(buf.getvalue())
    marker["file_info"][rel] = {"size": len(buf.getvalue()), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    marker_path.write_text(json.dumps(marker))

    captions = open_output(str(tmp_path / "out")).captions()
    assert captions.schema.field("regions").type == pa.list_(records.PUBLIC_REGION)
    row = captions.to_pylist()[0]
    assert row["regions"] == [{"category": "people", "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.9,
                               "source": "detector", "kind": "face"}]
    assert row["verification"]["ok"] is True and row["verification"]["checks_run"] == ["faces", "text"]
