"""Typed job configuration and named profiles.

A profile is a YAML file shipped in ``unsafe2safe_ray/profiles/``. The resolved config is
``defaults <- profile <- --config FILE <- --set key=value``, validated once up front
(``extra="forbid"`` everywhere, so a typo is an error, not a silently ignored knob) and stored
beside the output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from unsafe2safe_ray.detectors.identity import SAME_IDENTITY_DISTANCE

# Editors ``edit.editor`` may name (``fake[:failure]`` is the test fake; editors/__init__ loads them).
EDITOR_NAMES = ("instruct-pix2pix", "flowedit", "kontext", "classic", "fake")
# Stages that were folded into ``edit`` (one edit capability, one verifier).
FOLDED_STAGES = ("classic_edit", "verify")


class ConfigError(ValueError):
    """A config that cannot be used; the message says what to change."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageSection(Section):
    """Resources and batch shape of one stage. ``pool_size`` set means an actor pool."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = Field(8, ge=1)
    pool_size: int | None = Field(None, ge=1)
    # Batches queued on one actor of the pool (Ray's max_tasks_in_flight_per_actor; None: Ray's
    # default). 1 hands a batch to whichever actor frees up first: no actor sits on a queue
    # while another idles at the end of a run.
    max_tasks_in_flight: int | None = Field(None, ge=1)


class IOConfig(Section):
    """Input listing, decoding limits and output encoding."""

    shard_size: int = Field(1000, ge=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    output_format: Literal["auto", "jpg", "png"] = "auto"
    jpeg_quality: int = Field(95, ge=1, le=100)
    # Refused before decoding (decompression-bomb guard), in pixels.
    max_pixels: int = Field(100_000_000, ge=1)
    # Larger images are downscaled so their longer side is at most this.
    max_side: int = Field(4096, ge=16)
    # Opt-in limits: by default every file a decoder can open becomes a row (a 1x1 pixel, a
    # 3000x8 strip); smaller sides or longer strips than these fail when set.
    min_side: int = Field(1, ge=1)
    max_aspect_ratio: float | None = Field(None, ge=1.0)
    # Bounded reads: a file larger than this is refused from its size, before it is read; a read
    # (one attempt) that takes longer than read_timeout_s fails the row.
    max_file_bytes: int = Field(256 * 1024 * 1024, ge=1)
    read_timeout_s: float = Field(60.0, gt=0.0)
    # Prefixes (URIs or local folders) a manifest may name besides its own folder
    # (--allow-input-prefix); anything else is refused at planning time.
    allow_input_prefixes: list[str] = Field(default_factory=list)
    read_retries: int = Field(3, ge=0)
    read_batch_size: int = Field(16, ge=1)
    write_batch_size: int = Field(64, ge=1)
    # One writer per output: a run's lease on OUTPUT/_lease.json expires this many seconds after
    # its last heartbeat (sent every lease_expiry_s / 4); an expired lease can be taken over.
    lease_expiry_s: float = Field(120.0, gt=0.0, le=86400.0)


# A stage section's scheduling knobs: where and in what batches a stage runs, not what it does.
_STAGE_SCHEDULING = ("num_cpus", "num_gpus", "batch_size", "pool_size", "max_tasks_in_flight")
_IO_NOT_DIGESTED = ("storage_options", "shard_size", "read_retries", "read_batch_size",
                    "write_batch_size", "lease_expiry_s", "allow_input_prefixes", "read_timeout_s")


class RayConfig(Section):
    address: str | None = None
    # Reading/decoding task CPUs; fractional values let decode overlap with model actors.
    decode_num_cpus: float = 1.0
    write_num_cpus: float = 1.0
    # Stages that share one actor pool, e.g. [[detect, edit]]: where a group's stages follow each
    # other in ``stages``, each worker runs them one after another on its batch (models loaded
    # once per worker, no hand-over of pixels through the object store, no pool idling while
    # another is busy); members that do not follow each other run in their own pools. A group's
    # workers take the largest num_cpus/num_gpus/pool_size of its stages and the first stage's
    # batch_size.
    colocate: list[list[str]] = Field(default_factory=list)


class DetectConfig(StageSection):
    """``detect``: shipped-weight detectors (faces, text, plates) and templated captions."""

    pool_size: int | None = 2
    # onnxruntime intra-op threads per actor; 0 = the actor's num_cpus (at least 1), so that
    # actors x threads never exceeds the CPUs Ray granted.
    threads: int = Field(0, ge=0)
    faces: bool = True
    text: bool = True
    plates: bool = True
    face_score_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # Small faces: images whose longer side is below this are scanned at 2x ...
    face_upscale_below: int = Field(400, ge=0)
    # ... and images above this are also scanned in native-resolution tiles of face_tile_size.
    face_max_side: int = Field(1280, ge=64)
    face_tile_size: int = Field(800, ge=64)
    # Frame-filling faces: images larger than 1.4x this are also scanned shrunk to it (0 = off).
    face_coarse_side: int = Field(320, ge=0)
    # Faces of 10-24 px: windows around weak small peaks are re-scanned enlarged this much (0 = off).
    face_zoom: float = Field(2.5, ge=0.0)
    # Faces of 10-48 px (crowds): an MTCNN pass (detectors.faces.SmallFaceDetector) on images of
    # at least face_small_min_pixels pixels (0 = every image) or where two or more faces were found.
    small_faces: bool = True
    face_small_min_pixels: int = Field(600_000, ge=0)
    text_score_threshold: float = Field(0.6, ge=0.0, le=1.0)
    # Readings with fewer letters/digits (a whole line or column) are texture noise.
    text_min_chars: int = Field(2, ge=1)
    # Plates found by shape and texture, without reading them (small, blurred, skewed plates).
    plate_shapes: bool = True

    def face_detector_kwargs(self) -> dict[str, Any]:
        """``FaceDetector`` settings (all but threads): the detect stage's detector, and the
        verifier's with its own score threshold, so both see the same scales."""
        return {"score_threshold": self.face_score_threshold, "upscale_below": self.face_upscale_below,
                "max_side": self.face_max_side, "tile_size": self.face_tile_size,
                "coarse_side": self.face_coarse_side, "zoom": self.face_zoom, "small_faces": self.small_faces,
                "small_face_min_pixels": self.face_small_min_pixels}


