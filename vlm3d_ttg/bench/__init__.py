"""The quality benchmark: benchmark sets, the sharded base-vs-guided runner, and the merged report.

`benchmarks/quality.py` is the command-line front end; see benchmarks/README.md.
"""

from .benchset import BenchItem, BenchSet, load_bench_set
from .configs import BASE, NOISE_FLOOR, PRESET_NAMES, BenchConfig, load_config_file, preset_config, resolve_configs
from .cache import remove_staging_folders
from .report import write_report
from .runner import check_run, prepare_tiny_models, run_shard, write_run_file
from .settings import BenchRun, EvalViews, GenerationSettings, MetricSettings, RunPaths, ShardStats

__all__ = [
    "BASE",
    "NOISE_FLOOR",
    "PRESET_NAMES",
    "BenchConfig",
    "BenchItem",
    "BenchRun",
    "BenchSet",
    "EvalViews",
    "GenerationSettings",
    "MetricSettings",
    "RunPaths",
    "ShardStats",
    "check_run",
    "load_bench_set",
    "load_config_file",
    "prepare_tiny_models",
    "preset_config",
    "remove_staging_folders",
    "resolve_configs",
    "run_shard",
    "write_report",
    "write_run_file",
]
