"""The package's public names: importable from `collm_hf`, the light ones without the heavy libraries."""

import subprocess
import sys

import collm_hf


def test_every_public_name_imports_from_the_package():
    for name in collm_hf.__all__:
        assert getattr(collm_hf, name) is not None, name
    assert collm_hf.__version__ == "0.2.0"


def test_importing_the_package_leaves_training_and_evaluation_unloaded():
    code = "import sys, collm_hf; print(sorted(m for m in ('datasets', 'evaluate', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error():
    try:
        collm_hf.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("expected AttributeError")
