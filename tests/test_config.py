import dataclasses
import re

import pytest

from llama_pe.positions.catalogue import ENCODINGS
from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS
from llama_pe.settings.config import MAX_VOCAB_SIZE, ConfigError, config_from_dict, load_config
from tests.conftest import base_params, committed_path, committed_text, make_config


def with_value(section: str, key: str, value):
    params = base_params()
    params[section][key] = value
    return params


def test_repo_params_load_into_typed_frozen_config():
    cfg = load_config(committed_path("params.yaml"))
    assert cfg.tokenizer.vocab_size == 8192
    assert cfg.data.split == "contiguous"
    assert isinstance(cfg.data.val_fraction, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tokenizer.vocab_size = 4096


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "seed", "fast", "train.seed: expected an integer, got 'fast'"),
        ("train", "seed", True, "train.seed: expected an integer, got True"),
        ("data", "val_fraction", "fast", "data.val_fraction: expected a number, got 'fast'"),
        ("tokenizer", "byte_fallback", "yes", "tokenizer.byte_fallback: expected true or false, got 'yes'"),
        ("data", "url", 5, "data.url: expected a string, got 5"),
        ("data", "split", "random", "data.split: expected one of contiguous, random_chunks; got 'random'"),
        ("tokenizer", "model_type", "bbpe", "tokenizer.model_type: expected one of bpe, unigram, char; got 'bbpe'"),
        ("tokenizer", "model_type", 5, "tokenizer.model_type: expected a string, got 5"),
    ],
)
def test_wrong_type_names_the_key(section, key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(with_value(section, key, value))


def test_integer_is_accepted_where_a_number_is_expected():
    assert make_config(tokenizer={"character_coverage": 1}).tokenizer.character_coverage == 1.0


def test_unknown_key_names_it_and_the_valid_keys():
    message = r"tokenizer\.vocab: unknown setting; valid keys here: model_type, vocab_size"
    with pytest.raises(ConfigError, match=message):
        config_from_dict(with_value("tokenizer", "vocab", 10))
    params = base_params()
    params["optimizer"] = {}
    with pytest.raises(ConfigError, match=r"optimizer: unknown setting; valid keys here: data, tokenizer"):
        config_from_dict(params)


def test_missing_key_is_named():
    params = base_params()
    del params["data"]["sha256"]
    with pytest.raises(ConfigError, match=r"data\.sha256: missing required setting"):
        config_from_dict(params)
    params = base_params()
    del params["tokenizer"]
    with pytest.raises(ConfigError, match=r"^tokenizer: missing required setting"):
        config_from_dict(params)


def test_section_must_be_a_mapping():
    params = base_params()
    params["data"] = [1, 2]
    with pytest.raises(ConfigError, match=r"data: expected a mapping"):
        config_from_dict(params)


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [
        (-0.1, 0.05, r"data\.val_fraction: expected a fraction strictly between 0 and 1, got -0\.1"),
        (0.05, 0.0, r"data\.test_fraction: expected a fraction strictly between 0 and 1, got 0\.0"),
        (0.6, 0.5, r"data\.val_fraction \+ data\.test_fraction: expected a sum below 1 .* = 1\.1"),
        (0.5, 0.5, r"expected a sum below 1"),
    ],
)
def test_bad_split_fractions(val, test, message):
    with pytest.raises(ConfigError, match=message):
        make_config(data={"val_fraction": val, "test_fraction": test})


def test_vocab_must_fit_uint16_token_files():
    make_config(tokenizer={"vocab_size": MAX_VOCAB_SIZE})
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size: expected 1\.\.65535 .* got 65536"):
        make_config(tokenizer={"vocab_size": MAX_VOCAB_SIZE + 1})


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char"])
def test_lossless_tokenizer_types_load(model_type):
    assert make_config(tokenizer={"model_type": model_type}).tokenizer.model_type == model_type


def test_word_tokenizer_is_refused_with_the_reason():
    message = (
        "tokenizer.model_type: word is refused: SentencePiece's word model does not give back the text it encodes "
        "(decode(encode(text)) != text: a word without a piece of its own is spelt in bytes, and the space before it "
        "comes back as ▁), and this project needs a lossless tokenizer; use bpe, unigram or char"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make_config(tokenizer={"model_type": "word"})


def test_bad_checksum_setting():
    with pytest.raises(ConfigError, match=r"data\.sha256: expected 64 hexadecimal digits"):
        make_config(data={"sha256": "abc"})


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_empty_section_is_a_missing_setting():
    params = base_params()
    params["eval"] = None
    with pytest.raises(ConfigError, match=r"eval: expected a mapping"):
        config_from_dict(params)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"contexts": []}, r"eval\.contexts: expected a non-empty list"),
        ({"contexts": [1, -2]}, r"eval\.contexts: expected positive multiples of train\.context, got \[1\.0, -2\.0\]"),
        ({"stride": 0}, r"eval\.stride: expected a positive number of tokens or null, got 0"),
        ({"stride": 40}, r"eval\.stride: expected at most the shortest evaluation context, 32 tokens \(or null"),
        ({"top_k": 0}, r"eval\.top_k: expected a positive integer or null, got 0"),
    ],
)
def test_bad_eval_settings(changes, message):
    with pytest.raises(ConfigError, match=message):
        make_config(eval=changes)


