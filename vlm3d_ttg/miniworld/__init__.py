"""The trained miniature world (issue 26): the real architectures, trained small on the project's own shapes.

- `shapes`: a seeded procedural generator of classes with attributes words can state (a mug with or
  without a handle, a table with three or four legs, ...); `dataset` / `geometry`: what is stored
  per shape and the attribute detectors; `render_input.render_input_image`: any mesh as an input
  picture in the training style.
- `checkpoints.ensure_mini_models`: the committed, sha256-checked weights of the mini shape model
  (hy3dgen's Hunyuan3DDiT + ShapeVAE + Dinov2 conditioner) and of the two mini Qwen2.5-VL critics
  (the guide and the judge), written as the folders the project's loaders read.

The training scripts live outside the package, in `training/` (see its README).
"""

from .checkpoints import MiniModels, ensure_mini_models, read_manifest
from .render_input import critic_views, render_input_image
from .shapes import ATTRIBUTES, CLASSES, all_descriptions, describe, make_spec, shape_sdf

__all__ = [
    "ATTRIBUTES",
    "CLASSES",
    "MiniModels",
    "all_descriptions",
    "critic_views",
    "describe",
    "ensure_mini_models",
    "make_spec",
    "read_manifest",
    "render_input_image",
    "shape_sdf",
]
