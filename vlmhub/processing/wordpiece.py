"""BERT's WordPiece tokenizer (bert-base-uncased style), built with `tokenizers` from a vocab.txt or a token list.

Used for the text paths of BLIP and the BLIP-2 Q-Former: `[CLS] text [SEP]`, lower-cased and accent-stripped,
padded with [PAD]. LAVIS adds `[DEC]` (the captioning start token) as an extra special token; pass it in
`extra_special_tokens` and it gets the next id, as `add_special_tokens` gives it in LAVIS.
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import PreTrainedTokenizerFast

SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}


def read_vocab(vocab: str | os.PathLike | list[str]) -> dict[str, int]:
    """vocab.txt (one token a line, id = line number) or a list of tokens -> {token: id}."""
    if not isinstance(vocab, list):
        with open(vocab, encoding="utf-8") as f:
            vocab = [line.rstrip("\n") for line in f]
    table = {}
    for i, token in enumerate(vocab):
        if token in table:
            raise ValueError(f"WordPiece vocabulary repeats {token!r} (ids {table[token]} and {i})")
        table[token] = i
    missing = [t for t in SPECIALS.values() if t not in table]
    if missing:
        raise ValueError(f"WordPiece vocabulary lacks the special tokens {missing}")
    return table


def build_wordpiece_tokenizer(vocab: str | os.PathLike | list[str], *, do_lower_case: bool = True,
                              model_max_length: int = 512, extra_special_tokens: tuple[str, ...] = (),
                              bos_token: str | None = None) -> PreTrainedTokenizerFast:
    """A fast tokenizer equal to transformers' BertTokenizer(vocab, do_lower_case) on ordinary text.

    extra_special_tokens are appended after the vocabulary (LAVIS' `[DEC]`); bos_token may name one of them.
    """
    table = read_vocab(vocab)
    backend = Tokenizer(WordPiece(table, unk_token=SPECIALS["unk_token"], max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=do_lower_case)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    cls, sep = SPECIALS["cls_token"], SPECIALS["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, table[cls]), (sep, table[sep])],
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length,
                                        clean_up_tokenization_spaces=True, **SPECIALS)
    if extra_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    if bos_token is not None:
        tokenizer.bos_token = bos_token
    return tokenizer
