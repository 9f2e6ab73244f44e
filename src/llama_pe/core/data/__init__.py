"""Data stages: download the corpus, train the tokenizer, encode and split into token files."""
