"""The ``evaluate`` and ``utility`` CLI verbs (registered in ``unsafe2safe_ray.cli``).

Plain functions with typer annotations: callable from Python as well. Heavy imports stay inside
the bodies because the CLI imports this module on every start.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer


def evaluate(
    original: Annotated[str, typer.Option(help="The original input (folder or manifest URI).")],
    anonymized: Annotated[str, typer.Option(
        help="Output URI(s) to evaluate, comma-separated, optionally NAME=URI. A pipeline output or a "
             "folder of images named like the originals (baselines from other tools).")],
    out: Annotated[str, typer.Option(help="Directory for per_image.parquet, summary.json, report.html.")],
    metrics: Annotated[Optional[str], typer.Option(
        help="Comma-separated families: faces,text,fidelity,quality,judge (default: all).")] = None,
    clip_model: Annotated[Optional[str], typer.Option(help="CLIP for quality metrics.")] = "openai/clip-vit-large-patch14",
    face_embedder: Annotated[str, typer.Option(help="auto (ArcFace when on disk, else dlib), dlib or arcface.")] = "auto",
    arcface_root: Annotated[Optional[str], typer.Option(help="InsightFace root (default ~/.insightface).")] = None,
    judge_engine: Annotated[Optional[str], typer.Option(help="Engine kind for the VLM judge (transformers).")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="VLM judge model (hub id, dir or tiny://name).")] = None,
    pool_size: Annotated[int, typer.Option(help="Evaluation actors.")] = 1,
    num_gpus: Annotated[float, typer.Option(help="GPUs per evaluation actor.")] = 0.0,
    include_private: Annotated[bool, typer.Option(
        "--include-private",
        help="Also write text read in the originals and thumbnails of the originals to OUT/private/ "
             "(per_image_private.parquet, report_private.html). Never publish that folder.")] = False,
) -> None:
    """Score anonymized outputs against the originals; writes the report to --out."""
    from unsafe2safe_ray.eval.options import EvalOptions
    from unsafe2safe_ray.eval.pairs import parse_methods
    from unsafe2safe_ray.eval.runner import evaluate_outputs
    from unsafe2safe_ray.job import init_ray

    options = EvalOptions(
        clip_model=clip_model or None, face_embedder=face_embedder, arcface_root=arcface_root,
        judge_engine=judge_engine, judge_model=judge_model, pool_size=pool_size, num_gpus=num_gpus,
        include_private=include_private,
    ).with_metrics(metrics)
    init_ray()
    summary = evaluate_outputs(original, parse_methods(anonymized), out, options)
    shown = {k: v for k, v in summary.items() if k not in ("by_method", "anonymized")}
    typer.echo(json.dumps(shown, indent=2, default=str))
    typer.echo(f"report: {out.rstrip('/')}/report.html")
    for path in summary.get("private_outputs") or []:
        typer.echo(f"private (never publish): {out.rstrip('/')}/{path}")


def utility(
    train: Annotated[str, typer.Option(help="The anonymized training output (labels from its label column).")],
    test: Annotated[str, typer.Option(help="The original test set (folder with class subfolders or manifest).")],
    features: Annotated[str, typer.Option(help="clip:<model> or pixels.")] = "clip:openai/clip-vit-large-patch14",
    mode: Annotated[str, typer.Option(
        help="linear (probe on frozen features, a cheap proxy), finetune (CLIP tower + head) or mae-finetune "
             "(the paper's MAE ViT-B/16 recipe as a Ray Train job; settings under utility: in --config/--set).")] = "linear",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (finetune: 3; mae-finetune: utility.epochs).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Write the result JSON here as well.")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML with a utility: section (mae-finetune).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="e.g. --set utility.epochs=50 (mae-finetune).")] = None,
) -> None:
    """Train on the anonymized set, test on originals, next to the same model trained on raw data."""
    from unsafe2safe_ray.eval.utility import run_utility
    from unsafe2safe_ray.job import init_ray
    from unsafe2safe_ray.storage.fs import filesystem, write_json

    if mode == "mae-finetune":
        from unsafe2safe_ray.config import ConfigError, load_config
        from unsafe2safe_ray.train.mae import run_mae_finetune

        overrides = list(set_ or []) + ([f"utility.epochs={epochs}"] if epochs is not None else [])
        try:
            cfg = load_config("none", config, overrides)
        except ConfigError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        init_ray(cfg.ray.address)
        result = run_mae_finetune(train, test, cfg)
    else:
        init_ray()
        result = run_utility(train, test, features=features, mode=mode, epochs=3 if epochs is None else epochs)
    if out:
        fs, path = filesystem(out)
        write_json(fs, path, result)
    typer.echo(json.dumps(result, indent=2))
