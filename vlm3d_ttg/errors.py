"""Exceptions with messages meant for people: what went wrong, and what to do about it."""

from __future__ import annotations


class Vlm3dError(Exception):
    """Base class of every error this package raises on purpose; the CLI prints its message."""


class InvalidInputError(Vlm3dError, ValueError):
    """An argument or input file is unusable; raised before any heavy work starts."""


class ModelNotFoundError(Vlm3dError):
    """A model could not be found locally nor downloaded."""

    def __init__(self, repo_id: str, looked_in: list[str], how_to_get: str, cause: str | None = None):
        self.repo_id = repo_id
        self.looked_in = list(looked_in)
        self.how_to_get = how_to_get
        self.cause = cause
        where = "\n".join(f"  - {p}" for p in self.looked_in) or "  (nowhere)"
        msg = f"Model '{repo_id}' was not found.\nLooked in:\n{where}\n"
        if cause:
            msg += f"Download attempt: {cause}\n"
        msg += f"How to get it: {how_to_get}"
        super().__init__(msg)


class CheckpointError(Vlm3dError):
    """A model file on disk is missing, truncated or corrupt: the message names the file and how to rebuild it
    (the fix depends on where it lives: `models.rebuild_advice`)."""

    def __init__(self, path: str, problem: str, fix: str):
        self.path = path
        self.problem = problem
        super().__init__(f"The checkpoint file '{path}' cannot be read: {problem}. The checkpoint is damaged or "
                         f"incomplete (an interrupted download or copy?). Fix: {fix}")


class EmptySurfaceError(Vlm3dError):
    """The occupancy field has no level-set crossing on the grid: there is no surface to render."""


class UnsupportedModelError(Vlm3dError):
    """The loaded model variant cannot be driven by this sampler."""


class SkippedStepError(Vlm3dError):
    """A guided step cannot use the critic's answer; the sampler skips the step and records `reason`.

    Reasons: 'empty_surface', 'non_finite_render', 'render_out_of_range', 'non_finite_critic',
    'non_finite_gradient', 'non_finite_step'. EmptySurfaceError is the 'empty_surface' case of this family but keeps
    its own class (extraction raises it outside guidance too).
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)
