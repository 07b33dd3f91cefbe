"""Loading model weights safely: safetensors only unless the caller opts in, and every weight accounted for.

A pickle weights file (`pytorch_model.bin`, `*.pt`, `*.ckpt`) can run arbitrary code when unpickled, so a
checkpoint from a stranger is read from safetensors only. `CoLLMModel.from_pretrained` calls
`checked_from_pretrained`, which

- passes `use_safetensors=True`, and refuses a local folder that holds only pickle weights with
  `UnsafeWeightsError` naming the file, unless the caller passes `allow_pickle=True` (then safetensors are
  still preferred and the pickle file is the fallback);
- raises `MissingWeightsError` naming every weight the checkpoint lacks (a randomly initialised layer in a
  "pretrained" model is a silent wrong result);
- warns, naming them, about weights in the checkpoint that the model does not use (extra weights are
  harmless to the result: a newer checkpoint, or a head this model has no use for);
- warns, naming them, about weights holding NaN or infinite values (a diverged run's checkpoint);
- names the folder when it has no `config.json` (transformers would build a default config and fail on
  mismatched shapes) and the file when a safetensors file is corrupt.

This module imports only the standard library and safetensors (it travels with saved checkpoints).
"""

import os
import warnings

from safetensors import SafetensorError

# Weight files that are pickles (torch.save / torch.load): refused unless allow_pickle=True.
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_SUFFIX = ".safetensors"
# How many weight names an error message spells out.
MAX_LISTED_WEIGHTS = 20


class UnsafeWeightsError(OSError):
    """The checkpoint holds pickle weights only and the caller did not pass `allow_pickle=True`."""


class MissingWeightsError(ValueError):
    """The checkpoint lacks weights the model needs; `missing` lists their names."""

    def __init__(self, source: str, missing: list[str]):
        self.missing = sorted(missing)
        listed = ", ".join(self.missing[:MAX_LISTED_WEIGHTS])
        more = f" ... and {len(self.missing) - MAX_LISTED_WEIGHTS} more" if len(self.missing) > MAX_LISTED_WEIGHTS else ""
        super().__init__(
            f"{source}: the checkpoint lacks {len(self.missing)} weight(s) the model needs: {listed}{more}. "
            "They would be randomly initialised; the checkpoint is incomplete or was saved from another model."
        )


def _listed(names) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - MAX_LISTED_WEIGHTS} more" if len(names) > MAX_LISTED_WEIGHTS else ""
    return ", ".join(names[:MAX_LISTED_WEIGHTS]) + more


def weight_files(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(safetensors files, pickle files) directly inside `folder` (index files count for their format)."""
    safe, pickled = [], []
    for name in sorted(os.listdir(folder)):
        lower = name.lower()
        if lower.endswith(SAFETENSORS_SUFFIX) or lower.endswith(SAFETENSORS_SUFFIX + ".index.json"):
            safe.append(name)
        elif lower.endswith(PICKLE_WEIGHT_SUFFIXES) or lower.endswith(".bin.index.json"):
            pickled.append(name)
    return safe, pickled


def check_weights_format(name_or_path, allow_pickle: bool = False, subfolder: str = "") -> None:
    """Refuse a local checkpoint folder that holds pickle weights only, unless `allow_pickle`.

    Hub repo ids are not inspected here (no network): `use_safetensors=True` makes transformers refuse them.

    Raises:
        UnsafeWeightsError: naming the folder and its pickle files.
    """
    if allow_pickle or name_or_path is None:
        return
    folder = os.path.join(os.fspath(name_or_path), subfolder or "")
    if not os.path.isdir(folder):
        return
    safe, pickled = weight_files(folder)
    if pickled and not safe:
        raise UnsafeWeightsError(
            f"{folder} holds only pickle weights ({', '.join(pickled)}); pickle files can run arbitrary code when "
            "loaded, so collm_hf reads model weights from safetensors only. If you trust this checkpoint, pass "
            "allow_pickle=True (or convert it: load it once with allow_pickle=True and save_pretrained)."
        )


def checked_from_pretrained(load, name_or_path, *args, allow_pickle: bool = False, **kwargs):
    """Call a `PreTrainedModel.from_pretrained` (`load`) with the safety rules of this module.

    Args:
        load: the bound `from_pretrained` of the transformers base class.
        name_or_path: a local folder or a hub repo id.
        allow_pickle: permit pickle weights (`pytorch_model.bin`) when no safetensors file exists.
        *args, **kwargs: passed on to `load` (`output_loading_info=True` is honoured).

    Returns:
        The model, or `(model, loading_info)` when the caller asked for `output_loading_info`.

    Raises:
        UnsafeWeightsError: only pickle weights and `allow_pickle` is False.
        MissingWeightsError: the checkpoint lacks weights the model needs.
    """
    use_safetensors = kwargs.pop("use_safetensors", None if allow_pickle else True)
    if use_safetensors is False and not allow_pickle:
        raise UnsafeWeightsError(
            "use_safetensors=False reads pickle weights, which can run arbitrary code; pass allow_pickle=True "
            "as well if you trust this checkpoint."
        )
    folder = None
    if name_or_path is not None:
        folder = os.path.normpath(os.path.join(os.fspath(name_or_path), kwargs.get("subfolder", "") or ""))
    if folder and os.path.isdir(folder) and kwargs.get("config") is None \
            and not os.path.isfile(os.path.join(folder, "config.json")):
        raise OSError(f"{folder} has no config.json: not a saved model folder (save_pretrained writes one).")
    if kwargs.get("state_dict") is None:
        check_weights_format(name_or_path, allow_pickle, kwargs.get("subfolder", ""))
    want_info = kwargs.pop("output_loading_info", False)
    try:
        model, info = load(name_or_path, *args, use_safetensors=use_safetensors, output_loading_info=True, **kwargs)
    except SafetensorError as error:
        raise OSError(f"{name_or_path}: a safetensors weights file is corrupt or truncated ({error}).") from error
    except OSError as error:
        if use_safetensors and "safetensors" in str(error) and not isinstance(error, UnsafeWeightsError):
            raise UnsafeWeightsError(
                f"{name_or_path}: no safetensors weights found ({error}). collm_hf reads model weights from "
                "safetensors only; pass allow_pickle=True to read a pickle file (pytorch_model.bin) you trust."
            ) from error
        raise
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise MissingWeightsError(str(name_or_path), missing)
    unexpected = list(info.get("unexpected_keys") or [])
    if unexpected:
        warnings.warn(
            f"{name_or_path}: the checkpoint holds {len(unexpected)} weight(s) the model does not use (ignored): "
            f"{_listed(unexpected)}.",
            stacklevel=3,
        )
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(tensor.isfinite().all())]
    if broken:
        warnings.warn(f"{name_or_path}: {len(broken)} weight(s) hold NaN or infinite values: {_listed(broken)}; "
                      "every embedding will be NaN (the checkpoint of a diverged run?).", stacklevel=3)
    return (model, info) if want_info else model


__all__ = ["MissingWeightsError", "UnsafeWeightsError", "check_weights_format", "checked_from_pretrained", "weight_files"]
