"""Shared fixtures: a small generated corpus and configs built from the repo's own params.yaml."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_pe.config import Config, config_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
_WORDS = (
    "thou art the king and I thy humble servant what say you now my lord "
    "speak hear me gentle sweet love death honour crown sword night day"
).split()
_SPEAKERS = ["KING HENRY", "First Citizen", "ROMEO", "LADY CAPULET", "Clown"]


def generate_corpus(n_speeches: int = 400, seed: int = 0) -> str:
    """Shakespeare-shaped text: speaker lines, verse lines, blank lines, punctuation, odd spacing, accents."""
    rng = random.Random(seed)
    speeches = []
    for _ in range(n_speeches):
        lines = [f"{rng.choice(_SPEAKERS)}:"]
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 9))]
            words[0] = words[0].capitalize()
            lines.append(" ".join(words) + rng.choice([",", ".", "!", "?", ";", "--", ""]))
        speeches.append("\n".join(lines) + "\n")
    # A run of spaces, a tab and non-ASCII characters: a lossless tokenizer must keep all of them.
    return "\n".join(speeches) + "Adieu,  café\tnaïve!\n"


@pytest.fixture(scope="session")
def corpus() -> str:
    return generate_corpus()


def base_params() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def make_config(**sections: dict[str, Any]) -> Config:
    """The repo's params.yaml with some settings replaced, e.g. make_config(tokenizer={"vocab_size": 300})."""
    params = copy.deepcopy(base_params())
    for section, values in sections.items():
        params[section].update(values)
    return config_from_dict(params)


@pytest.fixture(scope="session")
def data_dirs(corpus, tmp_path_factory) -> Path:
    """tokenizer/ and encoded/ folders for the generated corpus, as the tokenizer and encode stages make them."""
    return make_data_dirs(corpus, tmp_path_factory.mktemp("data"), make_config(tokenizer={"vocab_size": 400}))


def make_data_dirs(corpus: str, root: Path, cfg: Config) -> Path:
    from llama_pe.data.encode import encode_corpus
    from llama_pe.data.tokenizer import save_tokenizer, train_tokenizer

    (root / "corpus.txt").write_text(corpus, encoding="utf-8")
    save_tokenizer(train_tokenizer(corpus, cfg.tokenizer), root / "tokenizer")
    encode_corpus(root / "corpus.txt", root / "tokenizer", root / "encoded", cfg)
    return root
