"""Loading models: devices and dtypes, checkpoint-folder checks and rebuild advice shared by every loader,
and the critic (Qwen2.5-VL or Qwen3-VL) through transformers.

The same functions load the real checkpoints from the hub (or its local cache) and the offline presets'
checkpoints; there is no second code path. A shape model is loaded by its backbone (the Hunyuan3D-2
one's loader: `backbones.hunyuan3d2_models`), which uses the checks here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .env import hub_offline
from .errors import InvalidInputError, ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_VLM = "Qwen/Qwen2.5-VL-7B-Instruct"


#: The device strings every command and the Python API accept.
DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


def parse_device(device: str | torch.device | None) -> torch.device | None:
    """The one parser of device strings: None/'auto' → None (decided at load time), 'cpu', 'cuda',
    'cuda:N' → that torch.device. Anything else ('mps', 'meta', 'gpu0', 'cuda:x') raises
    InvalidInputError naming the accepted forms: the pipeline runs on CUDA or the CPU only."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return None
    if isinstance(device, torch.device):
        parsed = device
    else:
        if not isinstance(device, str):
            raise InvalidInputError(f"device must be one of {DEVICE_FORMS}; got a {type(device).__name__}.")
        try:
            parsed = torch.device(device.strip())
        except (RuntimeError, TypeError, ValueError):
            raise InvalidInputError(f"Unknown device {device!r}; use {DEVICE_FORMS}.") from None
    if parsed.type not in ("cpu", "cuda"):
        raise InvalidInputError(
            f"Device {str(device)!r} is not supported: Hunyuan3D-2 and the critic run on CUDA or the CPU here; "
            f"use {DEVICE_FORMS}."
        )
    return parsed


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for (see `parse_device`), else CUDA when available, else CPU."""
    parsed = parse_device(device)
    if parsed is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = parsed
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"Device '{device}' was requested but CUDA is not available here; use --device cpu.")
    return resolved


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,  # for gradient checks
    "fp64": torch.float64,
}


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None = None, *, half: torch.dtype = torch.float16) -> torch.dtype:
    """The dtype policy: what was asked for, else `half` on CUDA and float32 on CPU.

    `half` is float16 for Hunyuan3D-2 (what its checkpoints are stored in) and bfloat16 for
    Qwen2.5-VL (whose activations overflow float16).
    """
    if dtype is None or dtype == "auto":
        return half if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidInputError(f"Unknown dtype '{dtype}'; use one of {sorted(set(_DTYPES))}.") from None



def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file at `path` cannot be whole (None: its header and size agree)."""
    import json

    size = path.stat().st_size
    if size < 8:
        return f"it holds {size} bytes, fewer than a safetensors header"
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > size - 8:
            return f"its header claims {length:,} bytes but only {size - 8:,} follow"
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    try:
        end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "its header has no valid tensor offsets"
    if 8 + length + end > size:
        return f"it is truncated: {size:,} bytes, its tensors need {8 + length + end:,}"
    return None


#: Files a critic checkpoint folder must hold (each tuple: one of these names), besides its weights.
CRITIC_FILES = (("config.json",), ("tokenizer.json",), ("preprocessor_config.json", "processor_config.json"))


