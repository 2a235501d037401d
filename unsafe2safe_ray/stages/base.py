"""What a stage is, and the one adapter that turns a stage into a Ray Data step.

A stage is a small class: config in fields, its resources declared by ``resources()``, models
loaded in ``setup()`` (once per actor), and ``process(rows) -> rows`` on plain row dicts that
follow ``records.PIPELINE_SCHEMA``. Stages never import ray; ``apply_stage`` is the only place
that knows about ``map_batches``, actor pools and batch formats.

Failure handling lives here too, in one place: rows already failed skip the stage; every
attempt works on its own copies of the input rows; if a batch raises, each row is retried alone
from its untouched input, and a row that still raises becomes a failed row carrying the error
and ``error_stage``. A stage therefore only raises for errors it cannot attribute to a row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from unsafe2safe_ray import records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs, and how rows are batched for it.

    ``pool_size`` set means an actor pool of that many actors (models load once per actor);
    ``None`` means stateless tasks. ``max_tasks_in_flight`` bounds queued batches per actor.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = 8  # None: one Ray block per batch
    pool_size: int | None = None
    max_tasks_in_flight: int | None = None
    batch_format: str = "pyarrow"  # what the callable receives: "pyarrow" tables or "numpy" dicts


class Stage:
    """Base class of every pipeline stage (see the module docstring)."""

    name: ClassVar[str] = "stage"

    def __init__(self, config: Any) -> None:
        self.config = config

    def resources(self) -> Resources:
        """Resources and batch shape; read from the stage's config section by default."""
        section = getattr(self.config, self.name, None)
        if section is None:
            return Resources()
        return Resources(
            num_cpus=section.num_cpus,
            num_gpus=section.num_gpus,
            batch_size=section.batch_size,
            pool_size=section.pool_size,
            max_tasks_in_flight=section.max_tasks_in_flight,
        )

    def setup(self) -> None:
        """Load models. Called once per actor (or once per task for stateless stages)."""

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Transform live rows. Must return one row per input row, in order."""
        raise NotImplementedError

    def own_ray_step(self) -> bool:
        """True for a stage that brings its own Ray plumbing (``apply`` overridden, e.g. a
        ray.data.llm processor): it cannot share a worker with other stages."""
        return False

    def apply(self, ds: Any) -> Any:
        """Add this stage to a Ray Dataset. Overridden only by stages that bring their own
        Ray plumbing (ray.data.llm processors); everything else goes through the adapter."""
        return apply_stage(ds, self)


def run_rows(stage: Stage, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``stage`` on the live rows of a batch with per-row failure isolation."""
    live_idx = [i for i, row in enumerate(rows) if records.is_live(row)]
    if not live_idx:
        return rows
    live = [rows[i] for i in live_idx]
    start = time.perf_counter()
    try:
        # Every attempt gets fresh copies: a stage may edit its rows in place, and a batch that
        # raised halfway must not hand half-edited rows (or evidence) to the retries below.
        # Row values are immutable (bytes, str, numbers), so a shallow copy is a full one.
        out = _checked(stage, [dict(row) for row in live])
    except Exception as batch_error:  # noqa: BLE001 - isolate the failing row(s) below
        log.warning("stage %s: batch of %d failed (%s); retrying rows alone",
                    stage.name, len(live), type(batch_error).__name__)
        out = []
        for row in live:
            try:
                out.extend(_checked(stage, [dict(row)]))
            except Exception as row_error:  # noqa: BLE001 - becomes a failed row
                out.append(records.fail(dict(row), f"{stage.name}: {type(row_error).__name__}: {row_error}",
                                        stage=stage.name))
    elapsed = time.perf_counter() - start
    _StageMetrics.record(stage.name, len(live), sum(not records.is_live(r) for r in out), elapsed)
    for i, row in zip(live_idx, out):
        rows[i] = row
    return rows


def _checked(stage: Stage, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = stage.process(rows)
    if len(out) != len(rows):
        raise RuntimeError(f"stage {stage.name} returned {len(out)} rows for {len(rows)}")
    return out


def table_to_rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=records.PIPELINE_SCHEMA)


class _StageWorker:
    """Callable that Ray runs: builds its stages once (in order), then maps Arrow batches through
    them. Several stages in one worker share its process: one actor pool, no hand-over of pixel
    batches through the object store between them (``ray.colocate``)."""

    def __init__(self, *stages: Stage) -> None:
        self.stages = stages
        for stage in stages:
            stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = table_to_rows(batch)
        for stage in self.stages:
            rows = run_rows(stage, rows)
        return rows_to_table(rows)


def _task_fn(stages: tuple[Stage, ...]):
    state: dict[str, _StageWorker] = {}

    def fn(batch: pa.Table) -> pa.Table:
        # Stateless stages are cheap to set up; cache per worker process anyway.
        worker = state.get("w")
        if worker is None:
            worker = state["w"] = _StageWorker(*stages)
        return worker(batch)

    return fn


# Knobs the adapter derives from a stage's declared resources; callers may not set them.
MANAGED_KNOBS = frozenset({"batch_size", "batch_format", "compute", "concurrency", "num_cpus", "num_gpus",
                           "zero_copy_batch", "fn_constructor_args"})