class ClassicConfig(Section):
    """``classic``: how the classic editor (``edit.editor=classic``) obscures regions: blur /
    pixelate / fill / inpaint inside each dilated region (an ellipse for faces)."""

    # Method per paper category; categories not listed use default_method.
    methods: dict[str, Literal["blur", "pixelate", "fill", "inpaint"]] = Field(
        default_factory=lambda: {"people": "blur", "text_and_symbols": "blur"})
    default_method: Literal["blur", "pixelate", "fill", "inpaint"] = "blur"
    # Each region grows by this fraction of its size on every side, plus dilation_px.
    dilation: float = Field(0.1, ge=0.0, le=2.0)
    dilation_px: int = Field(2, ge=0)
    face_ellipse: bool = True
    # Gaussian kernel size as a fraction of the region's shorter side (dlib still recognises
    # faces under kernels of half the face width).
    blur_kernel_fraction: float = Field(1.0, gt=0.0, le=4.0)
    pixelate_blocks: int = Field(8, ge=1)
    # Solid fill colour (RGB); None = the region's mean colour.
    fill_color: list[int] | None = None
    inpaint_radius: int = Field(5, ge=1)


VERIFY_CHECKS = ("faces", "text")


class VerifyConfig(Section):
    """``verify``: the privacy verifier that the edit stage runs on every edited image (see
    ``detectors.verifier``); leaks escalate, then fail the row.

    ``required_checks`` are the checks without which no row may be published as verified: a
    config that turns one of them off (or ``edit.verify``) is refused until it is also removed
    from this list, so switching verification off is always explicit and visible.
    """

    threads: int = Field(0, ge=0)  # 0 = the edit actor's num_cpus
    check_faces: bool = True
    check_text: bool = True
    required_checks: list[Literal["faces", "text"]] = Field(default_factory=lambda: list(VERIFY_CHECKS))
    # Lower than detect's threshold: the verifier wants recall on half-obscured faces.
    face_score_threshold: float = Field(0.4, gt=0.0, lt=1.0)
    # dlib descriptor distance below which an output face is the original person.
    face_distance_threshold: float = Field(SAME_IDENTITY_DISTANCE, gt=0.0)
    # Normalized edit similarity (0..1) of re-read text at or above which text still leaks.
    text_similarity_threshold: float = Field(0.5, gt=0.0, le=1.0)
    # OCR confidence from which a reading counts (low: a shaky reading still counts as readable).
    text_score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    escalation_method: Literal["blur", "pixelate", "fill", "inpaint"] = "fill"
    escalation_dilation: float = Field(0.15, ge=0.0, le=2.0)

    def enabled_checks(self) -> list[str]:
        """The checks that run, in ``VERIFY_CHECKS`` order."""
        return [c for c, on in zip(VERIFY_CHECKS, (self.check_faces, self.check_text)) if on]


