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
    parser.add_argument("--num-attention-heads", type=int, help="timm-vit .pth only: the head count it does not store")
    parser.add_argument("--vision-tower", help="llava only: the CLIP tower folder its mm_vision_tower names")
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("num_attention_heads", args.num_attention_heads), ("vision_tower", args.vision_tower)) if v}
    try:
        convert(args.source, args.input, args.output, overwrite=args.overwrite, **options)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"vlmhub-convert: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