def map_batches_kwargs(res: Resources) -> dict[str, Any]:
    """The Ray knobs for a stage's declared resources (the single adapter)."""
    import ray.data

    kwargs: dict[str, Any] = {
        "batch_size": res.batch_size,
        "batch_format": res.batch_format,
        "num_cpus": res.num_cpus,
        "zero_copy_batch": True,
    }
    if res.num_gpus:
        kwargs["num_gpus"] = res.num_gpus
    if res.pool_size is not None:
        strategy_kwargs: dict[str, Any] = {"size": res.pool_size}
        if res.max_tasks_in_flight is not None:
            strategy_kwargs["max_tasks_in_flight_per_actor"] = res.max_tasks_in_flight
        kwargs["compute"] = ray.data.ActorPoolStrategy(**strategy_kwargs)
    return kwargs


def named(fn: Any, name: str) -> Any:
    """``fn`` under ``name``, which Ray Data shows as the operator's name (``MapBatches(name)``)
    in ``Dataset.stats()``, logs and the dashboard. A class becomes a subclass called ``name``;
    a function or method is wrapped in a function called ``name``."""
    if isinstance(fn, type):
        return type(name, (fn,), {"__module__": fn.__module__, "__qualname__": name})

    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _refuse_managed(extra: dict[str, Any]) -> None:
    clash = sorted(MANAGED_KNOBS & set(extra))
    if clash:
        raise ValueError(f"{clash} are set by the adapter from the stage's Resources; declare them there")


def map_batches(ds: Any, fn: Any, *, name: str, resources: Resources, constructor_args: tuple = (),
                **extra: Any) -> Any:
    """The one way this package adds a ``map_batches`` step: ``fn`` (a function, or a class for
    an actor pool) named ``name``, with Ray's knobs from ``resources``. ``extra`` may carry
    other Ray arguments; managed knobs (``MANAGED_KNOBS``) raise ``ValueError``."""
    _refuse_managed(extra)
    kwargs = map_batches_kwargs(resources)
    if constructor_args:
        kwargs["fn_constructor_args"] = constructor_args
    return ds.map_batches(named(fn, name), **kwargs, **extra)


def flat_map(ds: Any, fn: Any, *, name: str, num_cpus: float, **extra: Any) -> Any:
    """The one way this package adds a ``flat_map`` step (row expansion in fractional-CPU
    tasks), named ``name``; managed knobs in ``extra`` raise ``ValueError``."""
    _refuse_managed(extra)
    return ds.flat_map(named(fn, name), num_cpus=num_cpus, **extra)


def apply_stage(ds: Any, stage: Stage) -> Any:
    """Append ``stage`` to ``ds`` as one ``map_batches`` step named after the stage."""
    return apply_stages(ds, [stage])


def combined_resources(stages: list[Stage]) -> Resources:
    """One worker's resources for ``stages`` run one after another in it: the largest CPU, GPU
    and pool request of any of them (an actor pool if any stage wants one), the first stage's
    batch size. Raises ``ValueError`` when their batch formats differ."""
    declared = [stage.resources() for stage in stages]
    formats = {res.batch_format for res in declared}
    if len(formats) > 1:
        raise ValueError(f"stages {[s.name for s in stages]} take different batch formats {sorted(formats)}; "
                         "they cannot share a worker")
    pools = [res.pool_size for res in declared if res.pool_size is not None]
    in_flight = [res.max_tasks_in_flight for res in declared if res.max_tasks_in_flight is not None]
    return Resources(num_cpus=max(res.num_cpus for res in declared),
                     num_gpus=max(res.num_gpus for res in declared),
                     batch_size=declared[0].batch_size,
                     pool_size=max(pools) if pools else None,
                     max_tasks_in_flight=min(in_flight) if in_flight else None,
                     batch_format=formats.pop())


def apply_stages(ds: Any, stages: list[Stage]) -> Any:
    """Append ``stages`` to ``ds`` as one ``map_batches`` step that runs them in order in the
    same worker (``combined_resources``), named ``a+b``; one stage is the usual case. Every
    stage keeps its own per-row failure isolation (``run_rows``) and metrics."""
    res = combined_resources(stages)
    name = "+".join(stage.name for stage in stages)
    if res.pool_size is not None:
        return map_batches(ds, _StageWorker, name=name, resources=res, constructor_args=tuple(stages))
    return map_batches(ds, _task_fn(tuple(stages)), name=name, resources=res)


class _StageMetrics:
    """Per-stage counters exported through ``ray.util.metrics`` (Ray dashboard, Prometheus):
    rows processed and failed, and seconds spent, tagged with the stage name. Created once per
    worker process; a no-op outside Ray."""

    _instance: "_StageMetrics | None" = None

    def __init__(self) -> None:
        from ray.util.metrics import Counter

        self.rows = Counter("unsafe2safe_stage_rows_total", "Rows a stage processed, by outcome.",
                            tag_keys=("stage", "outcome"))
        self.seconds = Counter("unsafe2safe_stage_seconds_total", "Seconds spent in a stage's batches.",
                               tag_keys=("stage",))

    @classmethod
    def record(cls, stage: str, processed: int, failed: int, seconds: float) -> None:
        import sys

        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return
        if cls._instance is None:
            cls._instance = cls()
        metrics = cls._instance
        # Ray's Counter.inc refuses 0: only positive amounts are recorded.
        if processed > failed:
            metrics.rows.inc(processed - failed, tags={"stage": stage, "outcome": "ok"})
        if failed:
            metrics.rows.inc(failed, tags={"stage": stage, "outcome": "failed"})
        if seconds > 0:
            metrics.seconds.inc(seconds, tags={"stage": stage})
