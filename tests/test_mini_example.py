"""The mini demo's example (issue 27, item 3), defined once in `vlm3d_ttg.miniworld.example`: the committed
picture is exactly what the example renders, the shape is a test-split one whose stated attribute the picture
hides, and `make demo` runs `generate --compare` on the example's own arguments."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vlm3d_ttg.miniworld.example import MINI_EXAMPLE

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_picture_is_what_the_example_renders():
    committed = np.asarray(Image.open(ROOT / MINI_EXAMPLE.image))
    assert np.array_equal(committed, np.asarray(MINI_EXAMPLE.picture()))


def test_the_example_is_a_test_shape_that_has_what_the_prompt_states_and_whose_picture_hides_it():
    from vlm3d_ttg.miniworld import make_spec, render_input_image, shape_sdf
    from vlm3d_ttg.miniworld.dataset import split_of
    from vlm3d_ttg.miniworld.example import MESH_RESOLUTION
    from vlm3d_ttg.miniworld.geometry import mesh_from_sdf

    spec = make_spec(MINI_EXAMPLE.cls, MINI_EXAMPLE.variant)
    assert split_of(spec.variant) == "test" and spec.descriptions() == [MINI_EXAMPLE.prompt]
    # The picture is silent about the handle: the mug's silhouette from the example's view is its body's alone,
    # left-right symmetric, where a quarter turn shows the handle sticking out on one side.
    mesh = mesh_from_sdf(shape_sdf(spec), MESH_RESOLUTION)

    def asymmetry(azimuth: float) -> float:
        alpha = np.asarray(render_input_image(mesh, azimuth, MINI_EXAMPLE.elevation))[..., 3] > 127
        return float((alpha != alpha[:, ::-1]).sum() / alpha.sum())

    assert asymmetry(MINI_EXAMPLE.azimuth) < 0.01 < 0.2 < asymmetry(MINI_EXAMPLE.azimuth + 90)


def test_make_demo_runs_generate_compare_on_the_examples_arguments():
    printed = subprocess.run([sys.executable, "-m", "vlm3d_ttg.miniworld.example"], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout
    arguments = shlex.split(printed)
    assert arguments == MINI_EXAMPLE.generate_arguments()
    assert arguments[:5] == [MINI_EXAMPLE.image, "--prompt", MINI_EXAMPLE.prompt, "--seed", str(MINI_EXAMPLE.seed)]
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo: .*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "-m vlm3d_ttg.miniworld.example" in recipe and "generate" in recipe
    assert all(part in recipe for part in ("--preset mini", "--compare", "--save-views", "--plot", "--out $(OUT)/demo.glb"))
    # README quotes the command the demo runs, with the example's arguments as they are now.
    shown = " ".join(["vlm3d-ttg generate", MINI_EXAMPLE.image, "--prompt", f'"{MINI_EXAMPLE.prompt}"',
                      *MINI_EXAMPLE.generate_arguments()[3:], "--preset mini --compare --save-views out/views --plot",
                      "--out out/demo.glb"])
    assert shown in " ".join((ROOT / "README.md").read_text().split()), shown
