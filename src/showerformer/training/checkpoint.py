"""Checkpoints: safetensors weights + a JSON of config, preprocessing and training state.

A checkpoint is a folder ``step-XXXXXXX/`` inside a checkpoint root (``OUT/checkpoints``):

- ``model.safetensors``: the trained weights;
- ``ema.safetensors``: the moving-average weights (when EMA is on);
- ``optimizer.safetensors``: the optimizer's tensors (``state.<param index>.<name>``);
- ``checkpoint.json``: format and library version, model family and config dict, the fitted
  preprocessing, the training config, the loop position (step, epoch, batch within the epoch),
  the schedule, best validation loss and early-stopping counter, the optimizer's groups and
  the RNG states of every rank (Python, NumPy, torch CPU and CUDA, bytes as base64).

The folder is written under a temporary name and renamed into place, then the pointer
``last.json`` (and ``best.json`` for the best validation loss) is replaced atomically; older
folders beyond ``keep`` are deleted, never one a pointer names. A run killed at any moment
leaves the previous pointer and a complete folder behind it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from showerformer._atomic import atomic_path
from showerformer.errors import InputError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_JSON",
    "build_model_from_info",
    "capture_rng_state",
    "check_rng_states",
    "has_checkpoints",
    "list_checkpoints",
    "load_checkpoint",
    "load_optimizer_state",
    "load_training_state",
    "load_weights",
    "optimizer_key",
    "optimizer_tensors",
    "prune_checkpoints",
    "read_checkpoint_info",
    "read_pointer",
    "remove_stale_temporaries",
    "resolve_checkpoint",
    "restore_data_state",
    "restore_rng_state",
    "resume_folder",
    "save_checkpoint",
    "write_pointer",
]

CHECKPOINT_FORMAT = "showerformer-checkpoint"
"""The ``format`` entry of ``checkpoint.json``."""
CHECKPOINT_JSON = "checkpoint.json"
FORMAT_VERSION = 1
MODEL_FILE, EMA_FILE, OPTIMIZER_FILE = "model.safetensors", "ema.safetensors", "optimizer.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def optimizer_key(index: int) -> str:
    """The ``files`` key and JSON entry of optimizer ``index``: ``"optimizer"`` for the first
    (the only one of most families), ``"optimizer_1"``, ``"optimizer_2"``... for the others."""
    return "optimizer" if index == 0 else f"optimizer_{index}"


def _optimizer_file(index: int) -> str:
    return OPTIMIZER_FILE if index == 0 else f"optimizer-{index}.safetensors"
_POINTERS = ("last", "best")


# ---------------------------------------------------------------------------- RNG states


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def capture_rng_state() -> dict[str, Any]:
    """The process's random states as JSON-ready data.

    Returns:
        ``{"python": [version, [625 ints], gauss], "numpy": {...}, "torch": base64,
        "cuda": [base64 per device] or None}`` (CUDA only when it has been initialised).
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [_b64(s.numpy().tobytes()) for s in torch.cuda.get_rng_state_all()]
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": _b64(np.asarray(keys, dtype=np.uint32).tobytes()),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": _b64(torch.get_rng_state().numpy().tobytes()),
        "cuda": cuda,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the random states written by :func:`capture_rng_state` (CUDA when present on
    both sides with the same device count)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    s = state["numpy"]
    keys = np.frombuffer(_unb64(s["keys"]), dtype=np.uint32).copy()
    legacy = (s["kind"], keys, int(s["pos"]), int(s["has_gauss"]), float(s["cached_gaussian"]))
    np.random.set_state(legacy)  # noqa: NPY002 (the global state user code may draw from)
    torch.set_rng_state(torch.frombuffer(bytearray(_unb64(state["torch"])), dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(_unb64(c)), dtype=torch.uint8) for c in cuda])


