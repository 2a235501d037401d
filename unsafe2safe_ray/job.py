"""The driver: the one place that assembles the Dataset.

Steps: 0. take the output's lease (one writer per output), 1. plan, 2. select shards (refusing
a changed config or a reused run id), 3. clean up debris, 4. read + decode, 5. profile stages,
6. write parts, 7. commit each shard as soon as all its rows are written, 8. run report,
9. release the lease (also on error).

The driver never collects the dataset: it streams small summary rows (key, shard, status, files)
and keeps per-shard bookkeeping only for shards still in flight.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from unsafe2safe_ray import records
from unsafe2safe_ray.config import JobConfig
from unsafe2safe_ray.plan.planner import (Plan, load_plan, make_or_load_plan, plan_chunks, plan_from_output,
                                          read_plan_chunk, select_shards)
from unsafe2safe_ray.stages import base as ray_adapter
from unsafe2safe_ray.stages import load_stage_class
from unsafe2safe_ray.stages.decode import DecodeStage
from unsafe2safe_ray.stages.load_captions import LoadCaptionsStage
from unsafe2safe_ray.stages.write import WriteStage
from unsafe2safe_ray.storage import commits as commit_store
from unsafe2safe_ray.storage import fs as storage
from unsafe2safe_ray.storage import lease as lease_store
from unsafe2safe_ray.storage.layout import COMMITS, DATA_DIRS, PLAN, RUNS, OutputLayout
from unsafe2safe_ray.storage.redact import redact_value

log = logging.getLogger(__name__)

_RUN_ID_OK = re.compile(r"^[A-Za-z0-9_.]+$")
# Stages that only inspect. "--stages inspect" stops before the first stage not listed here;
# "--stages edit" starts there, with the earlier run's captions loaded back into the rows.
INSPECT_STAGES = ("detect", "caption", "instruct")
STAGE_SELECTIONS = ("all", "inspect", "edit")


@dataclass
class ShardTracker:
    """Rows seen so far for one in-flight shard."""

    expected: int
    keys: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    files: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    file_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> size, sha256


@dataclass
class RunResult:
    """What a run did (also written to ``_runs/<run_id>.json``)."""

    run_id: str
    output_uri: str
    selected_shards: list[int]
    committed_shards: list[int]
    incomplete_shards: list[int]
    counts: dict[str, int]
    seconds: float
    stage_seconds: dict[str, float]
    # failed_by_stage {stage: rows}, safety_net_flags (rows only the detectors flagged) and
    # verification (required / enabled / skipped checks), shown by `run` and in _runs/.
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return sum(self.counts.values()) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "output_uri": self.output_uri,
            "selected_shards": len(self.selected_shards), "committed_shards": self.committed_shards,
            "incomplete_shards": self.incomplete_shards, "counts": self.counts,
            "images": sum(self.counts.values()), "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            **self.details,
        }


def new_run_id() -> str:
    """``$RAY_JOB_SUBMISSION_ID`` when submitted with ``ray job submit``, else a timestamp."""
    submission = os.environ.get("RAY_JOB_SUBMISSION_ID")
    if submission:
        return re.sub(r"[^A-Za-z0-9_.]", "_", submission)
    return time.strftime("%Y%m%dT%H%M%S") + "_" + uuid.uuid4().hex[:6]


class RayAddressError(ValueError):
    """A Ray address that does not answer (one line, exit 2 in the CLI)."""


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
    """Raise ``RayAddressError`` when ``address`` (``host:port``, ``ray://host:port``,
    ``http://host:port``) refuses a TCP connection within ``timeout_s``. ``auto`` is left to Ray."""
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise RayAddressError(f"Ray address {address!r} is not host:port (or ray://host:port)")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise RayAddressError(f"no Ray cluster answers at {address} ({e.strerror or e}); start it, fix --address / "
                              "RAY_ADDRESS, or leave both unset to run on a local Ray") from None


def start_local_ray(**kwargs: Any) -> None:
    """A new single-node Ray on 127.0.0.1. On Linux Ray 2.60 turns ``_node_ip_address=
    "127.0.0.1"`` into the machine's network address unless its cluster mode is off
    (``ray_constants.ENABLE_RAY_CLUSTER``, read at call time), so that is switched off while
    this node starts."""
    import ray
    from ray._private import ray_constants

    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def init_ray(address: str | None = None) -> None:
    """Join ``address`` / ``$RAY_ADDRESS``, or start a new local single-node Ray on 127.0.0.1.

    Without an address Ray is started with ``address="local"``: ``address=None`` would join
    whatever cluster Ray's address file names, and retry a dead one for minutes. An address
    that does not answer fails within seconds with one line."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = dict(log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
    if address is None:
        start_local_ray(**common)
        return
    check_ray_address(address)
    ray.init(address=address, **common)


def build_stages(config: JobConfig, stages: str = "all", earlier_uri: str | None = None) -> list:
    """The profile's stages; ``inspect`` keeps those before the first editing stage, ``edit``
    the rest, preceded by loading ``earlier_uri``'s captions."""
    if stages not in STAGE_SELECTIONS:
        raise ValueError(f"--stages must be one of {', '.join(STAGE_SELECTIONS)}, got {stages!r}")
    names = list(config.stages)
    cut = next((i for i, n in enumerate(names) if n not in INSPECT_STAGES), len(names))
    if stages == "inspect":
        return [load_stage_class(n)(config) for n in names[:cut]]
    if stages == "edit":
        return [LoadCaptionsStage(config, earlier_uri), *(load_stage_class(n)(config) for n in names[cut:])]
    return [load_stage_class(n)(config) for n in names]


def stage_steps(config: JobConfig, stage_list: list) -> list[list]:
    """``stage_list`` cut into Ray steps (``JobConfig.colocated_steps``): neighbours of one
    ``ray.colocate`` group share a step (one actor pool), every other stage is its own. Raises
    ``ConfigError`` for a shared step holding a stage that brings its own Ray plumbing (a
    ``ray.data.llm`` processor)."""
    from unsafe2safe_ray.config import ConfigError

    remaining = iter(stage_list)
    steps = [[next(remaining) for _ in names] for names in config.colocated_steps([s.name for s in stage_list])]
    for step in steps:
        own = [stage.name for stage in step if stage.own_ray_step()] if len(step) > 1 else []
        if own:
            raise ConfigError(f"ray.colocate: stage {own[0]!r} runs as its own ray.data.llm processor and "
                              "cannot share an actor pool; remove it from the group")
    return steps


def apply_step(ds: Any, step: list) -> Any:
    """Append one step of ``stage_steps`` to ``ds``: a lone stage adds itself (its own Ray
    plumbing or the adapter), a colocated group runs through the adapter as one operator."""
    return step[0].apply(ds) if len(step) == 1 else ray_adapter.apply_stages(ds, step)


def check_local_fit(config: JobConfig, stage_list: list) -> None:
    """On a local Ray, refuse a config whose actor pools reserve so many CPUs that the task
    stages (decode, write) could never be scheduled: Ray would wait forever, silently."""
    import ray

    if config.ray.address or os.environ.get("RAY_ADDRESS"):
        return  # clusters autoscale; their size is not known up front
    from unsafe2safe_ray.stages.base import combined_resources

    total = ray.cluster_resources().get("CPU", 0.0)
    reserved, pools = 0.0, []
    for step in stage_steps(config, stage_list):
        res = combined_resources(step)
        if res.pool_size is not None:
            reserved += res.pool_size * res.num_cpus
            pools.append(f"{'+'.join(s.name for s in step)}={res.pool_size}x{res.num_cpus:g}")
    task_cpus = max(config.ray.decode_num_cpus, config.ray.write_num_cpus)
    if pools and reserved + task_cpus > total + 1e-9:
        from unsafe2safe_ray.config import ConfigError

        raise ConfigError(
            f"actor pools reserve {reserved:g} of this machine's {total:g} CPUs ({', '.join(pools)}), leaving "
            f"no room for the {task_cpus:g}-CPU decode/write tasks; lower <stage>.pool_size or <stage>.num_cpus "
            "(fractions are fine) or ray.decode_num_cpus / ray.write_num_cpus")


def build_dataset(config: JobConfig, layout: OutputLayout, shards: list[int], run_id: str,
                  stages: str = "all", earlier_uri: str | None = None) -> Any:
    """Steps 4-6: the streaming Dataset from planned rows to written summary rows."""
    import ray.data

    # Work items, not rows: a few per shard so a shard spreads over workers. Expanding them in
    # fractional-CPU tasks (not read_parquet, whose listing task takes a whole CPU) keeps the
    # read from starving beside actor pools that reserved the rest of a small node.
    plan = load_plan(layout)
    # One read batch per item; bigger items only past 100k items, to bound the driver's list.
    selected_images = sum(plan.shard_counts[s] for s in shards)
    chunk_rows = max(config.io.read_batch_size, -(-selected_images // 100_000))
    items = plan_chunks(plan, shards, chunk_rows)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4096)))
    ds = ray_adapter.flat_map(ds, lambda item: read_plan_chunk(layout, item["shard"], item["offset"], item["count"]),
                              name="read_plan", num_cpus=min(config.ray.decode_num_cpus, 0.25))
    ds = DecodeStage(config).apply(ds)
    stage_list = build_stages(config, stages, earlier_uri)
    check_local_fit(config, stage_list)
    for step in stage_steps(config, stage_list):
        ds = apply_step(ds, step)
    return WriteStage(config, layout, run_id, inspect_only=stages == "inspect").apply(ds)