class CaptionConfig(StageSection):
    """``caption``: VLM privacy flag, private/public captions and review (Stage 1a/1b)."""

    pool_size: int | None = 1
    # transformers (in-process, CPU or one GPU) | vllm (ray.data.llm processor) | fake (tests).
    engine: Literal["transformers", "vllm", "fake"] = "transformers"
    # A hub id, a local directory, an s3:// path, or tiny://<name>.
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    # Longer image side sent to the VLM (the paper's model sees one 448 px tile).
    max_image_side: int = Field(768, ge=28)
    max_new_tokens: int = Field(1024, ge=16)
    temperature: float = Field(0.0, ge=0.0)
    # transformers engine: torch dtype and intra-op threads (0 = torch's default).
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    threads: int = Field(0, ge=0)
    # vLLM engine arguments: max_model_len, limit_mm_per_prompt, gpu_memory_utilization,
    # tensor_parallel_size, trust_remote_code, ... (transformers reads trust_remote_code only).
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    # Hub revision (commit hash, tag or branch) of ``model``; required with trust_remote_code
    # unless the model is a local folder, and recorded in the run report and the config digest.
    revision: str | None = None
    accelerator_type: str | None = None
    # Privacy criteria: None = the paper's nine categories; else {name: description} or a list
    # of "name: description" strings / known category names.
    criteria: dict[str, str] | list[str] | None = None
    # Ask for bounding boxes too (for models that ground, e.g. Qwen2.5-VL).
    regions: bool = False
    # The frame the model's boxes come in: grid1000 (Qwen2-VL, InternVL, Qwen3-VL: 0-1000 of the
    # image), resized_pixels (Qwen2.5-VL: absolute pixels of the processor-resized image), or
    # auto (derived from the model id). Boxes outside the frame are dropped and counted.
    box_frame: Literal["auto", "grid1000", "resized_pixels"] = "auto"
    # Character bounds of the answer's free text (the grammar enforces them).
    caption_chars: int = Field(400, ge=16)
    review_item_chars: int = Field(160, ge=16)
    max_review_items: int = Field(5, ge=1, le=5)


class InstructConfig(StageSection):
    """``instruct``: text LLM edit instruction from the public caption (Stage 1c)."""

    pool_size: int | None = 1
    engine: Literal["transformers", "vllm", "fake"] = "transformers"
    model: str = "Qwen/Qwen3-4B-Instruct-2507"
    max_new_tokens: int = Field(384, ge=16)
    # Sampling, not greedy: new identities should vary across images (the paper's diversity).
    temperature: float = Field(0.7, ge=0.0)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    threads: int = Field(0, ge=0)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    # Hub revision of ``model`` (see CaptionConfig.revision).
    revision: str | None = None
    accelerator_type: str | None = None
    # Also write the public caption with the edits applied.
    combined_caption: bool = False
    instruction_chars: int = Field(360, ge=16)
    caption_chars: int = Field(400, ge=16)


