"""A word-level tokenizer for the scenes vocabulary and LLaVA's chat template, built with `tokenizers`."""

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from . import scenes

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
TEMPLATE_WORDS = ("a chat between curious user and an artificial intelligence assistant the gives helpful detailed "
                  "polite answers to user's questions user assistant describe image in detail what colour is how many "
                  "shapes are there far left of which on from right top bottom middle centre at shape yes no").split()


def vocabulary() -> list[str]:
    words = set(TEMPLATE_WORDS) | set(scenes.COLOURS) | set(scenes.SHAPES) | set(scenes.SIZES) | set(scenes.NUMBERS)
    words |= {s + "s" for s in scenes.SHAPES} | {"white", "there", "the", "it"}
    return SPECIAL + sorted(words) + list(".,:;?!'")


def build_tokenizer(extra_words: list[str] = (), wrap: bool = False) -> PreTrainedTokenizerFast:
    """Lower-cased words and punctuation, one id each; `<image>` is a special token. `wrap` adds <s> ... </s> around
    every text (for CLIP's text tower, which pools at the end token)."""
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocabulary() + list(extra_words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(r"[.,:;?!]"), behavior="isolated")])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if wrap:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast
