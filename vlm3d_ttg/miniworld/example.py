"""The miniature world's demo example, in one place: which test-split shape, seen from where, described how,
on which seed — what `make demo`, the app's example (`--preset mini`) and `examples/make_mini_example.py` use.

The picture hides what the description states (a mug seen so that its handle is behind the body), so the
unguided run has only the picture to go on and guidance has the words too: the demo writes both meshes
(`generate --compare`) and the app shows both.

    python -m vlm3d_ttg.miniworld.example        # the example's `generate` arguments, shell-quoted
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import InvalidInputError


@dataclass(frozen=True)
class MiniExample:
    """One input of the miniature world and its description: shape `cls` number `variant` (a test-split
    variant: never trained on) rendered in the training style from `azimuth`/`elevation` degrees."""

    cls: str
    variant: int
    azimuth: float
    elevation: float
    prompt: str
    seed: int
    image: str  # the committed picture, relative to the repository root
    options: Mapping[str, Any] = field(default_factory=dict)  # option values of its run, by field name (e.g. steps)

    def picture(self) -> Any:
        """The input picture (RGBA PIL image), rendered from the shape's SDF as the training inputs are
        (`miniworld.render_input_image` of its mesh at the data set's resolution); deterministic."""
        from .dataset import split_of
        from .geometry import mesh_from_sdf
        from .render_input import render_input_image
        from .shapes import make_spec, shape_sdf

        if split_of(self.variant) != "test":
            raise InvalidInputError(f"The demo example must be a test-split shape; {self.cls} {self.variant} is "
                             f"{split_of(self.variant)}")
        return render_input_image(mesh_from_sdf(shape_sdf(make_spec(self.cls, self.variant)), MESH_RESOLUTION),
                                  self.azimuth, self.elevation)

    def generate_arguments(self) -> list[str]:
        """The example's own `vlm3d-ttg generate` arguments: the picture, the description, the seed and its options."""
        from ..generation import GenerationOptions
        from ..guidance import GuidanceConfig
        from ..options import declared, flag_of

        flags = {f.name: flag_of(f, spec) for cls in (GenerationOptions, GuidanceConfig) for f, spec in declared(cls)}
        unknown = set(self.options) - set(flags)
        if unknown:
            raise InvalidInputError(f"The demo example sets options no run has: {', '.join(sorted(unknown))}.")
        given = [part for name, value in self.options.items() for part in (flags[name], str(value))]
        return [self.image, "--prompt", self.prompt, "--seed", str(self.seed), *given]


#: The marching-cubes resolution of the data set's meshes (miniworld.dataset.build_shape), so the example is
#: drawn exactly like the inputs the shape model was trained on.
MESH_RESOLUTION = 80

#: The demo's example: the test-split mug 52 seen from azimuth 270° (its handle, on +x, hidden behind the body),
#: one of the language experiment's items (benchmarks/bench_language.py), run as the experiment runs it (20 steps,
#: the mini preset's defaults otherwise): the guide critic's r rises, the judge's does not, no handle appears —
#: what guidance does on the mini world in most pairs (RESULTS.md). The app opens with the same values.
MINI_EXAMPLE = MiniExample(cls="mug", variant=52, azimuth=270.0, elevation=8.0, prompt="a mug with a handle", seed=0,
                           image="examples/mini_mug.png", options={"steps": 20})


def main(argv: list[str] | None = None) -> int:
    """Print the example's `generate` arguments, shell-quoted (the Makefile's demo reads them)."""
    print(shlex.join(MINI_EXAMPLE.generate_arguments()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
