"""`python -m vlmhub.conversion <source> --input PATH --output DIR` (also installed as `vlmhub-convert`)."""

import argparse
import sys

from . import SOURCES, ConversionError, convert


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vlmhub-convert", description=__doc__)
    parser.add_argument("source", choices=sorted(SOURCES), help="format of the input checkpoint")
    parser.add_argument("--input", required=True, help="checkpoint file or saved model folder")
    parser.add_argument("--output", required=True, help="folder to write (loads with the Auto classes after `import vlmhub`)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--num-attention-heads", type=int, help="the head count the checkpoint does not store: timm-vit .pth; llama-vision's vision tower (default 16)")
    parser.add_argument("--vision-tower", help="llava only: the CLIP tower folder its mm_vision_tower names")
    parser.add_argument("--check", action="store_true",
                        help="run the original (transformers source) on a tiny random input; the card shows the max abs diff")
    parser.add_argument("--remote-code", action="store_true",
                        help="also write flat code files + auto_map: loads with trust_remote_code=True without vlmhub")
    parser.add_argument("--qformer-num-attention-heads", type=int,
                        help="lavis-blip2 / minigpt4: the Q-Former head count LAVIS does not store (default: width // 64)")
    args = parser.parse_args(argv)
    named = ("num_attention_heads", "vision_tower", "qformer_num_attention_heads")
    options = {k: getattr(args, k) for k in named if getattr(args, k)}
    try:
        convert(args.source, args.input, args.output, overwrite=args.overwrite, check=args.check,
                remote_code=args.remote_code, **options)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"vlmhub-convert: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
