"""Render the mini demo's input picture (examples/mini_mug.png) from the miniature world's own shape.

The example — which test-split shape, from where, its description and seed — is defined once, in
`vlm3d_ttg.miniworld.example.MINI_EXAMPLE`; this writes its picture (deterministic: the shape is seeded
and the renderer is the project's CPU renderer).

    python examples/make_mini_example.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

from vlm3d_ttg.miniworld.example import MINI_EXAMPLE

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    MINI_EXAMPLE.picture().save(out)
    print(f"wrote {out}: {MINI_EXAMPLE.cls} {MINI_EXAMPLE.variant} from azimuth {MINI_EXAMPLE.azimuth:g}°, "
          f"elevation {MINI_EXAMPLE.elevation:g}°; prompt {MINI_EXAMPLE.prompt!r}, seed {MINI_EXAMPLE.seed}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / MINI_EXAMPLE.image)