class EditConfig(StageSection):
    """``edit``: the diffusion (or classic) editor of Stage 2."""

    pool_size: int | None = 1
    # instruct-pix2pix | flowedit | kontext | classic | fake[:failure] (fake is for tests).
    editor: str = "classic"
    # Edit every live row, flagged or not (baselines, benchmarks, tests).
    edit_all: bool = False
    # Model source per editor: a hub id, a local directory, or tiny://<name>.
    instruct_pix2pix_model: str = "timbrooks/instruct-pix2pix"
    flowedit_model: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    kontext_model: str = "black-forest-labs/FLUX.1-Kontext-dev"
    # auto = bf16 (fp16 where bf16 is missing) on GPU, float32 on CPU.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Denoising steps and text guidance; None = the editor's own default
    # (instruct-pix2pix 50 / 7.5, flowedit 50 / see flowedit_*, kontext 28 / 2.5).
    steps: int | None = Field(None, ge=1)
    guidance: float | None = Field(None, ge=0.0)
    image_guidance: float = Field(1.5, ge=0.0)  # instruct-pix2pix only
    # FlowEdit (Kulikov et al. 2024) with the Unsafe2Safe paper's settings.
    flowedit_src_guidance: float = Field(3.5, ge=0.0)
    flowedit_tar_guidance: float = Field(13.5, ge=0.0)
    flowedit_n_min: int = Field(0, ge=0)
    flowedit_n_max: int = Field(33, ge=0)
    flowedit_n_avg: int = Field(1, ge=1)
    # T5 prompt length (SD3 and FLUX); shorter is faster, 256 keeps the paper's captions whole.
    max_sequence_length: int = Field(256, ge=8, le=512)
    # Working resolution. native: the image's size on the editor's grid, downscaled only when
    # the longer side exceeds max_side (the paper). area: about bucket_area pixels with the
    # aspect kept on a bucket_multiple grid, so differently sized images batch together.
    resolution: Literal["native", "area"] = "native"
    max_side: int = Field(1536, ge=16)
    bucket_area: int = Field(1024 * 1024, ge=256)
    bucket_multiple: int = Field(64, ge=8)
    # An OOM or NaN batch is retried image by image at this fraction of the size, then fails.
    fallback_scale: float = Field(0.5, gt=0.0, lt=1.0)
    # global edits the whole image (the paper); regions blends the edit into the original only
    # inside the union of detector and VLM regions, grown by dilation (fraction of each box's
    # longer side) and feathered inward over feather pixels.
    # crops edits only a window around each region (grown by crop_margin x its longer side, at
    # least crop_min_side px, overlapping windows merged) at about crop_size^2 pixels, and pastes
    # it back inside the same feathered region mask: the cost follows the sensitive pixels.
    scope: Literal["global", "regions", "crops"] = "global"
    dilation: float = Field(0.15, ge=0.0, le=2.0)
    feather: int = Field(8, ge=0)
    crop_margin: float = Field(0.5, ge=0.0, le=4.0)
    crop_min_side: int = Field(128, ge=16)
    crop_size: int = Field(512, ge=16)
    # Verify each edited image with the privacy verifier (the verify section's settings). A leak
    # is re-edited up to `retries` times with a new seed and stronger settings, then the leaking
    # regions get the verify section's escalation method; still leaking -> failed row.
    verify: bool = True
    retries: int = Field(1, ge=0)
    classic_fallback: bool = True

    @model_validator(mode="after")
    def _known_editor(self) -> "EditConfig":
        if self.editor.partition(":")[0] not in EDITOR_NAMES:
            raise ValueError(f"unknown editor {self.editor!r}; use one of {', '.join(EDITOR_NAMES[:4])}")
        return self

    @model_validator(mode="after")
    def _flowedit_window(self) -> "EditConfig":
        if self.flowedit_n_min > self.flowedit_n_max:
            raise ValueError("flowedit_n_min must not exceed flowedit_n_max")
        if self.editor == "flowedit" and self.steps is not None and self.flowedit_n_max > self.steps:
            raise ValueError("flowedit_n_max must not exceed steps (set edit.flowedit_n_max too)")
        return self


