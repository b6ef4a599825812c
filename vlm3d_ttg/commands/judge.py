"""`vlm3d-ttg judge`: score images (or a mesh) with the VLM critic, without guidance."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import InvalidInputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MESH_SUFFIXES = {".glb", ".gltf", ".obj", ".ply", ".stl", ".off"}
QUERY_CHOICES = ("dual", "content", "geometry", "all")
PRESETS = ("tiny",)


def load_image(path: Path) -> Any:
    """An image file as a float tensor (3, H, W) in [0, 1]; transparency is composited over white (the renders' background).

    Read by the shared loader (`vlm3d_ttg.images`), so any PIL mode is handled as for conditioning.
    """
    from ..images import load_view

    return load_view(path)


def load_views(paths: list[Path]) -> Any:
    """Image files of one size as a tensor (N, 3, H, W) in [0, 1]."""
    import torch

    from ..images import open_image, view_tensor

    # Sizes are compared before the content checks: a set of mismatched files is the first thing to fix.
    images = [open_image(path, what="Image") for path in paths]
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        listed = ", ".join(f"{path.name}: {image.size[0]}x{image.size[1]}" for path, image in zip(paths, images))
        raise InvalidInputError(f"All images must have the same size (they are views of one object); got {listed}.")
    return torch.stack([view_tensor(image, path, what="Image") for path, image in zip(paths, images)])


def _check_inputs(paths: list[Path], preset: Optional[str], vlm: Optional[str]) -> tuple[list[Path], list[Path]]:
    """Split the inputs into images and meshes and check everything that needs no model."""
    if not paths:
        raise InvalidInputError("Give at least one image (or a mesh).")
    images, meshes = [], []
    for path in paths:
        if not path.is_file():
            raise InvalidInputError(f"Input '{path}' does not exist or is not a file.")
        suffix = path.suffix.lower()
        if suffix in MESH_SUFFIXES:
            meshes.append(path)
        elif suffix in IMAGE_SUFFIXES:
            images.append(path)
        else:
            raise InvalidInputError(
                f"Input '{path}' is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                f"nor a mesh ({', '.join(sorted(MESH_SUFFIXES))})."
            )
    if images and meshes:
        raise InvalidInputError("Give either images or one mesh, not both.")
    if len(meshes) > 1:
        raise InvalidInputError("Give one mesh at a time.")
    if preset is not None and preset not in PRESETS:
        raise InvalidInputError(f"Unknown preset '{preset}'; choose from {list(PRESETS)}.")
    if preset is not None and vlm is not None:
        raise InvalidInputError("Give either --preset or --vlm, not both.")
    return images, meshes


def _query_variants(query: str) -> dict[str, str]:
    """{variant name: query} for --query: a variant name, 'all', or a user template (named 'custom')."""
    from ..critic.queries import QUERY_TEMPLATES, resolve_query

    key = query.strip().lower()
    if key == "all":
        return {name: name for name in QUERY_TEMPLATES}
    if key in QUERY_TEMPLATES:
        return {key: key}
    return {"custom": resolve_query(query)}


def _renderer_functions() -> tuple[Any, Any]:
    """(orbit_cameras, render_mesh) from `vlm3d_ttg.render`, or a clear error while they are missing."""
    import importlib

    try:
        render = importlib.import_module("vlm3d_ttg.render")
    except ImportError:
        render = None
    orbit_cameras = getattr(render, "orbit_cameras", None)
    render_mesh = getattr(render, "render_mesh", None)
    if orbit_cameras is None or render_mesh is None:
        raise InvalidInputError(
            "Judging a mesh is not available yet: the renderer (vlm3d_ttg.render) is not part of this version. "
            "Render views to PNG files and pass those instead."
        )
    return orbit_cameras, render_mesh


def render_mesh_views(mesh_path: Path, num_views: int, resolution: int, device: Any) -> Any:
    """A mesh file rendered from `num_views` orbit cameras (the renderer's defaults) as (N, 3, H, W) in [0, 1].

    Meshes from hy3dgen lie in its ±1 cube and are rendered as they are; a mesh reaching outside
    is centred and scaled into it (so any GLB/OBJ can be judged).
    """
    import torch
    import trimesh

    orbit_cameras, render_mesh = _renderer_functions()
    if num_views < 1:
        raise InvalidInputError(f"--views must be at least 1, got {num_views}.")
    try:
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise InvalidInputError(f"Cannot read mesh '{mesh_path}': {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InvalidInputError(f"Mesh '{mesh_path}' has no triangles.")
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=device)
    if float(vertices.abs().max()) > 1.01:
        low, high = vertices.min(0).values, vertices.max(0).values
        vertices = (vertices - (low + high) / 2) * (1.9 / float((high - low).max()))
        logger.info("Mesh %s reaches outside the ±1 cube; centred and scaled into it.", mesh_path)
    cameras = orbit_cameras(num_views, image_size=resolution, device=device)
    with torch.no_grad():
        return render_mesh(vertices, faces, cameras).images.clamp(0, 1)


def judge(
    inputs: list[Path] = typer.Argument(..., help="Views of one object (PNG/JPG, same size), or one mesh (GLB/OBJ).", show_default=False),
    prompt: str = typer.Option(..., "--prompt", "-p", help="What the object should be, e.g. 'a wooden chair'.", show_default=False),
    query: str = typer.Option(
        "dual", "--query", "-q", help="dual | content | geometry | all, or your own question with a '{description}' slot."
    ),
    vlm: Optional[str] = typer.Option(None, "--vlm", help="Qwen2.5-VL hub id or local folder (default: Qwen/Qwen2.5-VL-7B-Instruct)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="'tiny': the offline tiny Qwen2.5-VL (meaningless scores; for smoke tests)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: bf16 on CUDA, fp32 on CPU)."),
    views: int = typer.Option(4, "--views", help="Views to render when the input is a mesh."),
    resolution: int = typer.Option(448, "--resolution", help="Render size (a multiple of 28) when the input is a mesh."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts) instead of a table."),
) -> None:
    """Score views (or a mesh) with the VLM critic: r = logit(Yes) - logit(No) and P(yes) per query variant."""
    import torch

    from ..critic import VLMCritic
    from ..critic.queries import normalize_description
    from ..models import DEFAULT_VLM, load_vlm

    image_paths, mesh_paths = _check_inputs(list(inputs), preset, vlm)
    description = normalize_description(prompt)
    variants = _query_variants(query)
    if image_paths:
        pixels = load_views(image_paths)
    else:  # render before loading the model: a bad mesh should not cost a model load
        from ..models import resolve_device

        pixels = render_mesh_views(mesh_paths[0], views, resolution, resolve_device(device))

    if preset == "tiny":
        from ..tiny import ensure_tiny_vlm

        model_id: str = str(ensure_tiny_vlm())
    else:
        model_id = vlm or DEFAULT_VLM
    from ..logs import quiet_transformers

    quiet_transformers()
    model, processor = load_vlm(model_id, device=device, dtype=dtype)

    results = []
    with torch.no_grad():
        for name, variant_query in variants.items():
            critic = VLMCritic(model, processor, description, variant_query)
            output = critic(pixels)
            results.append({"query": name, "r": float(output.r), "p_yes": float(output.p_yes)})
            logger.info("query %s: r=%.4f", name, results[-1]["r"])

    if json_output:
        report = {
            "prompt": prompt,
            "model": model_id,
            "inputs": [str(path) for path in inputs],
            "num_views": int(pixels.shape[0]),
            "image_size": [int(pixels.shape[2]), int(pixels.shape[3])],
            "results": results,
        }
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"model: {model_id}   views: {pixels.shape[0]} x {pixels.shape[3]}x{pixels.shape[2]}   prompt: {prompt!r}")
    typer.echo(f"{'query':<10} {'r':>9} {'P(yes)':>8}")
    for row in results:
        typer.echo(f"{row['query']:<10} {row['r']:>+9.4f} {row['p_yes']:>8.4f}")
