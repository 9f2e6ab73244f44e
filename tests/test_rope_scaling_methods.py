"""The RoPE scaling registry is the one list of methods: config's checks, the HF parameters and dvc.yaml's plot
read it, and it loads without torch (config checks params in the first stage, before torch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS, RopeScaling
from llama_pe.settings.config import ConfigError
from tests.conftest import REPO_ROOT, make_config


def test_config_takes_every_registered_method_and_names_them_all_when_refusing():
    assert make_config(eval={"rope_scaling": list(ROPE_SCALING_METHODS)}).eval.rope_scaling == tuple(
        ROPE_SCALING_METHODS
    )
    with pytest.raises(ConfigError, match=f"expected one of {', '.join(ROPE_SCALING_METHODS)}; got 'xpos'"):
        make_config(eval={"rope_scaling": ["xpos"]})


def test_hf_parameters_carry_the_training_length_where_the_method_reads_it_and_ntk_is_a_raised_base():
    from llama_pe.core.model.hf import hf_rope_parameters

    for method in ("linear", "dynamic", "yarn"):  # the methods Hugging Face implements under the same name
        parameters = hf_rope_parameters(10000.0, 32, RopeScaling(method, 4.0, 64))
        assert parameters["rope_type"] == method and parameters["factor"] == 4.0
        assert ("original_max_position_embeddings" in parameters) == (method == "yarn")
    # Static NTK-aware scaling: alpha = factor raises the base by alpha^(d / (d - 2)); Hugging Face's default type.
    assert hf_rope_parameters(10000.0, 32, RopeScaling("ntk", 4.0, 64)) == {
        "rope_type": "default",
        "rope_theta": pytest.approx(10000.0 * 4.0 ** (32 / 30)),
    }


def test_the_dvc_plot_of_scaled_rope_draws_every_registered_method():
    # dvc.yaml cannot read the registry: it is checked against it here.
    plots = [plot for plot in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"] if isinstance(plot, dict)]
    (scaled,) = [plot["rope scaling"] for plot in plots if "rope scaling" in plot]
    assert scaled["y"] == {
        "plots/eval/extrapolation.json": ["nonoverlapping_ppl", *(f"{method}_ppl" for method in ROPE_SCALING_METHODS)]
    }


def test_the_registry_and_config_load_without_torch():
    code = "import sys, llama_pe.settings.config, llama_pe.positions.rope_scaling; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
    )
    assert result.stdout.strip() == "False"
