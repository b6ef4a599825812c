"""Quality metrics for base vs guided shapes: FID / CLIP-FID / KID, CLIP-D, geometry score, VLM judge.

Each module's docstring gives its metric's definition; CLIP-D, the geometry score and the judge
protocol are our definitions (the paper gives none) and must be stated next to their numbers.
"""

from .bootstrap import BootstrapCI, bootstrap_ci
from .clip_score import clip_d, clip_d_per_item, clip_distance
from .features import (
    DEFAULT_CLIP_MODEL,
    ClipEmbedder,
    InceptionFeatures,
    find_inception_weights,
    images_to_tensor,
    load_clip,
    load_inception,
)
from .frechet import (
    FrechetDifference,
    FrechetResult,
    KIDResult,
    frechet_distance,
    frechet_difference_with_ci,
    frechet_distance_from_features,
    frechet_distance_with_ci,
    gaussian_statistics,
    kernel_inception_distance,
    mmd2_unbiased,
)
from .geometry import GeometryReport, GeometryWeights, geometry_score
from .judge import (
    DEFAULT_JUDGE_MODEL,
    JudgeSummary,
    PairwiseJudgement,
    VlmJudge,
    combine_orders,
    judge_logit_difference,
    judge_pair,
    load_judge,
    summarize_judgements,
)

__all__ = [
    "BootstrapCI",
    "ClipEmbedder",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_JUDGE_MODEL",
    "FrechetDifference",
    "FrechetResult",
    "GeometryReport",
    "GeometryWeights",
    "InceptionFeatures",
    "JudgeSummary",
    "KIDResult",
    "PairwiseJudgement",
    "VlmJudge",
    "bootstrap_ci",
    "clip_d",
    "clip_d_per_item",
    "clip_distance",
    "combine_orders",
    "find_inception_weights",
    "frechet_difference_with_ci",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_distance_with_ci",
    "gaussian_statistics",
    "geometry_score",
    "images_to_tensor",
    "judge_logit_difference",
    "judge_pair",
    "kernel_inception_distance",
    "load_clip",
    "load_inception",
    "load_judge",
    "mmd2_unbiased",
    "summarize_judgements",
]
