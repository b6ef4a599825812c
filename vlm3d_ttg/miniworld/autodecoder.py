"""The ShapeVAE decoder as an auto-decoder: occupancy logits of learned latent codes, and fitting a code.

A code is the ShapeVAE's latent before `scale_factor` (what `vae(code)` = post_kl + transformer
takes); the diffusion latent is `code · scale_factor`, as hy3dgen's pipeline decodes
`vae(latent / scale_factor)`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import BOUNDS, grid_points


def decode_logits(vae: torch.nn.Module, codes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Occupancy logits (B, P) of codes (B, L, C) at points (B, P, 3) (inside where > 0)."""
    tokens = vae(codes)
    return vae.geo_decoder(queries=points, latents=tokens)[..., 0]


def occupancy_loss(logits: torch.Tensor, occ: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits against occupancy (bool or {0, 1})."""
    return F.binary_cross_entropy_with_logits(logits, occ.to(logits.dtype))


@torch.no_grad()
def decode_grid(vae: torch.nn.Module, code: torch.Tensor, resolution: int = 64, chunk: int = 32768) -> np.ndarray:
    """Logits of one code (L, C) on a resolution³ grid over ±1.01, as a (R, R, R) float32 array."""
    points = torch.from_numpy(grid_points(resolution, BOUNDS)).to(code.dtype)
    tokens = vae(code.unsqueeze(0))
    out = [vae.geo_decoder(queries=points[i : i + chunk].unsqueeze(0), latents=tokens)[0, :, 0]
           for i in range(0, len(points), chunk)]
    return torch.cat(out).float().numpy().reshape(resolution, resolution, resolution)


def fit_codes(vae: torch.nn.Module, points: torch.Tensor, occ: torch.Tensor, init: torch.Tensor, *,
              steps: int = 300, lr: float = 3e-2, batch_points: int = 4096, code_l2: float = 1e-4,
              seed: int = 0) -> torch.Tensor:
    """Codes (B, L, C) that make the frozen decoder reproduce occupancy samples (B, P, 3) / (B, P), from `init`."""
    generator = torch.Generator().manual_seed(seed)
    codes = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([codes], lr=lr)
    params = [p for p in vae.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for step in range(steps):
            idx = torch.randint(0, points.shape[1], (points.shape[0], batch_points), generator=generator)
            pts = torch.gather(points, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
            target = torch.gather(occ, 1, idx)
            loss = occupancy_loss(decode_logits(vae, codes, pts), target) + code_l2 * codes.pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
    return codes.detach()


@torch.no_grad()
def nearest_codes(vae: torch.nn.Module, codes: torch.Tensor, points: torch.Tensor, occ: torch.Tensor, *,
                  samples: int = 512, chunk: int = 64, seed: int = 0) -> torch.Tensor:
    """For each shape's occupancy samples (B, P, 3) / (B, P), the code of `codes` (N, L, C) that reproduces them best.

    "Best" is the occupancy loss the fit itself lowers, on `samples` of the shape's points: a fit started
    from the nearest training shape's code keeps the parts (a leg, a handle) that a fit started from the
    mean code has to grow, and may not.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.cat([vae(codes[i : i + chunk]) for i in range(0, len(codes), chunk)])
    chosen = []
    for shape in range(points.shape[0]):
        idx = torch.randint(0, points.shape[1], (samples,), generator=generator)
        pts, target = points[shape, idx], occ[shape, idx].to(tokens.dtype)
        losses = torch.cat([
            F.binary_cross_entropy_with_logits(
                vae.geo_decoder(queries=pts.expand(len(part), -1, -1), latents=part)[..., 0],
                target.expand(len(part), -1), reduction="none").mean(dim=1)
            for part in tokens.split(chunk)])
        chosen.append(codes[losses.argmin()])
    return torch.stack(chosen)
