"""CLIP's byte-level BPE tokenizer, rebuilt on the `tokenizers` library.

OpenAI's CLIP ships a merges file (`bpe_simple_vocab_16e6.txt.gz`) and a pure-Python `SimpleTokenizer`
that derives the vocabulary from it at load time. `build_clip_tokenizer` derives the same vocabulary and
expresses the text cleanup, word splitting, BPE and special-token framing as `tokenizers` components, so
the result is a fast transformers tokenizer that saves with `save_pretrained` and reloads with
`AutoTokenizer.from_pretrained`, with no vlmhub code needed at load time.

Parity with `clip.tokenize(texts, context_length=77, truncate=True)` is exact for ordinary text.
Cleanup that OpenAI gets from `ftfy` and `html.unescape` is reproduced where it is cheap and plausible in
captions (NFC, curly quotes, ligatures, invisible control characters, a few named entities, final sigma);
mojibake repair, full-width and half-width forms, C1 controls and other entities are not.
"""

from __future__ import annotations

import gzip
import os
from importlib import resources

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# OpenAI budgeted 49152 ids as 256 bytes + merges + 2 special tokens, then added the 256 end-of-word
# bytes on top, so the file's first 48894 merges are used and the vocabulary has 49408 entries.
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2

# Word pieces: English contractions, runs of letters, single digits (so numbers never merge), runs of
# everything else. Whitespace matches nothing and is dropped. Special tokens are matched earlier, as
# added tokens, so they need no alternative here.
_WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"

# ftfy (run by OpenAI before anything else) deletes invisible control characters (a leading byte-order
# mark is the usual one), straightens typographic quotes and splits Latin ligatures.
_CONTROL_CHARS = r"[\x00-\x08\x0B\x0E-\x1F\x7F\x{206A}-\x{206F}\x{FEFF}\x{FFF9}-\x{FFFC}]"
_SINGLE_QUOTES = "[\u02bc\u2018-\u201b]"
_DOUBLE_QUOTES = "[\u201c-\u201f]"
_LIGATURES = {
    **{"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"},  # typographic
    **{"Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž"},
    **{"Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj"},  # Dutch, Serbo-Croatian digraphs
}

# Python's str.lower() writes a word-final capital sigma as "ς"; the Lowercase normalizer maps every
# "Σ" to "σ". Approximating "word-final" as "after a letter and not before one" covers Greek text.
_FINAL_SIGMA = r"(?<=\p{L})Σ(?!\p{L})"

# OpenAI calls html.unescape twice. We cover the entities that occur in scraped captions; `&amp;` goes
# last in each pass so that one pass turns "&amp;lt;" into "&lt;", as html.unescape does.
_HTML_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'", "&apos;": "'", "&nbsp;": "\xa0"}
_HTML_PASSES = 2


def clip_bpe_vocab_path() -> str:
    """Path of the `bpe_simple_vocab_16e6.txt.gz` shipped as vlmhub package data."""
    return str(resources.files("vlmhub.processing") / "assets" / "bpe_simple_vocab_16e6.txt.gz")