def run_job(
    input_uri: str,
    output_uri: str,
    config: JobConfig,
    shards: str = "pending",
    run_id: str | None = None,
    stages: str = "all",
    progress: Callable[[dict[str, Any]], None] | None = None,
    allow_config_change: bool = False,
    break_lease: bool = False,
) -> RunResult:
    """Anonymize ``input_uri`` into ``output_uri``; returns what was committed.

    Reruns with the same output process only what ``shards`` selects (see ``select_shards``).
    ``stages="inspect"`` runs Stage 1 only (flagged rows wait, withheld, as failed rows);
    ``stages="edit"`` takes such an output as ``input_uri`` and only edits.

    Raises (each with a one-line message):
    ``storage.lease.LeaseHeldError`` when another live run writes to the output (``break_lease``
    takes its lease anyway); ``LeaseLostError`` when this run's lease was taken over mid-run;
    ``ConfigError`` when committed shards were made with another config digest, unless
    ``allow_config_change`` (the markers then record the earlier digests too); ``ValueError``
    for a malformed or already used run id; ``storage.fs.NoSpaceError`` when the output's disk
    is full; ``PlanError`` when the input or shard size disagrees with the saved plan.
    """
    run_id = run_id or new_run_id()
    if not _RUN_ID_OK.match(run_id):
        raise ValueError(f"run id {run_id!r} may only hold letters, digits, '_' and '.'")
    start = time.perf_counter()
    layout = OutputLayout(output_uri, config.io.storage_options)
    storage.check_reachable(layout.fs, layout.root, "output")

    # 0. One writer per output: nothing below runs without the lease.
    lease = lease_store.OutputLease(layout.fs, layout.root, run_id, config.io.lease_expiry_s)
    lease.acquire(break_lease=break_lease)
    lease.start_heartbeat()
    try:
        return _run_leased(input_uri, output_uri, config, layout, lease, shards, run_id, stages, progress,
                           allow_config_change, start)
    except Exception as e:
        full = storage.no_space_error(e)
        if full is not None:
            raise storage.NoSpaceError(
                f"no space left on the output's storage ({full.filename or output_uri}): free space or raise "
                "the quota, then rerun the same command; committed shards are kept and the rerun removes "
                "partial files") from e
        raise
    finally:
        lease.release()