# ---------------------------------------------------------------------------- tensors


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's ``state_dict`` into tensors and JSON-ready data.

    Returns:
        ``({"state.<index>.<name>": tensor}, {"param_groups": [...], "scalars": {...}})``.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = json.loads(json.dumps(sd["param_groups"], default=_json_default))
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor],
                         meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_tensors`: load the state into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _os_error(exc: Exception) -> OSError | None:
    """An ``OSError`` for a safetensors error that hides one (e.g. a full disk), else None."""
    text = str(exc)
    for code, marks in ((errno.ENOSPC, ("No space left", "StorageFull", "os error 28")),
                        (errno.EDQUOT, ("Disk quota exceeded", "os error 122"))):
        if any(m in text for m in marks):
            return OSError(code, os.strerror(code))
    return None


def _save_module(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    try:
        save_model(module, str(path), metadata={"format": "pt"})
    except OSError:
        raise
    except Exception as exc:  # safetensors wraps I/O errors in its own type
        err = _os_error(exc)
        if err is None:
            raise
        raise err from exc


def _save_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    try:
        save_file(dict(tensors), str(path), metadata={"format": "pt"})
    except OSError:
        raise
    except Exception as exc:
        err = _os_error(exc)
        if err is None:
            raise
        raise err from exc


def load_weights(module: nn.Module, path: str | os.PathLike[str],
                 device: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``module`` (strict); mismatches raise :class:`InputError`."""
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise InputError("missing weights file", path=path, expected="a safetensors file")
    try:
        load_model(module, str(path), strict=True, device=str(device))
    except RuntimeError as exc:
        text = str(exc)
        if "Missing key(s)" in text or "Unexpected key(s)" in text:  # other tensor names
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                saved = set(f.keys())
            own = set(module.state_dict())
            missing, unexpected = sorted(own - saved), sorted(saved - own)
            example = ", ".join([f"missing '{missing[0]}'"] * bool(missing)
                                + [f"unexpected '{unexpected[0]}'"] * bool(unexpected))
            family = getattr(module, "family", type(module).__name__)
            raise InputError(f"the checkpoint was written with an older layout of the "
                             f"'{family}' family and must be retrained ({len(missing)} tensors "
                             f"missing, {len(unexpected)} unexpected: {example})", path=path,
                             expected="weights of this version's layout") from None
        first = text.strip().splitlines()[:3]
        raise InputError("weights do not match the model (" + " ".join(first)[:300] + ")",
                         path=path, expected="the tensors of the configured model") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise InputError(f"unreadable safetensors file ({type(exc).__name__}: {exc})"[:300],
                         path=path, expected="a safetensors file") from None


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError("missing file", path=path, expected="a safetensors file")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise InputError(f"unreadable safetensors file ({type(exc).__name__})", path=path,
                         expected="a safetensors file") from None


# ---------------------------------------------------------------------------- folders


def _step_name(step: int) -> str:
    return f"step-{int(step):07d}"


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders ``step-*`` under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / CHECKPOINT_JSON).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def write_pointer(root: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
                  which: str = "last", **extra: Any) -> Path:
    """Atomically write ``root/<which>.json`` naming the folder ``checkpoint`` (relative)."""
    root = Path(root)
    target = root / f"{which}.json"
    data = {"checkpoint": Path(checkpoint).name, **extra}
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    return target


def read_pointer(root: str | os.PathLike[str], which: str = "last") -> Path | None:
    """The folder named by ``root/<which>.json``, or None when there is no pointer.

    Raises:
        InputError: a pointer that cannot be read or parsed, that does not name a
            ``step-XXXXXXX`` folder, or whose folder is missing or incomplete.
    """
    pointer = Path(root) / f"{which}.json"
    if not pointer.exists():
        return None
    expected = '{"checkpoint": "step-XXXXXXX"}, as the trainer writes it'
    try:
        data = json.loads(pointer.read_text())
    except OSError as exc:
        raise InputError(f"cannot read the checkpoint pointer ({exc.strerror or exc})",
                         path=pointer, expected=expected) from None
    except ValueError:
        raise InputError("unreadable checkpoint pointer (not JSON)", path=pointer,
                         key="checkpoint", expected=expected) from None
    name = data.get("checkpoint") if isinstance(data, dict) else None
    if not isinstance(name, str) or not _STEP_DIR.match(name):
        raise InputError(f"unreadable checkpoint pointer ({name!r})", path=pointer,
                         key="checkpoint", expected=expected)
    target = Path(root) / name
    if not (target / CHECKPOINT_JSON).is_file():
        raise InputError(f"names the missing checkpoint '{name}'", path=pointer, key="checkpoint",
                         expected="a complete checkpoint folder beside the pointer")
    return target


def has_checkpoints(root: str | os.PathLike[str]) -> bool:
    """Whether the checkpoint root holds anything of a run: a ``step-*`` folder (complete or
    not) or a ``last.json`` / ``best.json`` pointer (readable or not)."""
    root = Path(root)
    if not root.is_dir():
        return False
    return any(_STEP_DIR.match(p.name) or p.name in {f"{w}.json" for w in _POINTERS}
               for p in root.iterdir())


def resume_folder(root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint a resumed run continues from, with its pointers checked strictly.

    Only a root without any checkpoint (see :func:`has_checkpoints`) gives None (a fresh run).
    Otherwise ``last.json`` names the folder (without it: the newest complete ``step-*``
    folder); ``best.json`` must be readable too, since the resumed run keeps that folder.

    Raises:
        InputError: a damaged pointer, a pointer to a missing folder, or ``step-*`` folders
            none of which is complete, naming the file and the key.
    """
    root = Path(root)
    if not has_checkpoints(root):
        return None
    last = read_pointer(root, "last")
    read_pointer(root, "best")
    if last is not None:
        return last
    folders = list_checkpoints(root)
    if folders:
        return folders[-1]
    broken = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    raise InputError("checkpoint folder without its JSON", path=broken[-1] / CHECKPOINT_JSON,
                     expected="a complete checkpoint folder (written by showerformer's trainer)")


def prune_checkpoints(root: str | os.PathLike[str], keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoint folders (never one a pointer names).

    Returns:
        The deleted folders.
    """
    if keep is None or keep <= 0:
        return []
    root = Path(root)
    protected = set()
    for which in _POINTERS:
        with contextlib.suppress(InputError):
            p = read_pointer(root, which)
            if p is not None:
                protected.add(p.name)
    folders = list_checkpoints(root)
    removed = []
    for p in folders[:-keep] if len(folders) > keep else []:
        if p.name not in protected:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def remove_stale_temporaries(root: str | os.PathLike[str]) -> None:
    """Delete half-written checkpoint folders left behind by a killed run."""
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".step-*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    *,
    model: nn.Module,
    info: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    ema: Any = None,
    keep: int | None = None,
    best: bool = False,
) -> Path:
    """Write checkpoint folder ``root/step-XXXXXXX`` atomically and point ``last.json`` at it.

    Arguments:
        root: the checkpoint root (created when missing).
        step: optimizer steps taken.
        model: the network (unwrapped).
        info: JSON-ready data (family, model_config, preprocessing, train_config, state, rng...).
        optimizer: saved when given; several (a GAN's critic and generator) are saved as
            ``optimizer.safetensors``, ``optimizer-1.safetensors``, ... (see :func:`optimizer_key`).
        ema: an :class:`~showerformer.training.ema.EMA`, saved when given.
        keep: keep the newest ``keep`` folders (None: all).
        best: also point ``best.json`` at this checkpoint.

    Returns:
        The checkpoint folder.
    """
    from showerformer import __version__

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        data = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION,
                "library_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": int(step)}
        data.update(info)
        files = {"model": MODEL_FILE}
        _save_module(model, tmp / MODEL_FILE)
        if ema is not None:
            _save_module(ema.module, tmp / EMA_FILE)
            files["ema"] = EMA_FILE
            data["ema"] = ema.meta()
        optimizers = ([] if optimizer is None else [optimizer]
                      if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer))
        for i, opt in enumerate(optimizers):
            tensors, meta = optimizer_tensors(opt)
            _save_tensors(tensors, tmp / _optimizer_file(i))
            files[optimizer_key(i)] = _optimizer_file(i)
            data[optimizer_key(i)] = meta
        data["files"] = files
        (tmp / CHECKPOINT_JSON).write_text(
            json.dumps(data, indent=1, default=_json_default, allow_nan=False) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving a step: swap folders, then drop the old one
            trash = root / f".{final.name}.tmp-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_pointer(root, final, "last", step=int(step))
    if best:
        write_pointer(root, final, "best", step=int(step))
    prune_checkpoints(root, keep)
    return final


# ---------------------------------------------------------------------------- reading


def resolve_checkpoint(path: str | os.PathLike[str], which: str = "last") -> Path:
    """The checkpoint folder meant by ``path``.

    Accepted: a checkpoint folder (with ``checkpoint.json``), its ``checkpoint.json``, a
    pointer file (``last.json`` / ``best.json``), a checkpoint root holding pointers, or a run
    folder holding ``checkpoints/``; in the last two cases ``which`` picks the pointer
    (``"last"`` or ``"best"``; ``"best"`` falls back to ``"last"`` when no best exists).

    Raises:
        InputError: nothing usable at ``path``.
    """
    p = Path(path)
    if p.is_file():
        if p.name == CHECKPOINT_JSON:
            return p.parent
        if p.suffix == ".json":
            found = read_pointer(p.parent, p.stem)
            if found is not None:
                return found
        raise InputError("not a checkpoint", path=p,
                         expected="a checkpoint folder, checkpoint.json or a last.json pointer")
    if not p.is_dir():
        raise InputError("no such checkpoint", path=p,
                         expected="a checkpoint folder or a run folder with checkpoints/")
    if (p / CHECKPOINT_JSON).is_file():
        return p
    for root in (p, p / "checkpoints"):
        for name in (which, "last") if which != "last" else ("last",):
            found = read_pointer(root, name)
            if found is not None:
                return found
        folders = list_checkpoints(root)
        if folders:
            return folders[-1]
    raise InputError("no checkpoint found", path=p,
                     expected="checkpoint.json, last.json or checkpoints/last.json inside")


def read_checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``checkpoint.json`` of a checkpoint folder, with ``"path"`` added.

    Raises:
        InputError: a missing or unreadable JSON, or another format, naming the file.
    """
    folder = resolve_checkpoint(path)
    jpath = folder / CHECKPOINT_JSON
    try:
        info = json.loads(jpath.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable checkpoint JSON ({type(exc).__name__})", path=jpath,
                         expected="the JSON written by showerformer's trainer") from None
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a showerformer checkpoint", path=jpath, key="format",
                         expected=f"'{CHECKPOINT_FORMAT}'")
    version = info.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError(f"format_version {version!r}", path=jpath, key="format_version",
                         expected="an integer")
    if version > FORMAT_VERSION:
        raise InputError(f"checkpoint format version {version}", path=jpath,
                         key="format_version",
                         expected=f"at most {FORMAT_VERSION} (update showerformer)")
    for key, kind in (("files", dict), ("state", dict), ("model_config", dict),
                      ("preprocessing", dict), ("metadata", dict), ("train_config", dict)):
        if info.get(key) is not None and not isinstance(info[key], kind):
            raise InputError(f"a {type(info[key]).__name__}", path=jpath, key=key,
                             expected="a JSON object")
    files = info.get("files") or {}
    for key, name in files.items():
        if not isinstance(name, str) or Path(name).name != name or not name:
            raise InputError(f"{name!r}", path=jpath, key=f"files.{key}",
                             expected="the name of a file inside the checkpoint folder")
    info["path"] = str(folder)
    return info


def build_model_from_info(info: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model of the family and config recorded in a checkpoint."""
    from showerformer.models import get_model_class

    jpath = Path(str(info.get("path", "."))) / CHECKPOINT_JSON
    family = info.get("family")
    if not family:
        raise InputError("no model family recorded", path=jpath, key="family",
                         expected="a registered family (models saved outside the registry "
                                  "cannot be rebuilt)")
    try:
        cls = get_model_class(str(family))
    except InputError as exc:
        raise InputError(exc.what, path=jpath, key="family", expected=exc.expected) from None
    config_class = getattr(cls, "config_class", None)
    if config_class is None:
        raise InputError(f"family '{family}' has no config_class", path=jpath, key="family",
                         expected="a family with a config dataclass")
    try:
        config = config_class.from_dict(dict(info.get("model_config") or {}))
    except InputError as exc:
        raise InputError(exc.what, path=jpath, key=f"model_config.{exc.key}",
                         expected=exc.expected) from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid model config ({exc})", path=jpath, key="model_config",
                         expected=f"a {config_class.__name__} dictionary") from None
    return cls(config)


def restore_data_state(model: nn.Module, info: Mapping[str, Any]) -> None:
    """Give a rebuilt model the state it fitted on its training data (the checkpoint's
    ``preprocessing`` entry), through its ``load_data_state`` when it has one.

    Raises:
        InputError: a state the family cannot read, naming ``checkpoint.json`` and the key.
    """
    load = getattr(model, "load_data_state", None)
    if not callable(load):
        return
    jpath = Path(str(info.get("path", "."))) / CHECKPOINT_JSON
    state = info.get("preprocessing")
    try:
        load(dict(state) if isinstance(state, Mapping) else {}, info)
    except InputError as exc:
        key = exc.key if exc.key and exc.key.startswith(("preprocessing", "metadata")) else (
            f"preprocessing.{exc.key}" if exc.key else "preprocessing")
        raise InputError(exc.what, path=jpath, key=key, expected=exc.expected) from None
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"unreadable preprocessing ({type(exc).__name__}: {exc})"[:300],
                         path=jpath, key="preprocessing",
                         expected="the state the family wrote when it was trained") from None


def load_checkpoint(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                    ema: bool = True, which: str = "last") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint through the model registry, ready for prediction.

    Arguments:
        path: see :func:`resolve_checkpoint`.
        device: where the model goes.
        ema: load the moving-average weights when the checkpoint has them.
        which: ``"last"`` or ``"best"`` when ``path`` is a run or checkpoint root.

    Returns:
        ``(model in eval mode, info)``; ``info`` is the checkpoint JSON plus ``"path"`` and
        ``"weights"`` (``"ema"`` or ``"model"``).

    Raises:
        InputError: missing or corrupt files, an unknown family or mismatching weights.
    """
    folder = resolve_checkpoint(path, which)
    info = read_checkpoint_info(folder)
    model = build_model_from_info(info)
    files = info.get("files") or {}
    use_ema = bool(ema and files.get("ema"))
    load_weights(model, folder / (files["ema"] if use_ema else files.get("model", MODEL_FILE)))
    restore_data_state(model, info)
    info["weights"] = "ema" if use_ema else "model"
    model.to(device)
    model.eval()
    return model, info


def check_rng_states(states: Any, path: str | os.PathLike[str], key: str = "rng") -> None:
    """Check that the saved random states (one per rank) can be restored, without changing the
    process's own (they are restored and then put back).

    Raises:
        InputError: a list that is not one of states, or a state that does not restore, naming
            ``path`` and the key.
    """
    if states is None:
        return
    if not isinstance(states, list):
        raise InputError(f"a {type(states).__name__}", path=path, key=key,
                         expected="a list of random states, one per process")
    saved = capture_rng_state()
    try:
        for i, state in enumerate(states):
            try:
                restore_rng_state(state)
            except Exception as exc:
                raise InputError(f"random state that does not restore ({type(exc).__name__})",
                                 path=path, key=f"{key}[{i}]",
                                 expected="the states written by the trainer") from None
    finally:
        restore_rng_state(saved)


def load_training_state(folder: str | os.PathLike[str], model: nn.Module,
                        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer]
                        | None = None, ema: Any = None,
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights, optimizer(s) and EMA of a checkpoint into existing objects; returns its
    info.

    Reads only: nothing in the checkpoint folder changes, also when it fails.

    Raises:
        InputError: missing or damaged files, or entries of ``checkpoint.json`` that do not fit
            the objects, naming the file and the key.
    """
    folder = Path(folder)
    info = read_checkpoint_info(folder)
    jpath = folder / CHECKPOINT_JSON
    files = info.get("files") or {}
    load_weights(model, folder / files.get("model", MODEL_FILE), device)
    if ema is not None:
        if not files.get("ema"):
            raise InputError("checkpoint without EMA weights", path=jpath, key="files.ema",
                             expected="ema_decay unset, as in the run that wrote it")
        load_weights(ema.module, folder / files["ema"], device)
        ema_meta = info.get("ema") or {}
        updates = ema_meta.get("updates", 1) if isinstance(ema_meta, dict) else None
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise InputError(f"{updates!r}", path=jpath, key="ema.updates",
                             expected="a non-negative integer")
        ema.averaged.n_averaged.fill_(updates)
    optimizers = ([] if optimizer is None else [optimizer]
                  if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer))
    for i, opt in enumerate(optimizers):
        key = optimizer_key(i)
        if not files.get(key):
            raise InputError("checkpoint without optimizer state", path=jpath,
                             key=f"files.{key}", expected="a checkpoint written during training")
        tensors = _load_tensors(folder / files[key])
        meta = info.get(key)
        if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list):
            raise InputError("no optimizer groups", path=jpath, key=f"{key}.param_groups",
                             expected="the optimizer state written by the trainer")
        try:
            load_optimizer_state(opt, tensors, meta)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise InputError(f"optimizer state does not match the model ({exc})"[:300],
                             path=folder / files[key],
                             expected="the optimizer of the same model") from None
    return info
