"""Plug-ins: backbones and critic families found through Python entry points.

A third party adds a backbone or a critic family with a package of its own, without touching this
one, the way pytest and many diffusion tools take plug-ins: its `pyproject.toml` declares

    [project.entry-points."vlm3d_ttg.backbones"]
    my-generator = "my_package.backbone:MyBackbone"      # a `backbones.Backbone` class

    [project.entry-points."vlm3d_ttg.critics"]
    my-vlm = "my_package.critic:MY_FAMILY"               # a `critic.families.CriticFamily`

and once it is installed, `backbones.backbone_class("my-generator")` and `critic.get_family("my-vlm")`
find it (docs/design.md §11). This package registers its own the same way (pyproject.toml).
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

#: The entry-point groups.
BACKBONE_GROUP = "vlm3d_ttg.backbones"
CRITIC_GROUP = "vlm3d_ttg.critics"


def entry_point_targets(group: str) -> dict[str, str]:
    """{name: "module:attribute"} of every installed entry point of `group` (nothing is imported)."""
    found: dict[str, str] = {}
    for point in entry_points(group=group):
        if point.name in found and found[point.name] != point.value:
            logger.warning("entry point %r of %s is declared twice (%s and %s); using the first",
                           point.name, group, found[point.name], point.value)
            continue
        found[point.name] = point.value
    return found


__all__ = ["BACKBONE_GROUP", "CRITIC_GROUP", "entry_point_targets"]
