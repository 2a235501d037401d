"""Command-line inputs: output lists and metric selection."""

from __future__ import annotations

import pytest

from unsafe2safe_ray.eval.options import EvalOptions
from unsafe2safe_ray.eval.pairs import parse_methods


def test_parse_methods_names_and_order():
    assert parse_methods("s3://bucket/out-a, blur=/data/blur/,/x/pix") == {
        "out-a": "s3://bucket/out-a", "blur": "/data/blur/", "pix": "/x/pix"}
    with pytest.raises(ValueError):
        parse_methods(" , ")


def test_metric_selection():
    options = EvalOptions().with_metrics("faces, text")
    assert options.wants("faces") and options.wants("text") and not options.wants("judge")
    assert EvalOptions().with_metrics(None).metrics == EvalOptions().metrics
    with pytest.raises(ValueError, match="unknown metric family"):
        EvalOptions().with_metrics("faces,vibes")


def test_cli_lists_the_verbs():
    from typer.testing import CliRunner

    from unsafe2safe_ray.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0 and "--anonymized" in result.output and "--metrics" in result.output
