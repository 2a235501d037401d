"""The one Ray adapter (stages/base.py): named operators, managed knobs, actor pools."""

from __future__ import annotations

import pyarrow as pa
import pytest

from unsafe2safe_ray.stages.base import Resources, flat_map, map_batches, named


class _AddOne:
    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.table({"x": [v + 1 for v in batch.column("x").to_pylist()]})


def test_named_functions_and_classes_carry_the_stage_name():
    assert named(lambda b: b, "detect").__name__ == "detect"
    cls = named(_AddOne, "edit")
    assert cls.__name__ == "edit" and issubclass(cls, _AddOne)


def test_managed_knobs_cannot_be_overridden():
    with pytest.raises(ValueError, match="batch_size"):
        map_batches(object(), lambda b: b, name="x", resources=Resources(), batch_size=3)
    with pytest.raises(ValueError, match="concurrency"):
        flat_map(object(), lambda r: [r], name="x", num_cpus=0.5, concurrency=2)


def test_operators_appear_under_their_names_in_ray_stats(ray_local):
    import ray.data

    ds = ray.data.from_items([{"x": i} for i in range(8)])
    ds = flat_map(ds, lambda r: [r], name="expand", num_cpus=0.25)
    ds = map_batches(ds, lambda b: b, name="tasks", resources=Resources(num_cpus=0.25, batch_size=4))
    class AddOne:  # local, so Ray pickles it by value (workers cannot import tests/)
        def __call__(self, batch: pa.Table) -> pa.Table:
            return pa.table({"x": [v + 1 for v in batch.column("x").to_pylist()]})

    ds = map_batches(ds, AddOne, name="pool", resources=Resources(num_cpus=0.25, batch_size=4, pool_size=1))
    assert sorted(r["x"] for r in ds.take_all()) == list(range(1, 9))
    stats = ds.stats()
    for name in ("FlatMap(expand)", "MapBatches(tasks)", "MapBatches(pool)"):
        assert name in stats
