"""The backbone protocol: what the guided loop asks of a flow-matching 3D generator.

A backbone is what diffusers calls a pipeline minus the loop (k-diffusion's `model(x, sigma)`
wrapper is the smallest example of "the loop never knows the model"). The sampler, the search,
the reward, the surface and the run see only this protocol; everything a generator does its own
way lives in its backbone file (`backbones/hunyuan3d2.py` for hy3dgen 2.0's Hunyuan3D-2 family).

Conventions every backbone presents to the loop, whatever its generator does inside
(docs/design.md §2 and "Adding a backbone"):

- **σ runs from 0 (noise) to 1 (data).** `SamplingContext.sigmas[i]` is the σ at which step i
  evaluates the model, and `sigmas[i + 1]` where its Euler step lands; the list has one more
  entry than there are steps. hy3dgen 2.0 uses this direction natively (`linspace(0, 1, T)`, the
  DiT gets t = σ) and its scheduler appends σ = 1, so its last step has zero length. A generator
  whose time runs the other way (t = 1 noise → 0 data, as in diffusers' rectified-flow
  schedulers used by TripoSG, Step1X-3D and Hunyuan3D-2.1) reports σ = 1 − t and a velocity of
  the opposite sign.
- **The velocity is dx/dσ toward data**, so the sampler's Euler step is
  `x_next = x + (σ_next − σ)·v` and the predicted clean latent is `x̂ = x + (1 − σ)·v`
  (`guidance.predicted_clean_latent`). `velocity` applies the generator's own classifier-free
  guidance; a generator that batches [cond, uncond] (hy3dgen) or [uncond, cond] (diffusers)
  keeps that order to itself, and `SamplingContext.rows_per_latent` says how many model rows one
  latent costs (2 with CFG batching, 1 for a guidance-distilled model), for the compute counts.
- **Latents are (batch, tokens, channels)**: one row per candidate, a token set (hy3dgen:
  3072 × 64 at the real size; TripoSG and Step1X-3D also use token sets of other sizes). The
  loop never reshapes them; it stacks candidates along dim 0 and slices rows.
- **The occupancy field of a predicted clean latent** is queried in world coordinates inside the
  cube ±`bounds`; inside is where the logits exceed `level`. The logits need not be a distance
  (hy3dgen's are not). `occupancy_field` returns the decoded tokens (the tensor gradients flow
  through, computed once) and the query function; the surface code re-queries the function at
  mesh vertices with those tokens as a leaf, so the decoder's heavy part runs once per step.
- **Images**: a single-view backbone takes one image (a path or a PIL image, RGBA with a
  transparent background); a multi-view one takes a dict of views named from `VIEW_NAMES`
  ("front" required). `views` says which names a backbone accepts.

What a backbone *class* knows before anything loads — its option defaults, its conditioning inputs
for a run's options, the folders its real checkpoints live in — it may declare as class attributes /
static methods (`defaults`, `conditioning(options, preset)`, `checkpoint_folders(options)`,
`variant_names()`); the front ends ask through `backbone_defaults`, `backbone_conditioning`,
`backbone_checkpoint_folders` and `backbone_variants`, which give a plug-in that declares none of
them sensible answers (the options' own defaults; one image, or a prompt through text-to-image; no
folders and no variants known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import torch

from ..errors import InvalidInputError
from ..surface import OccupancyField

#: The view names a multi-view backbone may accept (hy3dgen's order: front, then clockwise).
VIEW_NAMES = ("front", "left", "back", "right")
#: What a single-view backbone accepts.
SINGLE_VIEW = ("front",)
#: The export's volume decoders (`Backbone.to_mesh`'s `decoder`): the full grid (every backbone's), a
#: coarse grid then only near the surface with exact attention, or FlashVDM's (near the surface, each
#: chunk attending to its top-k latent tokens).
ExportDecoder = Literal["dense", "hierarchical", "flashvdm"]
EXPORT_DECODERS: tuple[str, ...] = get_args(ExportDecoder)


@dataclass(frozen=True)
class Conditioning:
    """The inputs a backbone takes for a run's options, known before it loads."""

    views: tuple[str, ...] = SINGLE_VIEW  # SINGLE_VIEW: one image; else the view names it takes ("front" required)
    text_to_image: bool = True  # a prompt alone works: the input image is made by text-to-image first
    multiview_hint: str = ""  # how to choose a multi-view model of this backbone (said when extra views are given)

    @property
    def multiview(self) -> bool:
        """Whether it takes named views rather than one image."""
        return self.views != SINGLE_VIEW