TEXT_LEAK_KINDS = ("ocr_text", "name", "phone", "email", "card", "iban", "plate")


class TextLeaksConfig(Section):
    """``publish.text_leaks``: the published texts (public caption, edit instruction, combined
    caption) are checked against the row's private evidence before the row is written (see
    ``detectors.text_leaks``). ``redact`` replaces each leak with ``placeholder``; ``fail`` also
    fails the row (pixels withheld); ``off`` publishes the texts as the models wrote them."""

    mode: Literal["redact", "fail", "off"] = "redact"
    kinds: list[Literal["ocr_text", "name", "phone", "email", "card", "iban", "plate"]] = Field(
        default_factory=lambda: list(TEXT_LEAK_KINDS))
    placeholder: str = "[redacted]"
    # rapidfuzz ratio (0-100) from which an OCR string or a name counts as repeated.
    fuzzy_threshold: float = Field(85.0, ge=50.0, le=100.0)
    # Letters/digits an OCR string (or one of its words) needs to be looked for; names need fewer.
    min_chars: int = Field(4, ge=2)
    min_name_chars: int = Field(3, ge=2)
    # Phone numbers in the national formats of these regions (any region in +international form).
    phone_regions: list[str] = Field(default_factory=lambda: ["US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "AU", "BR"])

    @model_validator(mode="before")
    @classmethod
    def _yaml_off(cls, data: Any) -> Any:
        # YAML reads a bare ``off`` as false.
        if isinstance(data, dict) and data.get("mode") is False:
            data = {**data, "mode": "off"}
        return data


class PublishConfig(Section):
    """What is checked before anything is published."""

    text_leaks: TextLeaksConfig = Field(default_factory=TextLeaksConfig)

    @model_validator(mode="before")
    @classmethod
    def _mode_shorthand(cls, data: Any) -> Any:
        # ``publish.text_leaks: fail`` is short for ``publish.text_leaks.mode: fail``.
        if isinstance(data, dict) and isinstance(data.get("text_leaks"), (str, bool)):
            data = {**data, "text_leaks": {"mode": data["text_leaks"]}}
        return data


class FinetuneConfig(Section):
    """``finetune:``: fine-tune an InstructPix2Pix editor on a job's own (original, edited) pairs
    (``unsafe2safe finetune``, ``unsafe2safe_ray.train``). Not part of the job's config digest."""

    # Starting checkpoint: a diffusers InstructPix2Pix pipeline (hub id, local folder, tiny://name).
    # The paper starts from MagicBrush (a diffusers conversion of it works the same way).
    base_model: str = "timbrooks/instruct-pix2pix"
    # How the UNet sees the two texts. fused (default, the paper's SafeAttention idea): each
    # cross-attention attends to the instruction and to the public caption separately and adds
    # the caption's output through a zero-initialized per-layer gate, so step 0 is exactly the
    # base model. concat: one cross-attention over the two token sequences joined.
    conditioning: Literal["fused", "concat"] = "fused"
    resolution: int = Field(256, ge=16)
    learning_rate: float = Field(1e-5, gt=0.0)
    weight_decay: float = Field(1e-2, ge=0.0)
    batch_size: int = Field(4, ge=1)  # per worker
    gradient_accumulation: int = Field(1, ge=1)
    steps: int = Field(5000, ge=1)  # optimizer steps
    max_grad_norm: float = Field(1.0, gt=0.0)
    bf16: bool = True  # autocast to bfloat16 where a GPU runs the job; float32 on CPU
    ema: bool = False
    ema_decay: float = Field(0.9999, gt=0.0, lt=1.0)
    # Classifier-free-guidance dropout as in InstructPix2Pix: these shares of the samples lose
    # the texts only, the input image only, or both.
    text_dropout: float = Field(0.05, ge=0.0, le=1.0)
    image_dropout: float = Field(0.05, ge=0.0, le=1.0)
    both_dropout: float = Field(0.05, ge=0.0, le=1.0)
    random_flip: bool = True
    # Pair filter: keep a pair when CLIP(edited, public caption) >= min_clip_ratio x
    # CLIP(original, private caption) and the verifier passed it without a classic fallback.
    min_clip_ratio: float = Field(0.7, ge=0.0)
    clip_model: str = "openai/clip-vit-large-patch14"
    filter_batch_size: int = Field(16, ge=1)
    filter_num_gpus: float = Field(0.0, ge=0.0)
    # Ray Train: workers (DDP), GPUs (None = use them when the cluster has any), CPUs per worker.
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | None = None
    cpus_per_worker: float = Field(1.0, gt=0.0)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    shuffle_buffer: int = Field(64, ge=0)
    seed: int = 42

    @model_validator(mode="after")
    def _dropout_shares(self) -> "FinetuneConfig":
        if self.text_dropout + self.image_dropout + self.both_dropout > 1.0:
            raise ValueError("text_dropout + image_dropout + both_dropout must not exceed 1")
        return self


class UtilityConfig(Section):
    """``utility:``: ``unsafe2safe utility --mode mae-finetune``, the paper's classifier recipe
    (MAE ViT-B/16, fine-tuned end to end). The Unsafe2Safe paper does not state its optimizer
    settings; the defaults are MAE's own ViT-B fine-tuning recipe (He et al. 2022)."""

    mae_model: str = "facebook/vit-mae-base"
    image_size: int = Field(224, ge=16)
    epochs: int = Field(100, ge=1)
    warmup_epochs: int = Field(5, ge=0)
    # Learning rate = base_learning_rate x effective batch / 256 (MAE's scaling rule).
    base_learning_rate: float = Field(5e-4, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    layer_decay: float = Field(0.65, gt=0.0, le=1.0)
    batch_size: int = Field(32, ge=1)  # per worker
    gradient_accumulation: int = Field(1, ge=1)
    randaugment_ops: int = Field(2, ge=0)
    randaugment_magnitude: int = Field(9, ge=0)
    bf16: bool = True
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | None = None
    cpus_per_worker: float = Field(1.0, gt=0.0)
    seed: int = 0


class JobConfig(Section):
    """The whole job. ``stages`` is the ordered stage list between decode and write."""

    profile: str = "none"
    stages: list[str] = Field(default_factory=list)
    seed: int = 42
    io: IOConfig = Field(default_factory=IOConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    classic: ClassicConfig = Field(default_factory=ClassicConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    instruct: InstructConfig = Field(default_factory=InstructConfig)
    edit: EditConfig = Field(default_factory=EditConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    utility: UtilityConfig = Field(default_factory=UtilityConfig)

    @model_validator(mode="after")
    def _known_stages(self) -> "JobConfig":
        from unsafe2safe_ray.stages import STAGES

        folded = [s for s in self.stages if s in FOLDED_STAGES]
        if folded:
            raise ValueError(f"stage(s) {folded} are part of the edit stage now: use stages like "
                             "[detect, edit] with edit.editor=classic (settings under classic:), and "
                             "verify: settings for the verifier that edit runs")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {sorted(STAGES)}")
        return self

    @model_validator(mode="after")
    def _colocated_stages_are_known(self) -> "JobConfig":
        from unsafe2safe_ray.stages import STAGES

        grouped: set[str] = set()
        for group in self.ray.colocate:
            unknown = [name for name in group if name not in STAGES]
            if len(group) < 2 or unknown or len(set(group)) < len(group):
                raise ValueError(f"ray.colocate group {group} must name two or more different stages "
                                 f"(e.g. --set 'ray.colocate=[[detect,edit]]'); known: {sorted(STAGES)}")
            if grouped & set(group):
                raise ValueError(f"ray.colocate names {sorted(grouped & set(group))} in two groups")
            grouped |= set(group)
        return self

    @model_validator(mode="after")
    def _verification_is_explicit(self) -> "JobConfig":
        if "edit" not in self.stages:
            return self
        required = list(dict.fromkeys(self.verify.required_checks))
        if not self.edit.verify and required:
            raise ValueError(f"edit.verify is off but verify.required_checks lists {required}: also set "
                             "verify.required_checks=[] to publish edited rows that nobody verified")
        off = [c for c in required if c not in self.verify.enabled_checks()]
        if off:
            keep = ",".join(c for c in required if c not in off)
            raise ValueError(f"verify.check_{off[0]} is off but verify.required_checks lists {off[0]!r}: remove it "
                             f"(e.g. --set verify.required_checks=[{keep}]) to publish rows whose check did not run")
        return self

    @model_validator(mode="after")
    def _remote_code_is_pinned(self) -> "JobConfig":
        for name in ("caption", "instruct"):
            section = getattr(self, name)
            if name not in self.stages or section.engine == "fake":
                continue
            if section.engine_kwargs.get("trust_remote_code") and not section.revision \
                    and not is_fixed_model_source(section.model):
                raise ValueError(f"{name}.engine_kwargs.trust_remote_code runs code from {section.model!r} on every "
                                 f"worker: pin it with {name}.revision=<commit hash> (or use a local folder)")
        return self

    def colocated_steps(self, names: list[str]) -> list[list[str]]:
        """``names`` (stage names, in order) cut into Ray steps: neighbours that belong to one
        ``ray.colocate`` group share a step; every other stage is a step of its own."""
        group_of = {name: index for index, group in enumerate(self.ray.colocate) for name in group}
        steps: list[list[str]] = []
        for name in names:
            if steps and name in group_of and group_of.get(steps[-1][-1]) == group_of[name]:
                steps[-1].append(name)
            else:
                steps.append([name])
        return steps

    def step_names(self) -> list[str]:
        """``stages`` as Ray steps, a colocated step named ``a+b``."""
        return ["+".join(step) for step in self.colocated_steps(self.stages)]

    def digest(self) -> str:
        """A short digest of everything that changes output pixels or rows."""
        # Not in it: where and how the job runs (ray, credentials, batching, the lease) and the
        # shard size (fixed by the saved plan).
        exclude: dict[str, Any] = {"ray": True, "finetune": True, "utility": True, "io": set(_IO_NOT_DIGESTED)}
        for name, value in self:
            if isinstance(value, StageSection):
                exclude[name] = set(_STAGE_SCHEDULING)
        payload = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_fixed_model_source(source: str) -> bool:
    """Whether ``source`` is a local folder (or a tiny test model or an object-store copy the
    user controls) rather than a hub id whose branch can move."""
    if source.startswith(("tiny://", "file://", "/", "./", "../", "~")) or "://" in source:
        return True
    return Path(source).expanduser().is_dir()


def available_profiles() -> list[str]:
    files = resources.files("unsafe2safe_ray.profiles").iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU (without importing torch)."""
    if not shutil.which("nvidia-smi"):
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def default_profile() -> str:
    """``gpu-fast`` where a GPU is visible, else ``cpu``."""
    return "gpu-fast" if gpu_visible() and "gpu-fast" in available_profiles() else "cpu"


def _profile_dict(name: str) -> dict[str, Any]:
    if name not in available_profiles():
        raise ConfigError(f"unknown profile {name!r}; available: {', '.join(available_profiles())}")
    text = resources.files("unsafe2safe_ray.profiles").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    data["profile"] = name
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["edit.editor=flowedit", "io.shard_size=10"]`` -> nested dict, values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set key {key!r} is malformed")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def load_config(
    profile: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> JobConfig:
    """Resolve and validate the job config. Raises ``ConfigError`` with a one-line message."""
    data = _profile_dict(profile or default_profile())
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            extra = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        if "profile" in extra and extra["profile"] != data["profile"] and profile is None:
            data = _profile_dict(extra["profile"])
        data = _deep_merge(data, extra)
    data = _deep_merge(data, parse_set(overrides or []))
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")  # our own validators' messages
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"invalid config at {where}: {message}{more}" if where else f"{message}{more}") from None
