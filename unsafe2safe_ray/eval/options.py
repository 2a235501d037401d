"""Settings of an evaluation run (model ids, thresholds, which metrics to compute)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Metric families a user can select with ``--metrics``.
METRIC_FAMILIES = ("faces", "text", "fidelity", "quality", "judge")


@dataclass(frozen=True)
class EvalOptions:
    """What to compute and with which models.

    Model sources accept hub ids, local directories and ``tiny://name``. A metric whose model is
    not configured or not on disk is reported as unavailable with the reason, never dropped.
    """

    metrics: tuple[str, ...] = METRIC_FAMILIES
    # Quality: the paper uses openai/clip-vit-large-patch14.
    clip_model: str | None = "openai/clip-vit-large-patch14"
    # Privacy / faces: "auto" uses ArcFace when its model pack is on disk, else dlib.
    face_embedder: str = "auto"
    arcface_root: str | None = None  # InsightFace root holding models/<pack>/ (default ~/.insightface)
    arcface_pack: str = "antelopev2"
    # None: the privacy verifier's own threshold (verify.face_score_threshold), so the verifier
    # and the evaluation detect the same faces.
    face_detection_threshold: float | None = None
    # Judge (race entropy, VLMScore): an engine kind and model for unsafe2safe_ray.engines.
    judge_engine: str | None = None
    judge_model: str | None = None
    judge_max_new_tokens: int = 48
    # Cheating: LPIPS runs only when the lpips package and its VGG weights are on disk.
    lpips_net: str = "vgg"
    # Ray: evaluation actors and rows per batch.
    pool_size: int = 1
    batch_size: int = 4
    num_gpus: float = 0.0
    thumbnail_px: int = 160
    # Also write what identifies people (text read in the originals, thumbnails of the originals)
    # to OUT/private/; the public files never hold it.
    include_private: bool = False
    storage_options: dict = field(default_factory=dict)

    def with_metrics(self, metrics: str | None) -> "EvalOptions":
        """A copy restricted to a comma-separated family list (None keeps all)."""
        if not metrics:
            return self
        chosen = tuple(m.strip() for m in metrics.split(",") if m.strip())
        unknown = [m for m in chosen if m not in METRIC_FAMILIES]
        if unknown:
            raise ValueError(f"unknown metric family {unknown}; known: {', '.join(METRIC_FAMILIES)}")
        return replace(self, metrics=chosen)

    def verifier(self):
        """A ``PrivacyVerifier`` with the job's default verify settings: the evaluation reads
        faces and text with the very detectors (and thresholds) the edit stage verifies with."""
        from unsafe2safe_ray.config import VerifyConfig
        from unsafe2safe_ray.detectors.verifier import PrivacyVerifier

        overrides = {} if self.face_detection_threshold is None else {"face_score_threshold": self.face_detection_threshold}
        return PrivacyVerifier(VerifyConfig(**overrides))

    def wants(self, family: str) -> bool:
        """Whether ``family`` was selected."""
        return family in self.metrics
