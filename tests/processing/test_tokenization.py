"""CLIP BPE tokenizer: OpenAI's ids from the fixture, live parity with transformers, save/load, bad files."""

import gzip
import json

import pytest
import torch
from transformers import AutoTokenizer, CLIPTokenizer

from tests.conftest import FIXTURES
from vlmhub.processing.tokenization import (
    BOS_TOKEN,
    EOS_TOKEN,
    NUM_MERGES,
    VOCAB_SIZE,
    build_clip_tokenizer,
    clip_bpe_vocab_path,
    clip_tokenize,
)

BUNDLE = FIXTURES / "openai-clip-tokenizer"
VOCAB_GZ = BUNDLE / "bpe_simple_vocab_16e6.txt.gz"
CASES = json.loads((BUNDLE / "tokenized.json").read_text())["cases"]
CONTEXT = 77
BOS, EOS = 49406, 49407

# Beyond the fixture: numbers, punctuation runs, contractions, whitespace, special-token text, NFD accents,
# scripts without spaces, and truncation of a multi-token word sequence.
EXTRA_TEXTS = [
    "3.14159 1,000,000 -42 +7 1e10 ½ ²",
    "!!! ??? ... --- *** ### $$$ %%% @user #tag",
    "I'M YOU'RE WE'VE THEY'LL HE'D SHE'S can't o'clock rock'n'roll",
    "  tabs\tand\nnewlines\r\n  and   many    spaces ",
    "<|endoftext|> inside, and x<y but y>z",
    "cafe\u0301 (NFD) vs café",
    "中文 日本語 한국어 العربية",
    "hello world " * 40,
]

# Texts where transformers' CLIPTokenizer differs from OpenAI's: OpenAI runs ftfy.fix_text and html.unescape
# twice, and Python's str.lower() writes a word-final capital sigma as "ς". Transformers does neither. The ids
# and cleaned texts are OpenAI's, from clip-anytorch 2.6.0's SimpleTokenizer (ftfy 6.3.1), and we match them.
OPENAI_ONLY = [
    ("don’t “quote” me", "don't \"quote\" me", [BOS, 847, 713, 257, 4020, 257, 614, EOS]),  # curly quotes
    ("the ﬁnest ﬂour", "the finest flour", [BOS, 518, 7707, 18592, EOS]),  # ligatures
    ("AT&amp;T &lt;b&gt; &quot;hi&quot;", 'at&t <b> "hi"',
     [BOS, 536, 261, 339, 283, 321, 285, 257, 1883, 257, EOS]),
    ("salt&nbsp;&amp;&nbsp;pepper", "salt & pepper", [BOS, 6611, 261, 8253, EOS]),  # entity → nbsp → space
    ("\ufeffa bom", "a bom", [BOS, 320, 19469, EOS]),  # byte-order mark removed
    ("ΟΔΟΣ ΣΑΣ", "οδος σας",
     [BOS, 138, 123, 138, 112, 138, 123, 139, 480, 139, 225, 138, 109, 139, 480, EOS]),
]


@pytest.fixture(scope="module")
def tok():
    return build_clip_tokenizer()  # the vocabulary shipped as package data


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory, tok):
    """transformers' own CLIPTokenizer, from a vocab.json and merges.txt written like the hub's."""
    folder = tmp_path_factory.mktemp("hf-clip")
    (folder / "vocab.json").write_text(json.dumps(tok.get_vocab()))
    merges = gzip.decompress(VOCAB_GZ.read_bytes()).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    # The hub's merges.txt has a plain "#version" header; OpenAI's first line has a file name in front of it.
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder)


def encode(tokenizer, texts):
    return tokenizer(texts, truncation=True, max_length=CONTEXT)["input_ids"]


def test_shipped_vocabulary_is_openais():
    assert open(clip_bpe_vocab_path(), "rb").read() == VOCAB_GZ.read_bytes()