def _run_leased(input_uri: str, output_uri: str, config: JobConfig, layout: OutputLayout,
                lease: lease_store.OutputLease, shards: str, run_id: str, stages: str,
                progress: Callable[[dict[str, Any]], None] | None, allow_config_change: bool,
                start: float) -> RunResult:
    """Steps 1-8 of ``run_job``, run while holding ``lease``."""
    if layout.fs.exists(layout.run_report(run_id)):
        raise ValueError(f"run id {run_id!r} was already used on {output_uri} ({layout.run_report(run_id)} "
                         "exists); pick a new --run-id (with ray job submit: a new --submission-id)")
    # 1. Plan (reused on reruns; a changed input listing stops the job). Without an explicit
    # shard size the saved plan's is used.
    if stages == "edit":
        plan = plan_from_output(layout, OutputLayout(input_uri, config.io.storage_options))
    else:
        shard_size = config.io.shard_size
        if "shard_size" not in config.io.model_fields_set:
            saved = load_plan(layout)
            shard_size = saved.shard_size if saved is not None else shard_size
        plan = make_or_load_plan(layout, input_uri, shard_size, config.io.storage_options,
                                 config.io.allow_input_prefixes)
    # 2. Select shards.
    existing = commit_store.read_commits(layout)
    # No silent mix of configs: committed shards made with another config digest stop the run.
    digest = config.digest()
    earlier_digests = _earlier_digests(existing, digest)
    others = sorted({m.get("config_digest") for m in existing.values()} - {digest, None})
    if others and not allow_config_change:
        from unsafe2safe_ray.config import ConfigError

        raise ConfigError(
            f"{sum(m.get('config_digest') in others for m in existing.values())} committed shard(s) in "
            f"{output_uri} were made with another config (digest {', '.join(others)}; this run {digest}); rerun "
            "with the same profile, --config and --set, write to a new --output, or pass --allow-config-change "
            "to mix them on purpose")
    selected = select_shards(shards, plan, existing, layout)
    # A reused run id would rewrite its committed files in place (part names carry the run id).
    reused = sorted(s for s in selected if s in existing and existing[s].get("run_id") == run_id)
    if reused:
        raise ValueError(f"run id {run_id!r} already committed shard(s) {reused[:5]} of {output_uri}; "
                         "reprocessing them needs a new --run-id")
    # 3. Clean up: unreferenced parts of the selected shards that this run wrote or that predate
    # its lease (killed runs), and temporary parts of failed writes. Committed files stay.
    committed_files = set().union(*(commit_store.referenced_files(m) for m in existing.values()))
    debris = lease_store.removable_files(layout.fs, layout.root, (*DATA_DIRS, COMMITS, RUNS, PLAN),
                                         set(selected), committed_files, lease)
    temporary = {rel for rel in debris if lease_store.is_temporary(rel)}
    commit_store.remove_files(layout, debris - temporary)
    lease_store.remove_temporary(layout.fs, layout.root, temporary)

    trackers = {s: ShardTracker(plan.shard_counts[s]) for s in selected}
    totals: dict[str, int] = defaultdict(int)
    failed_by_stage: dict[str, int] = defaultdict(int)
    safety_net_flags = 0
    stage_seconds: dict[str, float] = defaultdict(float)
    committed: list[int] = []
    versions = commit_store.package_versions()
    report = {"run_id": run_id, "shards_total": len(selected), "shards_done": 0,
              "images_total": sum(t.expected for t in trackers.values()), "images_done": 0}
    if progress:
        progress(dict(report, elapsed=0.0))

    operators: list[str] = []
    if selected:
        init_ray(config.ray.address)
        # 4-6. Stream rows through the stages into shard parts.
        ds = build_dataset(config, layout, selected, run_id, stages, earlier_uri=input_uri)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                tracker = trackers[row["shard"]]
                if row["key"] in tracker.keys:
                    continue  # a retried task: the same part was rewritten under the same name
                tracker.keys.add(row["key"])
                tracker.counts[row["status"]] += 1
                totals[row["status"]] += 1
                if row["status"] == records.FAILED:
                    failed_by_stage[row.get("error_stage") or "unknown"] += 1
                safety_net_flags += row.get("flagged_by") == "detector" and "caption" in config.stages
                for kind, rel, info in commit_store.part_files(row["files"]):
                    tracker.files[kind].add(rel)
                    if info:
                        tracker.file_info[rel] = info
                report["images_done"] += 1
                # 7. Commit as soon as the shard is complete.
                if len(tracker.keys) == tracker.expected:
                    lease.check()  # never commit after the lease was taken over
                    _commit(layout, row["shard"], tracker, run_id, digest, versions, existing.get(row["shard"]),
                            earlier_digests)
                    del trackers[row["shard"]]
                    committed.append(row["shard"])
                    report["shards_done"] += 1
            if progress:
                progress(dict(report, elapsed=time.perf_counter() - start))
        # Ray's own per-operator stats name every stage (stages.base.named) and time it.
        stage_seconds.update(operator_seconds(ds.stats()))
        operators = list(stage_seconds)

    result = RunResult(run_id, output_uri, selected, sorted(committed), sorted(trackers),
                       {s: totals.get(s, 0) for s in records.FINAL_STATUSES},
                       time.perf_counter() - start, dict(stage_seconds),
                       {"failed_by_stage": dict(failed_by_stage), "safety_net_flags": int(safety_net_flags),
                        "verification": verification_summary(config), "operators": operators})
    # 8. Run report.
    lease.check()
    # No secrets at rest: credentials in the config and URIs are redacted (storage.redact).
    storage.write_json(layout.fs, layout.run_report(run_id), redact_value(
                       dict(result.to_json(), plan=plan.to_json() | {"shard_counts": None},
                            config=config.model_dump(mode="json"), config_digest=digest,
                            models=_model_manifest(config),
                            previous_config_digests=earlier_digests, versions=versions)))
    return result


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def operator_seconds(stats: str) -> dict[str, float]:
    """``{operator: remote wall seconds}`` from ``Dataset.stats()`` text: each operator's name
    (``MapBatches(detect)``, fused ones joined by ``->``) and its total remote wall time."""
    out: dict[str, float] = {}
    name = None
    for line in stats.splitlines():
        header = re.match(r"^Operator \d+ ([^:]+):", line)
        if header:
            name = header.group(1)
            out.setdefault(name, 0.0)
            continue
        total = re.search(r"Remote wall time: .*?([\d.]+)(us|ms|s|min|h) total", line)
        if name is not None and total:
            out[name] += float(total.group(1)) * _UNITS[total.group(2)]
            name = None
    return out


