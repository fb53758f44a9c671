"""``python -m tlx.backbones [PATTERN]`` lists the backbones tlx can build (timm: architectures and
their pretrained tags, ``'timm:convnext_tiny.*'``);
``python -m tlx.backbones --available [--no-speed]`` those that load here with no network."""

import argparse

from tlx.backbones import list_backbones

parser = argparse.ArgumentParser(prog="python -m tlx.backbones")
parser.add_argument("pattern", nargs="?", default="*", help="glob over source:name, e.g. 'timm:resnet*'")
parser.add_argument("--available", action="store_true",
                    help="only what loads with no network, with parameters, input size, top-1 and img/s")
parser.add_argument("--no-speed", action="store_true", help="with --available: skip the img/s measurement")
args = parser.parse_args()
if args.available:
    from tlx.backbones.available import available_backbones, format_available

    print(format_available(available_backbones(measure_speed=not args.no_speed)))
    print("img/s: fp32, batch 8, this machine's current load; top-1: ImageNet-1k as the weights' source "
          "states it ('-': not stated). Any local file loads too: model.weights_path=FILE.")
else:
    for name in list_backbones(args.pattern):
        print(name)