def byte_alphabet() -> list[str]:
    """The 256 printable characters that stand for bytes, in OpenAI's id order.

    Bytes that are already printable and not whitespace stand for themselves; the other 68 are given the
    code points from U+0100 on, in byte order. `pre_tokenizers.ByteLevel` uses the same table.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    rest = sorted(set(range(256)) - set(printable))
    return [chr(b) for b in printable] + [chr(0x100 + i) for i in range(len(rest))]


def _read_vocab_text(vocab_file: str) -> str:
    """The text of a merges file, gzipped or not."""
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"CLIP BPE vocabulary file not found: {vocab_file!r}")
    with open(vocab_file, "rb") as f:
        raw = f.read()
    try:
        # Sniff the gzip magic rather than trust the extension: both forms are in circulation.
        return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"CLIP BPE vocabulary file {vocab_file!r} is corrupt: {err}") from err


def read_clip_merges(vocab_file: str) -> list[tuple[str, str]]:
    """The merges CLIP uses from a `bpe_simple_vocab_16e6.txt(.gz)` file, best-ranked first."""
    lines = _read_vocab_text(vocab_file).split("\n")[1 : NUM_MERGES + 1]  # line 0 is a "#version" header
    merges = [tuple(line.split()) for line in lines]
    if len(merges) < NUM_MERGES:
        problem = f"only {len(merges)} merge lines"
    else:
        bad = [i for i, merge in enumerate(merges) if len(merge) != 2]
        problem = f"line {bad[0] + 2} is not two symbols" if bad else None  # +2: header, 1-based
    if problem:
        raise ValueError(
            f"CLIP BPE vocabulary file {vocab_file!r} is malformed ({problem}); expected a header line "
            f"and at least {NUM_MERGES} lines of two space-separated symbols"
        )
    return merges


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token → id, laid out as OpenAI does: bytes, bytes ending a word, merge results, specials."""
    alphabet = byte_alphabet()
    tokens = alphabet + [c + END_OF_WORD for c in alphabet] + ["".join(m) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:  # a repeated merge result would silently shift every later id
        raise ValueError(f"expected {VOCAB_SIZE} distinct CLIP tokens, got {len(vocab)}")
    return vocab


def _clip_normalizer() -> normalizers.Normalizer:
    """OpenAI's text cleanup: ftfy's common fixes, html unescape, whitespace collapse, strip, lower."""
    steps = [
        normalizers.NFC(),
        *(normalizers.Replace(lig, plain) for lig, plain in _LIGATURES.items()),
        # After the ligatures, as in ftfy: "ŉ" becomes "ʼn" and then "'n".
        normalizers.Replace(Regex(_SINGLE_QUOTES), "'"),
        normalizers.Replace(Regex(_DOUBLE_QUOTES), '"'),
        normalizers.Replace(Regex(_CONTROL_CHARS), ""),
    ]
    for _ in range(_HTML_PASSES):
        steps += [normalizers.Replace(entity, char) for entity, char in _HTML_ENTITIES.items()]
        steps.append(normalizers.Replace("&amp;", "&"))
    steps += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    steps += [normalizers.Replace(Regex(_FINAL_SIGMA), "ς"), normalizers.Lowercase()]
    return normalizers.Sequence(steps)


def _clip_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """The `tokenizers` pipeline: cleanup → word split → bytes → BPE → <|startoftext|> … <|endoftext|>."""
    backend = Tokenizer(BPE(vocab, merges, unk_token=EOS_TOKEN, end_of_word_suffix=END_OF_WORD))
    backend.normalizer = _clip_normalizer()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # invert=True keeps the matches as the words and drops what lies between them (whitespace).
            pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="removed", invert=True),
            # The words are already split; only map bytes to the printable alphabet.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # Bytes back to text, each end-of-word marker becomes a space, and the last one is dropped.
    backend.decoder = decoders.Sequence(
        [decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " "), decoders.Strip(" ", 0, 1)]
    )
    # A template (not a hand-set flag) so the framing is saved in tokenizer.json; truncation then
    # shortens only $A and the end token stays last, as in clip.tokenize(truncate=True).
    specials = [(BOS_TOKEN, vocab[BOS_TOKEN]), (EOS_TOKEN, vocab[EOS_TOKEN])]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1",
        special_tokens=specials,
    )
    return backend


def build_clip_tokenizer(
    vocab_file: str | None = None,
    *,
    model_max_length: int = 77,
    pad_token: str = EOS_TOKEN,
) -> PreTrainedTokenizerFast:
    """A fast tokenizer equivalent to OpenAI CLIP's `clip.tokenize`.

    `tok(texts, padding="max_length", truncation=True, max_length=77)` gives the ids of
    `clip.tokenize(texts, context_length=77, truncate=True)` up to the padding. OpenAI pads with id 0,
    which is the ordinary token "!"; transformers' hub CLIP tokenizers pad with <|endoftext|> (49407), and
    so do we by default. Both are harmless to CLIP, which pools at the first <|endoftext|>. `pad_token`
    cannot be "!" (or any other ordinary vocabulary entry): transformers registers the pad token as a
    special token and would then cut it out of texts, turning "!!" (id 748) into two id-0 tokens. Use
    `clip_tokenize` for OpenAI's exact zero-padded tensor.

    `save_pretrained` writes the whole pipeline to tokenizer.json and `AutoTokenizer.from_pretrained` reloads
    it as a plain `TokenizersBackend`. Loading it as transformers' `CLIPTokenizer` would instead rebuild that
    class's own cleanup, which lacks the ftfy and html steps.

    Args:
        vocab_file: OpenAI's `bpe_simple_vocab_16e6.txt.gz` or its uncompressed .txt; the copy shipped with
            vlmhub when None.
        model_max_length: context length the tokenizer truncates to by default.
        pad_token: <|endoftext|>, <|startoftext|>, or a new token (which is appended to the vocabulary).
    """
    vocab_file = vocab_file or clip_bpe_vocab_path()
    merges = read_clip_merges(vocab_file)
    vocab = clip_vocab(merges)
    if pad_token in vocab and pad_token not in (BOS_TOKEN, EOS_TOKEN):
        raise ValueError(
            f"pad_token {pad_token!r} is an ordinary CLIP token; as a special token it would be cut out of "
            "texts and change their ids. Pad with <|endoftext|>, or use clip_tokenize() for OpenAI's "
            "zero padding."
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=_clip_backend(vocab, merges),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def clip_tokenize(
    tokenizer: PreTrainedTokenizerFast, texts: str | list[str], context_length: int = 77
) -> torch.LongTensor:
    """`clip.tokenize(texts, context_length, truncate=True)`: zero-padded ids of shape (B, context_length)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt"
    )
    # OpenAI fills the tail with id 0 ("!") whatever the tokenizer's pad token is.
    return enc["input_ids"].masked_fill(enc["attention_mask"] == 0, 0)