def _skipped_checks(layout: OutputLayout, run_ids: set[str]) -> dict[str, list[str]]:
    """Per committed run id, the verification checks its run report says were switched off."""
    out: dict[str, list[str]] = {}
    for run_id in sorted(run_ids):
        try:
            with layout.fs.open(layout.run_report(run_id), "rb") as f:
                skipped = json.loads(f.read()).get("verification", {}).get("skipped", [])
        except (FileNotFoundError, ValueError):
            continue
        if skipped:
            out[run_id] = skipped
    return out


def _model_manifest(config: JobConfig) -> list[dict[str, Any]]:
    """The models the stages load with their pinned revisions (``preflight.model_manifest``)."""
    from unsafe2safe_ray.preflight import model_manifest

    return model_manifest(config)


def verification_summary(config: JobConfig) -> dict[str, Any]:
    """Which privacy checks the config requires, runs and skips: switching verification off is
    always visible in the run report and in ``status``."""
    edits = "edit" in config.stages
    enabled = config.verify.enabled_checks() if edits and config.edit.verify else []
    return {"required": list(config.verify.required_checks) if edits else [], "enabled": enabled,
            "skipped": [c for c in ("faces", "text") if edits and c not in enabled]}


def _earlier_digests(markers: dict[int, dict[str, Any]], digest: str) -> list[str]:
    """Config digests other than ``digest`` that committed markers were made with or record."""
    seen: set[str] = set()
    for m in markers.values():
        seen.update(d for d in [m.get("config_digest"), *m.get("previous_config_digests", [])] if isinstance(d, str))
    return sorted(seen - {digest})


