"""A fake engine for fast unit tests: schema-valid answers, or scripted ones."""

from __future__ import annotations

import json
from typing import Any, Callable

from unsafe2safe_ray.engines.base import GenerationRequest, GenerationResult, TextEngine


def example_for_schema(schema: dict[str, Any]) -> Any:
    """A small value that satisfies ``schema`` (the subset of JSON Schema our prompts use)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_for_schema(props[k]) for k in schema.get("required", props)}
    if kind == "array":
        return [example_for_schema(schema["items"]) for _ in range(schema.get("minItems", 1))]
    if kind == "boolean":
        # True: the safe answer for a privacy flag (a fake must never make images look safe).
        return True
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    return "a person stands next to a table"


def answers_script(path: str) -> Callable[[GenerationRequest], Any]:
    """A script that answers from a JSON file holding a list of answer objects: each request
    gets the first answer whose keys include every property the request's schema requires
    (so one file plants both caption and instruction answers in a whole job)."""
    with open(path, encoding="utf-8") as f:
        answers = json.load(f)

    def script(request: GenerationRequest) -> str:
        schema = request.json_schema or {}
        required = set(schema.get("required", schema.get("properties", {})))
        for answer in answers:
            if isinstance(answer, dict) and required <= set(answer):
                return json.dumps(answer)
        return json.dumps(example_for_schema(schema or {"type": "string"}))

    return script


class FakeEngine(TextEngine):
    """Answers every request with ``script(request)``, or a schema-valid example.

    ``script`` may return a string (a finished answer) or a full ``GenerationResult`` (to test
    truncated answers). ``calls`` records every request for assertions. A ``model`` naming a
    ``.json`` file plants that file's answers (``answers_script``), so that a whole job (the
    engine in a Ray actor) gives scripted answers: ``--set caption.model=/tmp/answers.json``.
    """

    name = "fake"

    def __init__(self, model: str = "fake", script: Callable[[GenerationRequest], Any] | None = None) -> None:
        self.model_id = model
        if script is None and model.endswith(".json"):
            script = answers_script(model)
        self.script = script
        self.calls: list[GenerationRequest] = []

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """One scripted or schema-derived result per request."""
        results = []
        for request in requests:
            self.calls.append(request)
            if self.script is not None:
                answer = self.script(request)
            else:
                answer = json.dumps(example_for_schema(request.json_schema or {"type": "string"}))
            results.append(answer if isinstance(answer, GenerationResult) else GenerationResult(text=answer))
        return results
