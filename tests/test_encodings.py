"""The catalogue of encodings: the one list of names, what each entry says it is, and its own settings."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
import yaml

from llama_pe.core.model import ModelArgs
from llama_pe.errors import ConfigError
from llama_pe.positions.base import PositionEncoding, checked_class, position_class
from llama_pe.positions.catalogue import ENCODINGS, Encoding, hf_encoding, settings_of_every_encoding
from llama_pe.positions.rope import Rotary
from tests.conftest import committed_text, make_config


def test_params_are_checked_without_torch():
    code = "import sys, llama_pe.settings.config, llama_pe.positions.catalogue; sys.exit('torch' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_entry_has_its_class_and_the_class_is_what_the_entry_says():
    for name, entry in ENCODINGS.items():
        cls = position_class(name)
        assert cls.name == name and cls.spec is entry
        assert issubclass(cls, Rotary) == entry.rotary
        overrides_bias = cls.score_mod is not PositionEncoding.score_mod
        assert overrides_bias == entry.biased


def test_params_yaml_has_every_encodings_settings_at_their_defaults_and_names_every_encoding():
    text = committed_text("params.yaml")
    model = yaml.safe_load(text)["model"]
    for key, setting in settings_of_every_encoding().items():
        assert model[key] == setting.default, key
    (pos_line,) = [line for line in text.splitlines() if re.match(r"\s+pos:", line)]
    expected = f"# {' | '.join(ENCODINGS)}"  # the catalogue's order: the order of registration
    assert "#" + pos_line.split("#", 1)[1].rstrip() == expected, (
        f"params.yaml's model.pos comment names every encoding in the catalogue's order; write `{expected}` "
        f"after `pos: {model['pos']}`"
    )


@pytest.fixture
def register():
    """Checks a made-up class against a made-up entry, as the first build of each encoding's class does."""

    def _register(cls: type, **capabilities) -> None:
        checked_class("made_up", Encoding("a test's", cls.__name__, **capabilities), cls)

    return _register


NEW_ENCODING = """
from llama_pe.positions.catalogue import Encoding, Setting, torch_part

ENCODING = Encoding("a test's", "Doubled", rank=50, settings={"doubling": Setting(1.0, "a test's key")})


def _make():
    from llama_pe.positions.base import PositionEncoding

    class Doubled(PositionEncoding):
        def embed(self, x, start):
            return 2 * x

    return {"Doubled": Doubled}


__getattr__ = torch_part(__name__, ENCODING, _make, ("Doubled",))
"""


def test_a_new_file_in_the_package_is_an_encoding_in_its_place_without_a_line_elsewhere(tmp_path):
    (tmp_path / "doubled_in_a_test.py").write_text(NEW_ENCODING)
    code = (
        "import sys, llama_pe.positions as p; p.__path__.append(sys.argv[1]);"
        "from llama_pe.positions.catalogue import ENCODINGS, settings_of_every_encoding;"
        "print(list(ENCODINGS)); print('doubling' in settings_of_every_encoding()); print('torch' in sys.modules);"
        "from llama_pe.positions.base import position_class; print(position_class('doubled_in_a_test').name)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    names, owns_key, torch_loaded, built = done.stdout.splitlines()
    assert names == str([*ENCODINGS, "doubled_in_a_test"])  # by rank: 50 is after every encoding of the project
    assert (owns_key, torch_loaded, built) == ("True", "False", "doubled_in_a_test")


def test_a_biased_entry_whose_class_forgets_score_mod_fails_at_registration_on_a_cpu(register):
    class BiasWithoutKernel(PositionEncoding):
        def attn_bias(self, q_len, k_len, start):
            return torch.zeros(1, q_len, k_len)

    with pytest.raises(TypeError, match=r"is biased, so BiasWithoutKernel must define both attn_bias and score_mod"):
        register(BiasWithoutKernel, biased=True)
    with pytest.raises(TypeError, match=r"BiasWithoutKernel adds an attention bias, so .* must say biased=True"):
        register(BiasWithoutKernel)


def test_rotary_is_a_capability_that_the_class_must_have(register):
    class RotarySubclass(Rotary):
        pass

    with pytest.raises(TypeError, match=r"\.rotary is False, but RotarySubclass has rotary frequencies"):
        register(RotarySubclass)
    with pytest.raises(TypeError, match=r"\.rotary is True, but NoRotation has no rotary frequencies"):
        register(type("NoRotation", (PositionEncoding,), {}), rotary=True)
    register(RotarySubclass, rotary=True)


def test_settings_belong_to_their_encodings():
    assert make_config(model={"pos": "p_rope", "rope_fraction": 0.5}).model.encoding_settings == {
        "rope_theta": 10000.0,
        "rope_fraction": 0.5,
    }
    with pytest.raises(
        ConfigError, match=r"model\.rope_fraction: 0\.5 has no meaning for model\.pos=rope \(only p_rope uses it\)"
    ):
        make_config(model={"pos": "rope", "rope_fraction": 0.5})
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=rf"model\.rope_fraction: expected a fraction in \(0, 1\].*got {bad}"):
            make_config(model={"pos": "p_rope", "rope_fraction": bad})
    with pytest.raises(ConfigError, match=r"model\.rope_fraction: 0\.01 of the 16 frequency pairs .* rotates none"):
        make_config(model={"pos": "p_rope", "rope_fraction": 0.01})  # small: 32-dimensional heads
    # Only a rotary encoding needs an even head dimension.
    for name, entry in ENCODINGS.items():
        odd = {"pos": name, "dim": 216, "n_heads": 8, "n_kv_heads": 2}  # 27 per head
        if entry.rotary:
            with pytest.raises(ConfigError, match=r"head dimension must be even; .* = 27"):
                make_config(model=odd)
        else:
            make_config(model=odd)


def test_only_the_hf_exportable_encoding_trains_as_hugging_faces_llama():
    for name, entry in ENCODINGS.items():
        if entry.hf_exportable:
            make_config(model={"impl": "hf", "pos": name})
        else:
            with pytest.raises(ConfigError, match=rf"model\.impl=hf supports model\.pos={hf_encoding()} only"):
                make_config(model={"impl": "hf", "pos": name})


def test_model_args_take_an_encodings_defaults_and_refuse_a_setting_of_another():
    args = ModelArgs(vocab_size=8, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=8, pos="p_rope")
    assert args.encoding == {"rope_theta": 10000.0, "rope_fraction": 0.75}
    with pytest.raises(ConfigError, match=r"model\.t5_buckets: not a setting of model\.pos=alibi \(its settings: "):
        args.replace(pos="alibi", encoding={"t5_buckets": 8})


def test_args_saved_before_the_settings_were_grouped_still_load():
    saved = dict(
        vocab_size=8,
        dim=16,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        max_seq_len=8,
        ffn_hidden=None,
        dropout=0.0,
        tie_embeddings=True,
        pos="t5",
        impl="native",
        rope_theta=10000.0,
        alibi_learnable=False,
        t5_buckets=8,
        t5_max_distance=20,
        multiple_of=64,
        norm_eps=1e-5,
        init_std=0.02,
    )
    assert ModelArgs.from_saved(saved).encoding == {"t5_buckets": 8, "t5_max_distance": 20}