def check_checkpoint_folder(folder: str | os.PathLike, fix: str, *, required: tuple[tuple[str, ...], ...] = (),
                            weights: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError naming the first missing or unreadable model file in `folder` and `fix`:
    a file of `required` (each entry: one of its names) or of `weights` (one of these names, or a
    sharded index and every shard it lists) that is missing; safetensors whose header or size is
    wrong; JSON that is not an object or YAML that is not a mapping. Cheap: headers only."""
    import json

    import yaml

    from .errors import CheckpointError

    root = Path(folder)
    if not root.is_dir():
        return
    for names in required:
        if not any((root / name).is_file() for name in names):
            raise CheckpointError(str(root / names[0]), "it is missing" + (
                f" (nor is {' or '.join(names[1:])} there)" if len(names) > 1 else ""), fix)
    if weights:
        _check_weights_present(root, weights, fix)
    for path in sorted(root.iterdir()):
        if not path.is_file():
            continue
        problem = None
        try:
            if path.suffix == ".safetensors":
                problem = _safetensors_problem(path)
            elif path.suffix == ".json":
                if not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                    problem = "it holds no table of settings (a JSON object is expected)"
            elif path.suffix in (".yaml", ".yml"):
                if not isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict):
                    problem = "it holds no table of settings (a YAML mapping is expected)"
        except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
            problem = f"it does not parse ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if problem:
            raise CheckpointError(str(path), problem, fix)


def _check_weights_present(root: Path, names: tuple[str, ...], fix: str) -> None:
    """Raise CheckpointError unless one of the weight files `names`, or a sharded index
    (`<name>.index.json`) with every shard it lists, is in `root`."""
    import json

    from .errors import CheckpointError

    if any((root / name).is_file() for name in names):
        return
    for name in names:
        index = root / f"{name}.index.json"
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise CheckpointError(str(index), "it is not a weight index (no 'weight_map')", fix) from None
            for shard in sorted(shards):
                if not (root / shard).is_file():
                    raise CheckpointError(str(root / shard), f"it is missing (listed in {index.name})", fix)
            return
    raise CheckpointError(str(root / names[0]), "it is missing (the model's weights)", fix)


def offline_cache_folder(path: str | os.PathLike) -> Path | None:
    """The checkpoint folder the offline presets wrote that `path` is in or is (e.g. <cache>/tiny-v2/qwen2_5_vl,
    <cache>/realsize-v2/depth-1/qwen2_5_vl, <cache>/mini-<hash>/critic or
    <cache>/tiny-v2/hy3dgen/<owner>/<repo>/<subfolder>), or None when `path` is not in their cache
    ($VLM3D_TTG_CACHE: one <preset>-<version> folder per offline preset, depth-D/ folders in a depth-scaled one)."""
    import re

    from .presets import PRESETS, cache_root

    base = Path(os.path.realpath(cache_root()))
    try:
        parts = Path(os.path.realpath(path)).relative_to(base).parts
    except ValueError:
        return None
    names = "|".join(re.escape(preset.name) for preset in PRESETS.values() if preset.offline)
    if not parts or not re.fullmatch(rf"({names})-(v\d+|[0-9a-f]{{12}})", parts[0]):  # <name>-vN, or <name>-<weights' hash>
        return None
    prefix = 2 if len(parts) > 1 and re.fullmatch(r"depth-\d+", parts[1]) else 1
    rest = parts[prefix:]
    size = 4 if rest[:1] == ("hy3dgen",) else 1  # hy3dgen/<owner>/<repo>/<subfolder>, or one folder
    return base.joinpath(*parts[: prefix + size]) if len(rest) >= size else base.joinpath(*parts)


def rebuild_advice(folder: str | os.PathLike, repo_id: str | None = None, *, subfolder: str | None = None,
                   local_dir: str | os.PathLike | None = None, flag: str = "--vlm") -> str:
    """How to rebuild the damaged checkpoint in `folder`, by where it lives: a folder the offline presets
    wrote (delete it and rerun: they write it again), a hub checkpoint `repo_id` (download it again:
    `subfolder` and `local_dir` for hy3dgen's layout), or a folder the user gave (restore it)."""
    written = offline_cache_folder(folder)
    if written is not None:
        from .presets import PRESETS

        offline = " / ".join(preset.name for preset in PRESETS.values() if preset.offline)
        return (f"delete the folder '{written}' and rerun (the offline presets, --preset {offline}, write their "
                "checkpoints again).")
    if repo_id:
        if subfolder is not None:
            return (f"download it again: `huggingface-cli download {repo_id} --include '{subfolder}/*' "
                    f"--local-dir {local_dir}` (on a machine with hub access).")
        return f"download it again: `huggingface-cli download {repo_id} --force-download` (on a machine with hub access)."
    return (f"'{folder}' is the folder given as {flag}: restore it (write it again with save_pretrained, or download "
            "the checkpoint again).")


def raise_unloadable(exc: BaseException, path: Path, fix: str) -> None:
    """Raise CheckpointError for a checkpoint on disk that failed to load with `exc` (re-raise `exc` itself
    when it is not about the files: out of memory, or an error of ours)."""
    from .errors import CheckpointError, Vlm3dError

    if isinstance(exc, (Vlm3dError, MemoryError, torch.cuda.OutOfMemoryError)) or not isinstance(exc, Exception):
        raise exc
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(exc).__name__)
    if "ignore_mismatched_sizes" in text:  # transformers printed which tensors in a report above
        detail = "size mismatch: a tensor's shape differs from the one its config gives (the report above names it)"
    if len(detail) > 300:
        detail = detail[:300] + "…"
    raise CheckpointError(str(path), f"it does not load ({type(exc).__name__}: {detail})", fix) from exc


def check_finite_weights(modules: dict[str, torch.nn.Module | None], folder: Path, fix: str) -> None:
    """Raise CheckpointError naming the weights file (in `folder`) and the parameter when a loaded weight
    of `modules` ({name prefix: module}) is NaN or infinite: flipped bytes on disk, which would
    otherwise surface as a NaN score or an empty shape mid-run."""
    from .errors import CheckpointError

    for prefix, module in modules.items():
        if module is None:
            continue
        for name, weight in module.named_parameters():
            if weight.is_floating_point() and weight.numel() and not _all_finite(weight):
                raise CheckpointError(str(weights_file(folder, name)), f"its weight '{prefix}{name}' holds NaN or "
                                      "infinite values (flipped bytes?)", fix)


def _all_finite(weight: torch.Tensor) -> bool:
    """Whether every value of a non-empty floating-point tensor is finite."""
    # min and max are NaN if any value is, and ±inf if one is; unlike isfinite(...).all() they allocate no
    # mask: ~30x faster on the CPU (a 3 GB checkpoint: 10 s → 0.3 s; the 7B's 15 GB: about a minute less).
    return all(bool(torch.isfinite(extreme)) for extreme in torch.aminmax(weight.detach()))


def weights_file(folder: Path, parameter: str) -> Path:
    """The weights file in `folder` that holds `parameter` (the one file; in a sharded checkpoint the shard
    whose index names it); `folder` itself when that cannot be told."""
    import json

    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    for index in folder.glob("*.safetensors.index.json"):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for key, shard in weight_map.items():
            if key.split(".")[-2:] == parameter.split(".")[-2:] and (key.endswith(parameter) or parameter.endswith(key)
                                                                       or key.split(".")[-3:] == parameter.split(".")[-3:]):
                return folder / shard
    return folder


def freeze(*modules: torch.nn.Module | None) -> None:
    """Put models in eval mode with no parameter gradients: guidance differentiates w.r.t. latents
    and pixels only, so a parameter `.grad` would be wasted memory (and a sign of a bug)."""
    for module in modules:
        if module is not None:
            module.eval()
            module.requires_grad_(False)


def hub_cache_folder(model_id: str, revision: str | None = None, *, filename: str = "config.json") -> Path | None:
    """The hub-cache snapshot folder of `model_id`, if its `filename` is cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, filename, revision=revision)
    except ValueError:  # not a repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def load_vlm(
    model: str | os.PathLike = DEFAULT_VLM,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
    allow_download: bool = True,
) -> tuple[Any, Any]:
    """Load a critic checkpoint and its processor with transformers' `from_pretrained`; return (model, processor).

    `model` is a hub id or a local `save_pretrained` folder of any critic family (Qwen2.5-VL,
    Qwen3-VL: `critic.families`); the family, and so the model class, comes from its config
    (UnsupportedModelError for another model type). The model is returned frozen
    (`eval()`, no parameter gradients): the critic only ever differentiates w.r.t. pixels.
    Raises ModelNotFoundError, naming the repo, where it looked and how to get it.
    """
    import transformers
    from transformers import AutoConfig, AutoProcessor

    from .critic.families import family_of

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype, half=torch.bfloat16)
    model_id = str(model)
    is_local = Path(os.path.expanduser(model_id)).is_dir()
    if is_local:
        model_id = os.path.expanduser(model_id)
    local_only = is_local or not allow_download or hub_offline()
    on_disk = Path(model_id) if is_local else hub_cache_folder(model_id, revision)
    fix = rebuild_advice(on_disk, None if is_local else model_id) if on_disk is not None else ""
    if on_disk is not None:  # a missing, truncated or corrupt file is named, with how to rebuild it
        check_checkpoint_folder(on_disk, fix, required=CRITIC_FILES if local_only else (),
                                weights=("model.safetensors",) if local_only else ())
    kwargs: dict[str, Any] = {"local_files_only": local_only}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        family = family_of(AutoConfig.from_pretrained(model_id, **kwargs))
        processor = AutoProcessor.from_pretrained(model_id, **kwargs)
        vlm = getattr(transformers, family.model_class).from_pretrained(
            model_id, dtype=torch_dtype, attn_implementation=attn_implementation, **kwargs
        )
    except OSError as exc:
        if on_disk is not None and local_only:  # on disk, yet a file it needs is missing or unreadable
            raise_unloadable(exc, on_disk, fix)
        from huggingface_hub.constants import HF_HUB_CACHE

        looked = [model_id] if is_local else [f"{HF_HUB_CACHE} (hub cache)", "the Hugging Face hub" + (" (not tried: offline)" if local_only else "")]
        raise ModelNotFoundError(
            model_id,
            looked,
            f"on a machine with hub access run `huggingface-cli download {model_id}` (it lands in the hub cache), "
            "or pass a local folder written by save_pretrained. For an offline smoke test use `--preset tiny`.",
            cause=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        ) from exc
    except Exception as exc:
        if on_disk is None:
            raise
        raise_unloadable(exc, weights_file(on_disk, "") if on_disk.is_dir() else on_disk, fix)
    if on_disk is not None:
        check_finite_weights({"": vlm}, on_disk, fix)
    vlm.to(torch_device)
    freeze(vlm)
    logger.info("Loaded VLM %s (%s) on %s (%s)", model_id, family.name, torch_device, torch_dtype)
    return vlm, processor


def checkpoint_family(model: str | os.PathLike) -> Any | None:
    """The critic family (`critic.families.CriticFamily`) that checkpoint `model`'s config names, reading only
    its config.json (local folder, hub cache, or the hub unless offline); None if the config cannot be read."""
    from transformers import AutoConfig

    from .critic.families import family_of

    model_id = os.path.expanduser(str(model))
    try:
        config = AutoConfig.from_pretrained(model_id, local_files_only=Path(model_id).is_dir() or hub_offline())
    except (OSError, ValueError):
        return None
    return family_of(config)


def critic_family_for(vlm: str | os.PathLike, preset: str = "real", asked: str | None = None) -> str:
    """The critic family (a `critic.families` name) a run or a score uses, known before any model loads.

    With an offline preset it is `asked` (default qwen2.5-vl; a preset may bring some families only,
    `presets.Preset.critic_families`); with "real" it is the family `vlm`'s config names, and an `asked`
    family that differs is refused (InvalidInputError). Where the config cannot be read yet (not
    downloaded), `asked` or the default stands and the load itself says what is missing.
    """
    from .critic.families import DEFAULT_FAMILY, get_family

    from .presets import check_critic_family, get_preset

    asked = get_family(asked).name if asked is not None else None
    if get_preset(preset).offline:
        check_critic_family(preset, asked)
        return asked or DEFAULT_FAMILY
    found = checkpoint_family(vlm)
    if found is not None and asked is not None and found.name != asked:
        raise InvalidInputError(f"--critic-family {asked}, but --vlm {vlm} is a {found.name} checkpoint (its config says "
                                f"so); drop --critic-family or give a checkpoint of that family (e.g. --vlm "
                                f"{get_family(asked).default_checkpoint}).")
    return found.name if found is not None else asked or DEFAULT_FAMILY
