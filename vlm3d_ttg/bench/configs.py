"""The configurations a quality benchmark compares: the unguided base and guided variants.

Every configuration is a GuidanceConfig plus a seed offset; all of them run on the same items
with the same seeds (offset 0), so per-item differences are paired. Named presets:

| name          | what it is                                                                          |
|---------------|-------------------------------------------------------------------------------------|
| base          | Hunyuan3D-2 without guidance (the reference every other row is compared with)       |
| guided        | VLM guidance with the paper's dual query (content match + geometric quality)        |
| content_only  | the paper's ablation without the geometric query ("content" query)                  |
| geometry_only | the geometric query alone                                                           |
| single_view   | the paper's single-view ablation (the critic sees one view)                         |
| guided_reference | dual query, the critic sees the conditioning image first (--critic-reference)    |
| base_seed2    | base again with the seed + 1: the seed-vs-seed noise floor of every metric          |
| best_of_n     | unguided best-of-N on the final meshes, N set so its compute equals `guided`'s        |
| search_guided | N candidates, the critic keeps the best at σ_s = 0.3, then guided (N: equal compute, ≥ 2) |

Compute is real-size TFLOP (vlm3d_ttg.compute.compute_tflop): the counted DiT rows, critic
forwards and backwards priced with benchmarks/cost_model.py's unit costs, so configurations are
compared by what they would cost with the real models whatever models the benchmark runs.

Custom configurations come from a JSON file `{"name": {GuidanceConfig field: value, ...}}`;
fields not given take the run's guidance options. `"seed_offset"` is accepted too, and
`"search": {SearchOptions field: value}` (e.g. `{"candidates": 4, "select_at": 0.5}`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..guidance import GuidanceConfig
from ..compute import equal_compute_candidates
from ..search import SearchOptions

BASE = "base"
NOISE_FLOOR = "base_seed2"
PRESET_NAMES = ("base", "guided", "content_only", "geometry_only", "single_view", "guided_reference", NOISE_FLOOR, "best_of_n", "search_guided")
SEARCH_SELECT_AT = 0.3  # search_guided's σ_s
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class BenchConfig:
    """One row of the results table: how shapes are generated, and the seed offset used."""

    name: str
    guidance: GuidanceConfig
    seed_offset: int = 0
    description: str = ""
    search: SearchOptions = dataclasses.field(default_factory=SearchOptions)

    @property
    def guided(self) -> bool:
        """True when the critic's gradient changes the latent."""
        return self.guidance.active

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for records and results)."""
        described = {"name": self.name, "seed_offset": self.seed_offset, "description": self.description,
                     "guidance": self.guidance.to_dict()}
        if self.search.searching:  # absent otherwise, so results cached before search keep their fingerprint
            described["search"] = self.search.to_dict()
        return described


def preset_config(name: str, guidance: GuidanceConfig, *, steps: int = 50) -> BenchConfig:
    """The named preset (see the module docstring) built on the run's guidance options (`steps`:
    the run's sampler steps, which set the equal-compute N of the search presets)."""
    replace = dataclasses.replace
    if name in ("best_of_n", "search_guided"):
        guided = replace(guidance, enabled=True, query="dual")
        if name == "best_of_n":
            config, search = replace(guidance, enabled=False), SearchOptions(candidates=2)
        else:
            config, search = guided, SearchOptions(candidates=2, select_at=SEARCH_SELECT_AT)
        n = equal_compute_candidates(steps, guided, search, config)
        search = replace(search, candidates=n).validate()
        what = ("unguided, best final mesh of" if name == "best_of_n" else f"select at σ={SEARCH_SELECT_AT:g} among")
        return BenchConfig(name, config, 0, f"{what} {n} candidates (compute ≈ guided)", search)
    if name == "base":
        return BenchConfig(name, replace(guidance, enabled=False), 0, "no guidance")
    if name == "guided":
        return BenchConfig(name, replace(guidance, enabled=True, query="dual"), 0, "dual query (paper)")
    if name == "content_only":
        return BenchConfig(name, replace(guidance, enabled=True, query="content"), 0, "content query only (no geometric query)")
    if name == "geometry_only":
        return BenchConfig(name, replace(guidance, enabled=True, query="geometry"), 0, "geometric query only")
    if name == "single_view":
        return BenchConfig(name, replace(guidance, enabled=True, query="dual", num_views=1), 0, "dual query, one view")
    if name == "guided_reference":
        return BenchConfig(name, replace(guidance, enabled=True, query="dual", reference=True), 0,
                           "dual query with the reference image (critic sees the input image first)")
    if name == NOISE_FLOOR:
        return BenchConfig(name, replace(guidance, enabled=False), 1, "no guidance, seed + 1 (noise floor)")
    raise InvalidInputError(f"Unknown configuration '{name}'; presets are {list(PRESET_NAMES)} (or define it in --config-file).")


