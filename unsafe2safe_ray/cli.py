"""``unsafe2safe``: thin verbs over the library. Expected errors are one line and exit code 2."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Make image datasets privacy-safe at scale (Unsafe2Safe on Ray Data).")


def _fail(message: str) -> None:
    from unsafe2safe_ray.storage.redact import redact_text

    typer.secho(f"error: {redact_text(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from unsafe2safe_ray.config import ConfigError
    from unsafe2safe_ray.plan.listing import InputError
    from unsafe2safe_ray.plan.planner import PlanError
    from unsafe2safe_ray.storage.commits import IntegrityError, MarkerError
    from unsafe2safe_ray.storage.fs import StorageError

    return (ConfigError, InputError, PlanError, StorageError, MarkerError, IntegrityError,
            FileNotFoundError, PermissionError, ValueError)


class ConsoleProgress:
    """Shards done/total, images/s and ETA: a live bar on a terminal, a line every 10 s in logs."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.bar = None
        self.last_line = 0.0

    def __call__(self, p: dict[str, Any]) -> None:
        rate = p["images_done"] / p["elapsed"] if p["elapsed"] > 0 else 0.0
        left = p["images_total"] - p["images_done"]
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        text = (f"shards {p['shards_done']}/{p['shards_total']}  images {p['images_done']}/{p['images_total']}"
                f"  {rate:.2f} img/s  ETA {eta}")
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn

            if self.bar is None:
                self.bar = Progress(TextColumn("[bold]anonymize"), BarColumn(), TextColumn("{task.description}"),
                                    transient=False)
                self.bar.start()
                self.task = self.bar.add_task(text, total=max(p["images_total"], 1))
            self.bar.update(self.task, completed=p["images_done"], description=text)
        elif time.monotonic() - self.last_line > 10 or p["images_done"] == p["images_total"]:
            self.last_line = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _quiet_ray() -> None:
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Notices about settings this CLI makes on purpose: progress bars off (it prints its own),
    # token authentication on for the loopback Ray it starts (Ray's default; kept).
    for name in ("ray.data._internal.progress", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


@app.command()
def run(
    input: str = typer.Option(..., "--input", "-i", help="Image prefix (local, file://, s3://, gs://, memory://) or manifest (.parquet/.csv/.jsonl with a uri column)."),
    output: str = typer.Option(..., "--output", "-o", help="Output root URI."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file overriding the profile."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="none, cpu, tiny, gpu-fast, gpu-paper (default: gpu-fast with a GPU, else cpu)."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Images per shard (fixed by the first run)."),
    shards: str = typer.Option("pending", "--shards", help="pending | failed | damaged (what `status --verify` lists) | all | a list like 3,7-9"),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set edit.editor=flowedit"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)."),
    stages: str = typer.Option("all", "--stages", help="all | inspect (Stage 1 only) | edit (--input is an earlier --stages inspect output)"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Run id (default: $RAY_JOB_SUBMISSION_ID or a timestamp)."),
    break_lease: bool = typer.Option(False, "--break-lease", help="Take the output's lease even if another run holds it (only when you know that run is dead)."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change", help="Rerun with a config other than the committed shards' (markers record both digests)."),
    allow_input_prefix: list[str] = typer.Option([], "--allow-input-prefix", help="A prefix (URI or folder) a manifest may name besides its own folder; repeatable (sets io.allow_input_prefixes)."),
) -> None:
    """Anonymize INPUT into OUTPUT. Reruns process only what --shards selects."""
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import run_job

    overrides = list(set_)
    if shard_size is not None:
        overrides.append(f"io.shard_size={shard_size}")
    if address is not None:
        overrides.append(f"ray.address={address}")
    if allow_input_prefix:
        overrides.append(f"io.allow_input_prefixes={json.dumps(list(allow_input_prefix))}")
    progress = ConsoleProgress()
    try:
        cfg = load_config(profile, config, overrides)
        _quiet_ray()
        steps = cfg.step_names()
        shared = [step for step in steps if "+" in step]
        typer.echo(f"profile {cfg.profile}: stages {' -> '.join(['decode', *steps, 'write'])}"
                   + (f" ({', '.join(shared)}: one actor pool each, ray.colocate)" if shared else ""), err=True)
        result = run_job(input, output, cfg, shards=shards, run_id=run_id, stages=stages, progress=progress,
                         allow_config_change=allow_config_change, break_lease=break_lease)
    except _expected_errors() as e:
        progress.close()
        _fail(str(e))
    progress.close()
    summary = result.to_json()
    typer.echo(json.dumps({k: summary[k] for k in ("run_id", "counts", "failed_by_stage", "safety_net_flags",
                                                  "images_per_second", "incomplete_shards")}))
    if not result.selected_shards:
        typer.echo(f"nothing to do: every shard of {output} is committed; rerun with --shards failed|damaged|all "
                   "(or a list such as 3,7-9) to reprocess", err=True)
    skipped = summary["verification"]["skipped"]
    if skipped:
        typer.echo(f"warning: verification check(s) {skipped} were switched off: edited rows were not checked "
                   "for them (verification.checks_skipped in captions/)", err=True)
    typer.echo(f"output: {output}/images (WebDataset tars), {output}/captions (Parquet); "
               f"`unsafe2safe status {output}` shows shard state.", err=True)
    if result.incomplete_shards:
        _fail(f"{len(result.incomplete_shards)} shard(s) did not complete; rerun the same command to resume")


@app.command()
def status(output: str = typer.Argument(..., help="Output root URI."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON."),
           verify: bool = typer.Option(False, "--verify", help="Also check every committed file's checksum (reads all of them).")) -> None:
    """Committed / pending / with-failures / damaged shards and image counts.

    File sizes are always checked against the commit markers; --verify also checks checksums.
    Exits 1 when a shard is damaged (rerun those with `run --shards damaged`).
    """
    from unsafe2safe_ray.job import shard_status

    try:
        st = shard_status(output, verify=verify)
    except _expected_errors() as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(st))
        if st["damaged"]:
            raise typer.Exit(1)
        return
    typer.echo(f"input    {st['input_uri']}  ({st['images']} images, {st['shards']} shards)")
    typer.echo(f"committed     {len(st['committed'])}")
    typer.echo(f"pending       {len(st['pending'])}" + (f"  (shards {_ranges(st['pending'])})" if st["pending"] else ""))
    typer.echo(f"with failures {len(st['with_failures'])}"
               + (f"  (shards {_ranges(st['with_failures'])})" if st["with_failures"] else ""))
    typer.echo("images        " + "  ".join(f"{k} {v}" for k, v in st["counts"].items()))
    checked = "sizes and checksums" if st["checksums_verified"] else "sizes (add --verify for checksums)"
    typer.echo(f"damaged       {len(st['damaged'])}" + (f"  (shards {_ranges(st['damaged'])})" if st["damaged"] else "")
               + f"  [checked {checked}]")
    for shard, problems in st["damage"].items():
        for problem in problems:
            typer.echo(f"  shard {shard}: {problem}")
    for run_id, skipped in st["verification_skipped"].items():
        typer.secho(f"unverified    run {run_id} published edits without the {', '.join(skipped)} check(s)",
                    fg=typer.colors.YELLOW)
    if st["unverifiable"]:
        typer.echo(f"unverifiable  {len(st['unverifiable'])}  {_ranges(st['unverifiable'])}  "
                   "(markers from before sizes and checksums; only presence checked)")
    if st["damaged"]:
        typer.secho(f"{len(st['damaged'])} damaged shard(s); rewrite them with "
                    "`unsafe2safe run ... --shards damaged`", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command("plan")
def plan_command(
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile to check (default: gpu-fast with a GPU, else cpu)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file overriding the profile."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set caption.revision=<commit>"),
    stages: str = typer.Option("all", "--stages", help="all | inspect | edit (as for run)."),
    flag_rate: float = typer.Option(0.6, "--flag-rate", help="Share of images expected to be flagged (cost estimate)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Preflight: build the whole job for a profile without GPUs or models and print, per stage, the
    Ray operators, actors, resources, batch sizes, models (revision, remote code) and the vLLM
    settings Ray will pass; then the GPUs needed and a cost estimate. Exits 2 on misconfigurations."""
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.preflight import PreflightError, build_plan, format_plan

    try:
        cfg = load_config(profile, config, list(set_))
        _quiet_ray()
        result = build_plan(cfg, stages=stages, flag_rate=flag_rate)
    except PreflightError as e:
        for line in e.problems:
            typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except _expected_errors() as e:
        _fail(str(e))
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else format_plan(result))


@app.command()
def finetune(
    data: str = typer.Option(..., "--data", help="Job output(s) to learn from, comma-separated (committed samples only)."),
    originals: str = typer.Option(..., "--originals", help="Where the originals are (the jobs' input prefix, or a copy of it)."),
    out: str = typer.Option(..., "--out", help="Checkpoint root (any fsspec URI); rerun with the same --out to resume."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML with a finetune: section."),
    set_: list[str] = typer.Option([], "--set", help="e.g. --set finetune.num_workers=8 --set finetune.steps=20000"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)."),
) -> None:
    """Fine-tune the InstructPix2Pix editor on the jobs' own (original, edited) pairs (Ray Train).

    Pairs pass the paper's filter (CLIP ratio >= finetune.min_clip_ratio, verified without a
    leak). The last checkpoint loads as an editor: --set edit.editor=instruct-pix2pix
    --set edit.instruct_pix2pix_model=<checkpoint>.
    """
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import init_ray
    from unsafe2safe_ray.train.loop import run_finetune

    try:
        cfg = load_config("none", config, list(set_) + ([f"ray.address={address}"] if address else []))
        _quiet_ray()
        init_ray(cfg.ray.address)
        latest = run_finetune([d for d in data.split(",") if d], originals, out, cfg)
    except _expected_errors() as e:
        _fail(str(e))
    typer.echo(json.dumps({k: latest[k] for k in ("checkpoint", "step", "pairs", "metrics")}, default=str))
    typer.echo(f"editor: --set edit.editor=instruct-pix2pix --set edit.instruct_pix2pix_model={latest['checkpoint']}",
               err=True)


def _ranges(items: list[int]) -> str:
    """[1,2,3,7] -> '1-3,7' (what --shards accepts)."""
    out, i = [], 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)


def _register_eval_commands() -> None:
    from unsafe2safe_ray.eval import commands

    app.command("evaluate")(commands.evaluate)
    app.command("utility")(commands.utility)


_register_eval_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
