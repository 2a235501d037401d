"""What the two Stage 1 stages share: a batch of rows -> engine requests -> parsed answers, and
the choice between the in-process engine (actor pool) and a ``ray.data.llm`` vLLM processor."""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray.engines.base import GenerationRequest
from unsafe2safe_ray.stages.base import Resources, Stage, apply_stage


class GenerationStage(Stage):
    """Subclasses set ``self.section`` and ``self.engine`` and implement ``skip``, ``request``,
    ``answer`` and ``vllm_options``."""

    def resources(self) -> Resources:
        """The section's resources; in-process engines always run in an actor pool."""
        res = super().resources()
        if res.pool_size is None:
            return Resources(res.num_cpus, res.num_gpus, res.batch_size, 1)
        return res

    def engine_kwargs(self) -> dict[str, Any]:
        """Extra ``load_engine`` arguments of the transformers engine for this stage."""
        return {}

    def setup(self) -> None:
        """Load the model (once per actor)."""
        from unsafe2safe_ray.engines import load_engine

        kwargs: dict[str, Any] = {}
        if self.section.engine == "transformers":
            kwargs = dict(
                dtype=self.section.dtype,
                threads=self.section.threads,
                trust_remote_code=bool(self.section.engine_kwargs.get("trust_remote_code", False)),
                revision=getattr(self.section, "revision", None),
                seed=self.config.seed,
                **self.engine_kwargs(),
            )
        self.engine = load_engine(self.section.engine, self.section.model, **kwargs)

    def skip(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The finished row when ``row`` needs no generation, else None."""
        raise NotImplementedError

    def request(self, row: dict[str, Any]):
        """(messages, pixels or None, JSON schema) for one row."""
        raise NotImplementedError

    def answer(self, row: dict[str, Any], text: str, finished: bool) -> dict[str, Any]:
        """Parse an answer into the row (a failed row when it cannot be parsed)."""
        raise NotImplementedError

    def vllm_options(self) -> dict[str, Any]:
        """The ``VLLMCall`` fields that differ between stages."""
        raise NotImplementedError

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generate for the rows that need it, in one engine call."""
        todo, requests = [], []
        for i, row in enumerate(rows):
            done = self.skip(row)
            if done is not None:
                rows[i] = done
                continue
            messages, pixels, schema = self.request(row)
            todo.append(i)
            requests.append(GenerationRequest(
                messages=messages, image=pixels, json_schema=schema,
                max_new_tokens=self.section.max_new_tokens, temperature=self.section.temperature))
        if requests:
            for i, result in zip(todo, self.engine.generate(requests)):
                rows[i] = self.answer(rows[i], result.text, result.finished)
        return rows

    def own_ray_step(self) -> bool:
        return self.section.engine == "vllm"

    def apply(self, ds: Any) -> Any:
        """vLLM: a ``ray.data.llm`` processor; other engines: the common actor-pool adapter."""
        if not self.own_ray_step():
            return apply_stage(ds, self)
        from unsafe2safe_ray.engines.vllm_engine import apply_vllm

        return apply_vllm(ds, self.section, self.vllm_call())

    def vllm_call(self):
        """The ``VLLMCall`` of this stage (its request and answer, and the decoding settings)."""
        from unsafe2safe_ray.engines.vllm_engine import VLLMCall
        from unsafe2safe_ray.models import resolve_model_source

        return VLLMCall(
            stage_name=self.name,
            # s3:// and gs:// stay URIs: ray.data.llm copies them onto each node itself.
            model_source=resolve_model_source(self.section.model, keep_remote=True),
            request=self._vllm_request,
            answer=self.answer,
            max_tokens=self.section.max_new_tokens,
            temperature=self.section.temperature,
            **self.vllm_options(),
        )