def test_vocabulary_layout(tok):
    vocab = tok.get_vocab()
    assert len(vocab) == tok.vocab_size == VOCAB_SIZE == 49408
    anchors = [vocab[t] for t in ("!", "!</w>", "i</w>", BOS_TOKEN, EOS_TOKEN)]
    assert anchors == [0, 256, 256 + 72, BOS, EOS]  # "!" is the first printable byte, "i" is 0x21 + 72
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (BOS, EOS, EOS, EOS)
    assert tok.model_max_length == CONTEXT


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["text"][:20] or "empty")
def test_matches_openai_fixture(tok, case):
    ids = encode(tok, case["text"])
    assert ids == case["input_ids"]
    assert ids[0] == BOS and ids[-1] == EOS
    assert (len(ids) == CONTEXT) == case["truncated"]


def test_padded_batch_matches_openai(tok):
    texts = [case["text"] for case in CASES]
    enc = tok(texts, padding="max_length", truncation=True, max_length=CONTEXT, return_tensors="pt")
    expected = torch.zeros(len(CASES), CONTEXT, dtype=torch.long)  # clip.tokenize pads with id 0
    for row, case in enumerate(CASES):
        n = len(case["input_ids"])
        expected[row, :n] = torch.tensor(case["input_ids"])
        assert enc["attention_mask"][row].sum() == n
        assert (enc["input_ids"][row, n:] == tok.pad_token_id).all()
    assert torch.equal(enc["input_ids"].masked_fill(enc["attention_mask"] == 0, 0), expected)
    assert torch.equal(clip_tokenize(tok, texts), expected)


def test_matches_transformers_clip_tokenizer(tok, hf_tok):
    texts = [case["text"] for case in CASES] + EXTRA_TEXTS
    assert encode(tok, texts) == encode(hf_tok, texts)


@pytest.mark.parametrize("text, cleaned, ids", OPENAI_ONLY, ids=[t[:12] for t, _, _ in OPENAI_ONLY])
def test_follows_openai_where_transformers_differs(tok, text, cleaned, ids):
    assert tok.backend_tokenizer.normalizer.normalize_str(text) == cleaned
    assert encode(tok, text) == ids


def test_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [case["text"] for case in CASES] + EXTRA_TEXTS + [text for text, _, _ in OPENAI_ONLY]
    kwargs = dict(padding="max_length", truncation=True, max_length=CONTEXT)
    assert reloaded(texts, **kwargs).data == tok(texts, **kwargs).data
    assert (reloaded.pad_token, reloaded.model_max_length) == (tok.pad_token, CONTEXT)


@pytest.mark.parametrize("text", ["a photo of a cat", "Two RED circles  left of\ta blue square", "it's 3 4"])
def test_decode_gives_cleaned_text(tok, text):
    ids = tok(text, padding="max_length", max_length=CONTEXT)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == " ".join(text.lower().split()).replace("'s", " 's")


def test_uncompressed_vocabulary_file(tok, tmp_path):
    txt = tmp_path / "bpe_simple_vocab_16e6.txt"
    txt.write_bytes(gzip.decompress(VOCAB_GZ.read_bytes()))
    texts = [case["text"] for case in CASES]
    assert encode(build_clip_tokenizer(str(txt)), texts) == encode(tok, texts)


def test_pad_token_choices():
    with pytest.raises(ValueError, match="ordinary CLIP token"):
        build_clip_tokenizer(pad_token="!")  # would turn "!!" (748) into two id-0 tokens
    padded = build_clip_tokenizer(pad_token="<pad>")
    assert padded.pad_token_id == VOCAB_SIZE
    assert encode(padded, "a dog!!") == [BOS, 320, 1929, 748, EOS]


def test_missing_vocabulary_file_is_named(tmp_path):
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(FileNotFoundError, match="not found.*nope.txt.gz"):
        build_clip_tokenizer(str(missing))


@pytest.mark.parametrize(
    "content",
    [
        gzip.compress(b"#version: 0.2\nh e\n")[:-8],  # truncated gzip stream
        b"\xff\xfe not utf-8",
        b"#version: 0.2\nh e\nth e\n",  # too few merges
        gzip.compress(("#version: 0.2\n" + "h e\n" * 100 + "one-symbol\n" + "h e\n" * NUM_MERGES).encode()),
    ],
    ids=["truncated-gzip", "not-utf8", "too-short", "bad-line"],
)
def test_corrupt_vocabulary_file_is_named(tmp_path, content):
    bad = tmp_path / "corrupt_vocab.txt.gz"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="corrupt_vocab.txt.gz"):
        build_clip_tokenizer(str(bad))
