"""Safe loading: safetensors-only weights, complete checkpoints, archives read in place and extracted safely.

- a folder with only `pytorch_model.bin` is refused (UnsafeWeightsError naming the file) unless allow_pickle=True;
- `use_safetensors=False` alone is refused too; with both files present, safetensors are read;
- vision backbones (`vision_families.load_pretrained_vision`, used by `from_backbones` and `ImageEmbedder`) are
  read from safetensors only unless `use_safetensors=None` is passed;
- missing weights -> MissingWeightsError naming them; extra weights -> a warning naming them;
- an unknown `model_type` -> a clear ValueError naming it;
- a folder without config.json, a truncated or corrupt safetensors file -> OSError naming it; NaN weights warn;
- zip/tar members are read in place; `safe_extract` refuses absolute paths, `..`, escaping links, devices,
  oversized members, and writes nothing when any member is bad;
- no module of the package passes `trust_remote_code=True`.
"""

import io
import json
import os
import re
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from collm_hf import CoLLMModel
from collm_hf.utils.archives import ImageArchive, UnsafeArchiveError, safe_extract
from collm_hf.models.collm.image_io import ImageReadError
from collm_hf.models.collm.safe_loading import MissingWeightsError, UnsafeWeightsError

PACKAGE = Path(__file__).resolve().parents[1] / "collm_hf"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from collm_hf.testing_utils import tiny_model_and_processor

    model, _ = tiny_model_and_processor()
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder)
    return folder, load_file(folder / "model.safetensors"), model


def _copy_config(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_pickle_only_folder_is_refused_unless_opted_in(saved, tmp_path):
    folder, state, model = saved
    target = _copy_config(folder, tmp_path / "bin")
    torch.save(state, target / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match=r"pytorch_model\.bin.*allow_pickle=True"):
        CoLLMModel.from_pretrained(target)
    with pytest.raises(UnsafeWeightsError, match="allow_pickle=True"):
        CoLLMModel.from_pretrained(target, use_safetensors=False)
    loaded = CoLLMModel.from_pretrained(target, allow_pickle=True)
    assert torch.equal(loaded.projection.weight, model.projection.weight)
    assert not any(p.requires_grad for p in loaded.vision_tower.parameters())  # freezing re-applied


def test_safetensors_preferred_when_both_exist(saved, tmp_path):
    folder, state, model = saved
    target = _copy_config(folder, tmp_path / "both")
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    poisoned = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save(poisoned, target / "pytorch_model.bin")
    loaded = CoLLMModel.from_pretrained(target)
    assert torch.equal(loaded.projection.weight, model.projection.weight)


def test_missing_weights_error_names_them(saved, tmp_path):
    folder, state, _ = saved
    target = _copy_config(folder, tmp_path / "missing")
    partial = {k: v for k, v in state.items() if not k.startswith("projection.")}
    save_file(partial, target / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match=r"projection\.bias.*projection\.weight") as info:
        CoLLMModel.from_pretrained(target)
    assert sorted(info.value.missing) == ["projection.bias", "projection.weight"]


def test_extra_weights_warn_and_load(saved, tmp_path):
    folder, state, model = saved
    target = _copy_config(folder, tmp_path / "extra")
    save_file(dict(state, **{"old_head.weight": torch.zeros(3)}), target / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"old_head\.weight"):
        loaded, info = CoLLMModel.from_pretrained(target, output_loading_info=True)
    assert "old_head.weight" in info["unexpected_keys"]
    assert torch.equal(loaded.projection.weight, model.projection.weight)


def test_wrong_shapes_are_an_error(saved, tmp_path):
    folder, state, _ = saved
    target = _copy_config(folder, tmp_path / "shape")
    save_file(dict(state, **{"projection.weight": torch.zeros(3, 3)}), target / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises((RuntimeError, ValueError), match="mismatch|size"):
        CoLLMModel.from_pretrained(target)


def test_unknown_model_type_is_named(saved, tmp_path):
    from transformers import AutoModel

    folder, state, _ = saved
    target = tmp_path / "unknown"
    target.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "collm_unheard_of"
    config.pop("auto_map", None)  # no code shipped with it either
    (target / "config.json").write_text(json.dumps(config))
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="collm_unheard_of"):
        AutoModel.from_pretrained(target)


def test_no_package_code_passes_trust_remote_code_true():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"trust_remote_code\s*=\s*True", code) and ">>>" not in code and "`" not in code:
                offenders.append(f"{path.name}:{number}")
    assert not offenders, offenders