def _commit(layout: OutputLayout, shard: int, tracker: ShardTracker, run_id: str, digest: str,
            versions: dict[str, str], previous: dict[str, Any] | None, earlier_digests: list[str] | None = None) -> None:
    counts = {"expected": tracker.expected,
              **{s: tracker.counts.get(s, 0) for s in records.FINAL_STATUSES}}
    marker = commit_store.write_commit(layout, shard, run_id, counts,
                                       {k: list(v) for k, v in tracker.files.items()}, digest, versions,
                                       file_info=tracker.file_info, previous_config_digests=earlier_digests or [])
    # The new marker is in place; the replaced run's files are now unreferenced.
    commit_store.remove_files(layout, commit_store.referenced_files(previous) - commit_store.referenced_files(marker))


def shard_status(output_uri: str, storage_options: dict[str, Any] | None = None,
                 verify: bool = False) -> dict[str, Any]:
    """Committed / pending / with-failures / damaged shards and image counts.

    Sizes of committed files are always checked against their markers (one listing per data
    folder); ``verify`` also recomputes every file's SHA-256 (reads every committed byte).
    ``damaged`` lists shards with a missing, resized or altered file (``damage`` says which file
    and how; rerun them with ``--shards damaged``); ``unverifiable`` lists shards whose markers
    predate sizes and checksums. Raises ``MarkerError`` for a marker that fails validation.
    """
    layout = OutputLayout(output_uri, storage_options or {})
    storage.check_reachable(layout.fs, layout.root, "output")
    plan: Plan | None = load_plan(layout)
    if plan is None:
        raise FileNotFoundError(f"{output_uri} has no plan (_plan/plan.json); run `unsafe2safe run` first")
    markers = commit_store.read_commits(layout)
    counts: dict[str, int] = defaultdict(int)
    for m in markers.values():
        for k in records.FINAL_STATUSES:
            counts[k] += m["counts"].get(k, 0)
    damage, unverifiable = commit_store.verify_markers(layout, markers, checksums=verify)
    return {
        "verification_skipped": _skipped_checks(layout, {m["run_id"] for m in markers.values()}),
        "input_uri": plan.input_uri,
        "images": plan.num_images,
        "shards": plan.num_shards,
        "committed": sorted(markers),
        "pending": [s for s in range(plan.num_shards) if s not in markers],
        "with_failures": sorted(s for s, m in markers.items() if m["counts"].get("failed", 0)),
        "counts": {k: counts.get(k, 0) for k in records.FINAL_STATUSES},
        "damaged": sorted(damage),
        "damage": {str(s): problems for s, problems in damage.items()},
        "unverifiable": unverifiable,
        "checksums_verified": verify,
    }