def load_config_file(path: str | os.PathLike, guidance: GuidanceConfig) -> dict[str, BenchConfig]:
    """Custom configurations from a JSON file (see the module docstring), validated."""
    file = Path(os.path.expanduser(str(path)))
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"--config-file '{file}' does not exist.") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--config-file '{file}' is not valid JSON: {exc}") from None
    if not isinstance(content, dict) or not content:
        raise InvalidInputError(f"--config-file '{file}' must be a non-empty object {{name: {{field: value}}}}.")
    fields = {f.name for f in dataclasses.fields(GuidanceConfig)}
    configs: dict[str, BenchConfig] = {}
    for name, overrides in content.items():
        if not NAME_PATTERN.match(name):
            raise InvalidInputError(f"--config-file: configuration name {name!r} must be letters, digits, '_', '-', '.'.")
        if not isinstance(overrides, dict):
            raise InvalidInputError(f"--config-file: configuration '{name}' must map to an object of GuidanceConfig fields.")
        overrides = dict(overrides)
        seed_offset = overrides.pop("seed_offset", 0)
        search_fields = overrides.pop("search", {})
        description = str(overrides.pop("description", ""))
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise InvalidInputError(f"--config-file: configuration '{name}' has unknown field(s) {unknown}; fields are {sorted(fields)}.")
        if "sigma_window" in overrides:
            overrides["sigma_window"] = tuple(overrides["sigma_window"])
        if not isinstance(seed_offset, int):
            raise InvalidInputError(f"--config-file: seed_offset of '{name}' must be an integer.")
        config = dataclasses.replace(guidance, **overrides)
        try:
            config.validate()
        except InvalidInputError as exc:
            raise InvalidInputError(f"--config-file: configuration '{name}': {exc}") from None
        if not isinstance(search_fields, dict):
            raise InvalidInputError(f"--config-file: 'search' of '{name}' must be an object of SearchOptions fields.")
        try:
            search = SearchOptions(**search_fields).validate()
        except TypeError as exc:
            raise InvalidInputError(f"--config-file: configuration '{name}': search: {exc}") from None
        except InvalidInputError as exc:
            raise InvalidInputError(f"--config-file: configuration '{name}': {exc}") from None
        configs[name] = BenchConfig(name, config, seed_offset, description or "custom", search)
    return configs


def resolve_configs(
    names: list[str], guidance: GuidanceConfig, *, noise_floor: bool = False, custom: dict[str, BenchConfig] | None = None,
    steps: int = 50,
) -> list[BenchConfig]:
    """The configurations to run, base first (added if missing), then `names` in order, then the noise floor."""
    custom = custom or {}
    ordered = [BASE] + [n for n in names if n != BASE]
    if noise_floor and NOISE_FLOOR not in ordered:
        ordered.append(NOISE_FLOOR)
    if len(set(ordered)) != len(ordered):
        raise InvalidInputError(f"Configuration names repeat: {names}")
    configs = []
    for name in ordered:
        config = custom[name] if name in custom else preset_config(name, guidance, steps=steps)
        config.guidance.validate()
        configs.append(config)
    if custom.get(BASE) is not None and custom[BASE].guided:
        raise InvalidInputError("The 'base' configuration must be unguided (it is what every other row is compared with).")
    return configs
