"""``python -m tlx.backbones [PATTERN]`` lists the backbones tlx can build (timm: architectures and
their pretrained tags, ``'timm:convnext_tiny.*'``)."""

import sys

from tlx.backbones import list_backbones

for name in list_backbones(sys.argv[1] if len(sys.argv) > 1 else "*"):
    print(name)
