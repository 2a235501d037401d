"""The CLI: clear one-line errors without tracebacks, config resolution, status output."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from unsafe2safe_ray.cli import app
from unsafe2safe_ray.config import ConfigError, available_profiles, load_config, parse_set

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("args, message", [
    (["--profile", "none", "--set", "io.bogus=1"], "invalid config at io.bogus"),
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--profile", "none", "--set", "stages=[wat]"], "unknown stage"),
    (["--profile", "none", "--set", "noequals"], "--set expects key=value"),
    (["--profile", "none", "--config", "/does/not/exist.yaml"], "config file /does/not/exist.yaml does not exist"),
    (["--profile", "none", "--shards", "1-x"], "cannot parse"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    (tmp_path / "in").mkdir()
    from _corpus import write_good_images

    write_good_images(tmp_path / "in", 2)
    result = _run("run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_missing_input_is_a_one_line_error(tmp_path):
    result = _run("run", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"), "--profile", "none")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_status_of_an_output_that_was_never_run(tmp_path):
    result = _run("status", str(tmp_path))
    assert result.exit_code == 2 and "run `unsafe2safe run` first" in result.output


def test_config_layers_profile_file_and_set(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("io:\n  shard_size: 7\n  jpeg_quality: 80\n")
    cfg = load_config("none", cfg_file, ["io.shard_size=9"])
    assert (cfg.io.shard_size, cfg.io.jpeg_quality, cfg.profile) == (9, 80, "none")
    assert parse_set(["a.b=1", "a.c=[x, y]", "d=true"]) == {"a": {"b": 1, "c": ["x", "y"]}, "d": True}
    assert {"none", "cpu", "tiny", "gpu-fast", "gpu-paper"} <= set(available_profiles())
    with pytest.raises(ConfigError):
        load_config("none", overrides=["io.shard_size=0"])
    assert cfg.digest() != load_config("none").digest()


def test_an_unknown_editor_is_one_line_before_anything_runs(tmp_path):
    from typer.testing import CliRunner

    from unsafe2safe_ray.cli import app

    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(app, ["run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                      "--profile", "cpu", "--set", "edit.editor=nope"])
    assert result.exit_code == 2 and "unknown editor 'nope'" in result.output
    assert not (tmp_path / "out").exists()  # refused before the plan was written