def backbone_defaults(cls: Any) -> dict[str, Any]:
    """The option defaults backbone class `cls` declares (field name → command-line value: its steps, CFG
    scale, export grid); {} when it declares none (the options' own defaults hold)."""
    return dict(getattr(cls, "defaults", None) or {})


def backbone_conditioning(cls: Any, options: Any, preset: Any) -> Conditioning:
    """What backbone class `cls` takes as input for `options` under `preset` (a `presets.Preset`): its own
    `conditioning(options, preset)`, else one image of the views it declares (or a prompt via text-to-image)."""
    ask = getattr(cls, "conditioning", None)
    if ask is not None:
        return ask(options, preset)
    views = getattr(cls, "views", SINGLE_VIEW)
    views = views if isinstance(views, tuple) else SINGLE_VIEW
    return Conditioning(views, text_to_image=views == SINGLE_VIEW)


def backbone_variants(cls: Any) -> tuple[str, ...]:
    """The model names --shape-model may take under an offline preset with variants (`Preset.shape_variants`:
    it writes its own copy of each): backbone class `cls`'s `variant_names()`, else none."""
    ask = getattr(cls, "variant_names", None)
    return tuple(ask()) if ask is not None else ()


def backbone_checkpoint_folders(cls: Any, options: Any) -> dict[str, Path]:
    """The folders whose files backbone class `cls` loads for the real models of `options` (label → folder;
    an output may not land in them): its own `checkpoint_folders(options)`, else none known."""
    ask = getattr(cls, "checkpoint_folders", None)
    return dict(ask(options)) if ask is not None else {}


@dataclass
class SamplingContext:
    """Everything a run fixes before its first step: the encoded condition and the σ schedule.

    `condition` is the backbone's own (opaque to the loop); `sigmas` follows the loop's
    convention (0 noise → 1 data, one entry more than steps); `batch_size` is the number of
    conditioning inputs; `rows_per_latent` the model rows one latent costs per velocity call.
    """

    condition: Any
    sigmas: list[float]
    batch_size: int = 1
    rows_per_latent: int = 1


