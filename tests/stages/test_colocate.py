"""``ray.colocate``: consecutive stages sharing one actor pool (one Ray operator that runs them in
order in the same worker), as the cpu profile does with detect and edit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from unsafe2safe_ray.config import ConfigError, load_config
from unsafe2safe_ray.job import build_stages, run_job, stage_steps
from unsafe2safe_ray.stages.base import Resources, Stage, combined_resources

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


class _Declared(Stage):
    def __init__(self, name: str, res: Resources) -> None:
        super().__init__(None)
        self.name, self.res = name, res

    def resources(self) -> Resources:
        return self.res


def test_a_group_takes_the_largest_request_and_the_first_batch_size():
    a = _Declared("a", Resources(num_cpus=0.5, batch_size=4))
    b = _Declared("b", Resources(num_cpus=1.0, num_gpus=1.0, batch_size=8, pool_size=2, max_tasks_in_flight=1))
    assert combined_resources([a, b]) == Resources(num_cpus=1.0, num_gpus=1.0, batch_size=4, pool_size=2,
                                                   max_tasks_in_flight=1)
    assert combined_resources([a]) == a.res
    c = _Declared("c", Resources(batch_format="numpy"))
    with pytest.raises(ValueError, match="batch formats"):
        combined_resources([a, c])


def test_the_cpu_profile_runs_detect_and_edit_in_one_step():
    config = load_config("cpu")
    assert [[s.name for s in step] for step in stage_steps(config, build_stages(config))] == [["detect", "edit"]]
    # The inspect half holds detect alone, the edit half its own loader and edit.
    assert [[s.name for s in step] for step in stage_steps(config, build_stages(config, "inspect"))] == [["detect"]]
    edit_half = build_stages(config, "edit", earlier_uri="memory://earlier")
    assert [[s.name for s in step] for step in stage_steps(config, edit_half)] == [["load_captions"], ["edit"]]
    assert config.step_names() == ["detect+edit"]
    # Without the setting, every stage is its own step.
    plain = load_config("cpu", overrides=["ray.colocate=[]"])
    assert [[s.name for s in step] for step in stage_steps(plain, build_stages(plain))] == [["detect"], ["edit"]]


@pytest.mark.parametrize("groups, message", [
    ("[[detect]]", "two or more"),
    ("[[detect,detect]]", "two or more"),
    ("[[detect,nosuchstage]]", "two or more different stages"),
    ("[[detect,edit],[edit,caption]]", "in two groups"),
])
def test_bad_groups_are_refused_up_front(groups, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu", overrides=[f"ray.colocate={groups}"])


def test_only_neighbours_share_a_step():
    # The cpu profile's group with other stages put between its members (a user's --set
    # stages=...): each member runs in its own pool, nothing is refused.
    config = load_config("cpu", overrides=["stages=[detect, caption, instruct, edit]",
                                           "caption.engine=fake", "instruct.engine=fake"])
    assert config.step_names() == ["detect", "caption", "instruct", "edit"]
    assert [[s.name for s in step] for step in stage_steps(config, build_stages(config))] == [
        ["detect"], ["caption"], ["instruct"], ["edit"]]
    # Listed in either order, neighbours are grouped in the order of stages.
    reverse = load_config("cpu", overrides=["ray.colocate=[[edit,detect]]"])
    assert reverse.step_names() == ["detect+edit"]


def test_a_vllm_processor_cannot_join_a_group():
    config = load_config("gpu-fast", overrides=["ray.colocate=[[caption,instruct]]"])
    with pytest.raises(ConfigError, match="ray.data.llm processor"):
        stage_steps(config, build_stages(config))


def test_colocated_run_matches_separate_pools(ray_local, tmp_path):
    """Same rows, same statuses, same published pixels with and without colocation; the
    colocated run's Ray stats show one detect+edit operator."""
    from unsafe2safe_ray.output import open_output

    (tmp_path / "in").mkdir()
    for name in ("astronaut.jpg", "licence_plate.jpg", "page.png"):
        shutil.copy(EXAMPLES / name, tmp_path / "in" / name)
    published = {}
    for label, groups in (("together", "[[detect,edit]]"), ("apart", "[]")):
        cfg = load_config("cpu", overrides=[f"ray.colocate={groups}", "io.read_batch_size=2"])
        out = tmp_path / label
        run_job(str(tmp_path / "in"), str(out), cfg, run_id=label)
        report = json.loads((out / "_runs" / f"{label}.json").read_text())
        operators = " ".join(report["stage_seconds"])
        if label == "together":
            assert "MapBatches(detect+edit)" in operators and "MapBatches(edit)" not in operators, operators
        else:
            assert "MapBatches(detect)" in operators and "MapBatches(edit)" in operators, operators
        reader = open_output(str(out))
        published[label] = {s["key"]: (s["caption"]["status"], s["image"]) for s in reader.iter_samples()}
    assert published["together"].keys() == published["apart"].keys()
    for key, (status, image) in published["together"].items():
        other_status, other_image = published["apart"][key]
        assert status == other_status == "edited", key
        assert np.array_equal(np.asarray(image), np.asarray(other_image)), key