def test_nothing_in_the_package_unpickles():
    """Caches are safetensors or JSON; a `torch.load` would need `weights_only=True`, and the torch pin keeps
    that the default (torch >= 2.6) for the libraries underneath."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"\b(torch\.load|pickle\.loads?|np\.load)\s*\(", text):
            call = text[match.start():text.find(")", match.end()) + 1]
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(PACKAGE)}: {call}")
    assert not offenders, offenders
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert re.search(r'"torch>=2\.(6|[7-9]|\d\d)', pyproject), "torch < 2.6 unpickles anything by default"


# --------------------------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------------------------
def _png(color=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _tar(path: Path, entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    data = data or {}
    with tarfile.open(path, "w:gz") as archive:
        for info in entries:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def test_zip_and_tar_images_read_in_place(tmp_path):
    zip_path = tmp_path / "dev.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("dev/a.png", _png())
        archive.writestr("dev/broken.png", b"not a png")
        archive.writestr("dev/notes.txt", b"hello")
    tar_path = _tar(tmp_path / "dev.tar.gz", [_file("dev/a.png")], {"dev/a.png": _png((0, 0, 255))})
    with ImageArchive(zip_path) as archive:
        assert archive.image_names() == ["dev/a.png", "dev/broken.png"]
        assert archive.open_image("dev/a.png").getpixel((0, 0)) == (255, 0, 0)
        assert archive.open_image("./dev/a.png").size == (6, 4)
        with pytest.raises(ImageReadError, match=r"dev\.zip::dev/broken\.png"):
            archive.open_image("dev/broken.png")
        with pytest.raises(KeyError, match="missing.png"):
            archive.open_image("dev/missing.png")
    archive = ImageArchive(tar_path)
    assert archive.open_image("dev/a.png").getpixel((0, 0)) == (0, 0, 255)
    import pickle

    assert pickle.loads(pickle.dumps(archive)).open_image("dev/a.png").size == (6, 4)  # workers reopen it
    assert not (tmp_path / "dev").exists()  # nothing extracted
    with pytest.raises(ValueError, match="not a zip or tar"):
        ImageArchive(Path(__file__))


@pytest.mark.parametrize(
    "name,match",
    [("/etc/evil.png", "absolute"), ("../evil.png", r"'\.\.'"), ("a/../../evil.png", r"'\.\.'"),
     ("..\\evil.png", r"'\.\.'"), ("C:/evil.png", "absolute")],
)
def test_zip_extraction_refuses_escaping_names(tmp_path, name, match):
    zip_path = tmp_path / "bad.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("ok.png", _png())
        archive.writestr(zipfile.ZipInfo(name), b"x")
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=match):
        safe_extract(zip_path, target)
    assert not target.exists()  # nothing written, not even the good member


def test_zip_symlink_leaving_target_is_refused(tmp_path):
    zip_path = tmp_path / "link.zip"
    info = zipfile.ZipInfo("images/passwd")
    info.external_attr = (0o120777 << 16)  # a symbolic link
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr(info, "../../../etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(zip_path, tmp_path / "out")


@pytest.mark.parametrize(
    "entries,match",
    [
        ([_file("/abs.png")], "absolute"),
        ([_file("../up.png")], r"'\.\.'"),
        ([_link("images/l", "/etc/passwd")], "link"),
        ([_link("images/l", "../../outside")], "link"),
        ([_link("images/l", "../images/../../x")], "link"),
        ([_link("images/h", "../outside", hard=True)], r"'\.\.'|link"),
    ],
)
def test_tar_extraction_refuses_escapes(tmp_path, entries, match):
    path = _tar(tmp_path / "bad.tar.gz", [_file("images/ok.png")] + entries, {"images/ok.png": _png()})
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=match):
        safe_extract(path, target)
    assert not target.exists()


@pytest.mark.parametrize("links", [
    [("s", "."), ("l", "s/../escaped")],  # lexically inside ("escaped"), but s/.. is the target's parent
    [("a", "b"), ("b", "c/.."), ("c", "."), ("l", "a/../../escaped")],
    [("d", "."), ("d2", "d/d/d/.."), ("l", "d2/escaped")],
])
def test_link_chain_tar_leaves_the_target_untouched(tmp_path, links):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("before")
    path = _tar(tmp_path / "chain.tar", [_file("images/ok.png")] + [_link(name, to) for name, to in links],
                {"images/ok.png": _png()})
    with pytest.raises(UnsafeArchiveError, match="outside the target folder"):
        safe_extract(path, target)
    assert sorted(os.listdir(target)) == ["keep.txt"] and (target / "keep.txt").read_text() == "before"
    assert sorted(os.listdir(tmp_path)) == ["chain.tar", "out"]  # nothing escaped, no temporary folder left


def test_extraction_refused_underneath_is_an_unsafe_archive_error(tmp_path, monkeypatch):
    path = _tar(tmp_path / "good.tar", [_file("images/a.png")], {"images/a.png": _png()})

    def refuse(self, *args, **kwargs):
        raise tarfile.OutsideDestinationError(self.getmembers()[0], str(tmp_path))

    monkeypatch.setattr(tarfile.TarFile, "extractall", refuse)
    with pytest.raises(UnsafeArchiveError, match="OutsideDestinationError"):
        safe_extract(path, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["good.tar"]


def test_extraction_into_an_existing_folder_merges(tmp_path):
    target = tmp_path / "images"
    (target / "dev").mkdir(parents=True)
    (target / "dev" / "old.png").write_bytes(_png((0, 255, 0)))
    path = _tar(tmp_path / "train.tar", [_file("dev/a.png"), _file("train/b.png")],
                {"dev/a.png": _png(), "train/b.png": _png()})
    assert safe_extract(path, target) == ["dev/a.png", "train/b.png"]
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*.png")) == ["dev/a.png", "dev/old.png", "train/b.png"]
    assert sorted(os.listdir(tmp_path)) == ["images", "train.tar"]


def test_tar_device_and_oversized_members_are_refused(tmp_path):
    device = tarfile.TarInfo("dev/null")
    device.type = tarfile.CHRTYPE
    with pytest.raises(UnsafeArchiveError, match="device"):
        safe_extract(_tar(tmp_path / "dev.tar", [device]), tmp_path / "out")
    big = _tar(tmp_path / "big.tar", [_file("a.png")], {"a.png": b"x" * 2048})
    with pytest.raises(UnsafeArchiveError, match="limit"):
        safe_extract(big, tmp_path / "out", max_member_bytes=1024)


def test_safe_extraction_of_a_good_archive(tmp_path):
    path = _tar(tmp_path / "good.tar.gz", [_file("images/a.png"), _link("images/b.png", "a.png")],
                {"images/a.png": _png()})
    names = safe_extract(path, tmp_path / "out")
    assert names == ["images/a.png", "images/b.png"]
    assert (tmp_path / "out/images/b.png").read_bytes() == _png()
    zip_path = tmp_path / "good.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("x/y.png", _png())
    assert safe_extract(zip_path, tmp_path / "zout") == ["x/y.png"]
    assert np.asarray(Image.open(tmp_path / "zout/x/y.png")).shape == (4, 6, 3)
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "out"))


def test_from_pretrained_keeps_other_warnings_quiet(saved):
    folder, _, _ = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        CoLLMModel.from_pretrained(folder)


def test_vision_backbone_pickle_only_is_refused_unless_opted_in(tmp_path):
    """`from_backbones` / `ImageEmbedder` load towers through `load_pretrained_vision`: safetensors only too."""
    from transformers import CLIPConfig, CLIPModel

    from collm_hf.testing_utils import VISION_CONFIGS
    from collm_hf.models.collm.vision_families import load_pretrained_vision

    vision = {k: v for k, v in VISION_CONFIGS["clip"].items() if k not in ("model_type", "projection_dim")}
    text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
            "vocab_size": 99}
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=24)).save_pretrained(tmp_path / "clip")
    state = load_file(tmp_path / "clip" / "model.safetensors")
    (tmp_path / "clip" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "clip" / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_pretrained_vision(str(tmp_path / "clip"))
    vision = load_pretrained_vision(str(tmp_path / "clip"), use_safetensors=None)
    assert vision.family == "clip" and vision.projection_dim == 24


@pytest.mark.parametrize("name", ["tokenizer.json", "processor_config.json", "tokenizer_config.json"])
def test_processor_with_a_corrupt_json_file_is_named(tmp_path, name):
    from transformers import AutoProcessor

    from collm_hf import CoLLMProcessor
    from collm_hf.testing_utils import tiny_model_and_processor

    _, processor = tiny_model_and_processor()
    processor.save_pretrained(tmp_path / "proc")
    (tmp_path / "proc" / name).write_text("{not json")
    for load in (CoLLMProcessor.from_pretrained, AutoProcessor.from_pretrained):
        with pytest.raises(OSError, match="proc"):
            load(tmp_path / "proc")


def test_damaged_checkpoint_folders_are_named(saved, tmp_path):
    folder, state, _ = saved
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    save_file(state, no_config / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(OSError, match=r"no_config has no config\.json"):
        CoLLMModel.from_pretrained(no_config)
    for cut in (0, 5, 100, 4000):
        target = _copy_config(folder, tmp_path / f"cut{cut}")
        (target / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:cut])
        with pytest.raises(OSError, match=rf"cut{cut}.*corrupt or truncated"):
            CoLLMModel.from_pretrained(target)
    target = _copy_config(folder, tmp_path / "nan")
    save_file(dict(state, **{"projection.weight": torch.full_like(state["projection.weight"], float("nan"))}),
              target / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"NaN or infinite values: projection\.weight"):
        CoLLMModel.from_pretrained(target)