@runtime_checkable
class Backbone(Protocol):
    """A flow-matching 3D generator as the guided loop sees it (conventions: the module docstring)."""

    name: str  # the registry name of its family (vlm3d_ttg.backbones.BACKBONES)
    views: tuple[str, ...]  # the view names it accepts: SINGLE_VIEW, or a subset of VIEW_NAMES with "front"
    bounds: float  # half side of the cube its occupancy field is decoded in
    level: float  # the iso-level of its surface

    @property
    def device(self) -> torch.device:
        """Where its models run (and where latents live)."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype latents have in the loop (the denoiser's)."""
        ...

    @property
    def decode_dtype(self) -> torch.dtype:
        """The dtype the guidance decode (`occupancy_field`) runs in: float32 at least for gradients."""
        ...

    def prepare(self, image: Any, *, num_inference_steps: int, guidance_scale: float) -> SamplingContext:
        """Encode the conditioning image(s) (no grad) and fix the σ schedule of a run."""
        ...

    def schedule(self, num_inference_steps: int) -> list[float]:
        """The σ list `prepare` would give for `num_inference_steps`, without encoding anything."""
        ...

    def noise(self, rows: int, generator: torch.Generator | None) -> torch.Tensor:
        """The initial latents (rows, tokens, channels) at σ = sigmas[0], drawn from `generator`."""
        ...

    def velocity(self, latents: torch.Tensor, step: int, context: SamplingContext) -> torch.Tensor:
        """dx/dσ at `latents` for step `step` with the generator's CFG applied; same shape as `latents`.

        Differentiable w.r.t. `latents` when grad is enabled (the exact `grad_mode="xt"`)."""
        ...

    def step(self, velocity: torch.Tensor, step: int, latents: torch.Tensor, context: SamplingContext) -> torch.Tensor:
        """The sampler's own step from `latents`: x + (σ_next − σ)·v (computed as the generator does,
        so that an unguided run reproduces the generator's own loop bit for bit)."""
        ...

    def for_rows(self, context: SamplingContext, rows: int) -> SamplingContext:
        """The context of one conditioning input repeated for a velocity call on `rows` latents."""
        ...

    def occupancy_field(self, latent: torch.Tensor) -> OccupancyField:
        """The occupancy field of one clean latent (1, tokens, channels), differentiable w.r.t. it
        (when it requires grad), in `decode_dtype`."""
        ...

    def to_mesh(
        self, latent: torch.Tensor, *, octree_resolution: int, num_chunks: int, bounds: float, level: float
    ) -> Any | None:
        """The exported mesh (trimesh.Trimesh) of one final latent (1, tokens, channels), as the
        generator's own pipeline exports it: `octree_resolution` cells per axis over the cube
        ±`bounds`, the level set `level`, at most `num_chunks` points per decoder call; None when
        there is no surface. A backbone offering coarse-to-fine exports also takes `decoder=` (one of
        EXPORT_DECODERS other than "dense"; the sampler passes it only then)."""
        ...

    def offload_groups(self) -> dict[str, list[torch.nn.Module]]:
        """Its models by loop phase: {"condition": [...], "denoise": [...]} (for `--offload-idle`)."""
        ...

    def reference_image(self, image: Any, side: int) -> torch.Tensor:
        """The conditioning image as the generator sees it (3, side, side) in [0, 1], on white:
        the critic's reference (`--critic-reference`)."""
        ...

    def input_foreground(self, image: Any, size: int) -> torch.Tensor:
        """The (front) conditioning image's foreground (size, size) in [0, 1] as the generator's own
        preprocessing leaves it (cropped, recentred, rescaled: what the model sees) — the target of
        the input-silhouette term (`vlm3d_ttg.silhouette`)."""
        ...

    def export_frame(self, octree_resolution: int) -> "np.ndarray":
        """4 × 4 map from the frame of the mesh `to_mesh` returns to the frame of `occupancy_field`
        (the identity where the export places vertices where the field has its surface)."""
        ...


def check_views(image: Any, views: tuple[str, ...]) -> None:
    """Refuse an input whose form does not fit a backbone accepting `views` (before any encoding)."""
    if views == SINGLE_VIEW:
        if isinstance(image, dict):
            raise InvalidInputError(
                f"This shape model takes one image, not a dict of views ({', '.join(map(str, image))}); "
                "multi-view input needs a multi-view model (e.g. hunyuan3d-2mv)."
            )
        return
    if not isinstance(image, dict):
        raise InvalidInputError(
            f"This multi-view shape model takes a dict of views {{name: image}} with names from {list(views)} "
            f"('front' required), got {type(image).__name__}."
        )
    unknown = [name for name in image if name not in views]
    if unknown:
        raise InvalidInputError(f"Unknown view name(s) {unknown}; this model accepts {list(views)}.")
    if "front" not in image:
        raise InvalidInputError("A multi-view input needs a 'front' view.")


def front_view(image: Any) -> Any:
    """The front image of an input (the image itself for single-view input): what the critic's
    reference and image-fidelity terms compare with."""
    return image["front"] if isinstance(image, dict) else image


__all__ = ["Backbone", "Conditioning", "SINGLE_VIEW", "SamplingContext", "VIEW_NAMES", "backbone_checkpoint_folders",
           "backbone_conditioning", "backbone_defaults", "backbone_variants", "check_views", "front_view"]
