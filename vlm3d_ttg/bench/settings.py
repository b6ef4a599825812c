"""What a quality-benchmark run is: its settings, where its files live, and one process's counters.

`BenchRun` bundles the six things every phase of the runner needs together (the set, the
configurations, the generation settings, the evaluation cameras, the metric models and the
output folder), so they are passed as one value instead of six parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InvalidInputError
from .benchset import BenchSet
from .configs import BenchConfig

if TYPE_CHECKING:
    from ..generation import GenerationOptions
    from ..render import Cameras

Preset = Literal["real", "tiny"]


@dataclass(frozen=True)
class EvalViews:
    """The fixed evaluation cameras: `num_views` around the object from azimuth 0 (the front, view 0)."""

    num_views: int = 6
    image_size: int = 448
    elevation: float = 10.0

    def cameras(self, device: Any = None) -> "Cameras":
        """The orbit cameras (un-jittered, the same for every configuration)."""
        from ..render import orbit_cameras

        return orbit_cameras(self.num_views, elevation_deg=self.elevation, image_size=self.image_size, device=device)

    def validate(self) -> "EvalViews":
        """Raise InvalidInputError on a bad value; return self."""
        from ..render import check_image_size

        if self.num_views < 1:
            raise InvalidInputError(f"--eval-views must be ≥ 1, got {self.num_views}")
        check_image_size(self.image_size)
        if not -89 <= self.elevation <= 89:
            raise InvalidInputError(f"--eval-elevation must be within ±89°, got {self.elevation}")
        return self


def _default_options() -> "GenerationOptions":
    from ..backbones import EXPORT_RESOLUTION
    from ..generation import GenerationOptions

    return GenerationOptions(octree_resolution=EXPORT_RESOLUTION)


@dataclass(frozen=True)
class GenerationSettings:
    """How shapes are generated (shared by every configuration) and where the models come from.

    `options` are the library's `GenerationOptions` (declared once there, with `vlm3d-ttg
    generate`'s flags); the rest is the benchmark's own.
    """

    preset: Preset = "real"
    options: "GenerationOptions" = field(default_factory=_default_options)
    cache_dir: str | None = None  # tiny checkpoints ($VLM3D_TTG_CACHE when None)

    @property
    def text_to_image_model(self) -> str:
        """The text-to-image model for rows without an image (`GenerationOptions.text_to_image`, --text-to-image)."""
        return self.options.text_to_image

    @property
    def seed(self) -> int:
        """The set's base seed (each item adds its own offset)."""
        return self.options.seed

    def generation_options(self, **overrides: Any) -> "GenerationOptions":
        """The options one generation runs with (e.g. an item's own seed, this process's device)."""
        return dataclasses.replace(self.options, **overrides)

    def models_key(self) -> dict[str, Any]:
        """What identifies the generating models (part of every cached result's fingerprint)."""
        o = self.options
        # A non-default backbone is part of it (absent for the default: older caches stay valid).
        backbone = {} if o.backbone == type(o)().backbone else {"backbone": o.backbone}
        if self.preset == "tiny":  # the tiny critic's family is part of it (absent for the default, as above)
            family = {} if o.critic_family in (None, "qwen2.5-vl") else {"critic_family": o.critic_family}
            return {"preset": "tiny", **family, **backbone}
        return {"preset": "real", "shape": o.shape_model, "subfolder": o.shape_subfolder, "critic": o.vlm,
                "dtype": o.dtype, "vlm_dtype": o.vlm_dtype, **backbone}


@dataclass(frozen=True)
class MetricSettings:
    """Which metric models to use (None: that metric is off) and how to summarise."""

    clip: str | None = None
    inception: str | None = None
    judge: str | None = None
    judge_reference: bool = True  # the judge sees each item's input image as the reference
    calibrate_judge: bool = False  # also judge base vs base and base vs degraded copies (metrics/calibration.py)
    judge_layout: str = "separate"  # each object's views as separate images, or tiled into one ('grid'); metrics.judge.JUDGE_LAYOUTS
    n_resamples: int = 1000
    confidence: float = 0.95


@dataclass
class RunPaths:
    """Where everything of a run lives (see `vlm3d_ttg.bench.runner` for the layout)."""

    root: Path

    @property
    def items(self) -> Path:
        """Folder of the per-item outputs."""
        return self.root / "items"

    @property
    def inputs(self) -> Path:
        """Folder of the text-to-image inputs."""
        return self.root / "inputs"

    def item(self, item_id: str) -> Path:
        """An item's folder."""
        return self.items / item_id

    def config(self, item_id: str, config_name: str) -> Path:
        """An (item, configuration)'s folder (present only when finished)."""
        return self.items / item_id / config_name

    def generated_input(self, item_id: str) -> Path:
        """Where text-to-image writes an item's input image."""
        return self.inputs / f"{item_id}.png"


@dataclass(frozen=True)
class BenchRun:
    """One benchmark run: which shapes (set × configurations), made how, evaluated how, written where."""

    bench: BenchSet
    configs: list[BenchConfig]
    settings: GenerationSettings
    eval_views: EvalViews
    metrics: MetricSettings
    paths: RunPaths


@dataclass
class ShardStats:
    """What one process did: counts per phase (generated vs found finished)."""

    generated: int = 0
    skipped: int = 0
    evaluated: int = 0
    eval_skipped: int = 0
    images_made: int = 0
    empty: int = 0
    items_done_before: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