@pytest.mark.parametrize("scale", [0, -1.5])
def test_the_position_learning_rate_scale_must_be_positive(scale):
    with pytest.raises(
        ConfigError, match=rf"train\.pos_lr_scale: expected a positive number \(1: train\.lr\), got {scale}"
    ):
        make_config(train={"pos_lr_scale": scale})


def test_eval_contexts_are_multiples_of_the_training_context():
    assert make_config(train={"context": 64}).eval_contexts == (32, 64, 128, 256, 512)


def test_the_sliding_stride_follows_the_training_context_unless_set():
    assert make_config(train={"context": 64}).eval_stride == 32
    assert make_config(train={"context": 32}).eval_stride == 16  # the shortest evaluation context, 0.5 x 32
    assert make_config(train={"context": 32}, eval={"contexts": [0.25, 1]}).eval_stride == 8
    assert make_config(train={"context": 64}, eval={"stride": 7}).eval_stride == 7


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "lr", float("inf")),
        ("train", "min_lr", float("nan")),
        ("model", "dropout", float("-inf")),
        ("eval", "temperature", float("inf")),
        ("tokenizer", "character_coverage", float("nan")),
    ],
)
def test_non_finite_numbers_are_refused_for_every_float_setting(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: expected a finite number, got {value!r}"):
        config_from_dict(with_value(section, key, value))


def test_params_are_read_as_dvc_writes_them_yaml_1_2_where_1e_05_is_a_number(tmp_path):
    # `dvc exp run -S train.min_lr=1e-5` writes `min_lr: 1e-05`: a float in YAML 1.2, a string in PyYAML's 1.1.
    text = committed_text("params.yaml").replace("min_lr: 0.0002", "min_lr: 1e-09").replace(" lr: 0.002", " lr: 1e-05")
    assert " lr: 1e-05" in text and "min_lr: 1e-09" in text
    (tmp_path / "params.yaml").write_text(text)
    cfg = load_config(tmp_path / "params.yaml")
    assert cfg.train.lr == 1e-5 and cfg.train.min_lr == 1e-9


def test_yaml_infinity_is_refused_as_loaded_from_a_file(tmp_path):
    text = committed_text("params.yaml").replace("lr: 0.002", "lr: .inf")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"train\.lr: expected a finite number, got inf"):
        load_config(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"size": "huge"}, r"model\.size: unknown size 'huge'; valid sizes: tiny, small, base, seed33m"),
        ({"pos": "xpos"}, rf"model\.pos: unknown position encoding 'xpos'; valid: {', '.join(ENCODINGS)}$"),
        ({"dim": 256}, r"model\.dim: 256 is not divisible by model\.n_heads=6"),  # small has 6 heads
        ({"n_kv_heads": 4}, r"model\.n_heads: 6 is not a multiple of model\.n_kv_heads=4"),
        ({"impl": "hf", "pos": "alibi"}, r"model\.impl=hf supports model\.pos=rope only"),
        (
            {"pos": "rope", "alibi_learnable": True},
            r"model\.alibi_learnable: true has no meaning for model\.pos=rope \(only alibi, abs_rel use it\); set it "
            r"back to false",
        ),
        ({"pos": "rope", "t5_buckets": 2}, r"model\.t5_buckets: 2 has no meaning for model\.pos=rope"),
        ({"dropout": 1.0}, r"model\.dropout: expected a number in \[0, 1\), got 1\.0"),
    ],
)
def test_model_settings_are_checked_when_params_are_loaded(model, message):
    # No vocabulary or data is needed: the first stage that loads params (download) already refuses them.
    with pytest.raises(ConfigError, match=message):
        make_config(model=model)


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("model", {"pos": "t5", "t5_buckets": 2}, r"model\.t5_buckets: expected an integer of at least 4 .*got 2"),
        ("model", {"pos": "t5", "t5_max_distance": 16},
         r"model\.t5_max_distance: expected more than half of model\.t5_buckets \(16\), where the log-spaced "
         r"buckets start, got 16"),
        ("eval", {"rope_scaling": ["yarn", "xpos"]},
         rf"eval\.rope_scaling.*expected one of {', '.join(ROPE_SCALING_METHODS)}; got 'xpos'"),
        ("eval", {"rope_scaling": ["yarn", "yarn"]}, r"eval\.rope_scaling: expected each method once"),
    ],
)  # fmt: skip
def test_t5_and_rope_scaling_settings_are_checked(section, values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**{section: values})


def test_docs_parameters_names_every_key_of_params_yaml_and_no_key_that_is_gone():
    import re

    from llama_pe.settings.config import flat_params
    from llama_pe.settings.yaml12 import load_yaml
    from tests.conftest import REPO_ROOT

    params = load_yaml(committed_text("params.yaml"))
    keys = set(flat_params(params))
    text = (REPO_ROOT / "docs/parameters.md").read_text(encoding="utf-8")
    named = {key for key in re.findall(r"`([a-z_]+\.[a-z0-9_]+)`", text) if key.split(".")[0] in params}
    assert keys - named == set(), f"docs/parameters.md does not name {sorted(keys - named)}: add a row for each"
    assert named - keys == set(), f"docs/parameters.md names {sorted(named - keys)}, which params.yaml no longer has"
