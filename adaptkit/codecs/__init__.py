"""Colour codecs: how a perception target becomes an RGB image, and how a generated image becomes a result.

DICEPTION answers every task by generating an RGB image, so a task is defined by its colour encoding. A
generated image is never exact: the VAE blurs it, the sampler shifts colours, a saved JPEG adds blocks. Each
codec therefore pairs an encoding chosen to survive that (colours far apart, grey values read back as a mean)
with a decoder that accepts *any* RGB image without failing, plus what training and evaluation need to treat
tasks generically: file loading and validation, the target of a flipped image (joint augmentation), the
resampling rule for the encoded image and a differentiable task loss in colour space.

Codecs are registered by name in ``CODECS``; ``build_codec(codec.reference, codec.to_config())`` rebuilds a
codec recorded beside an adapter, and ``package.module:ClassName`` names a user's own codec.

The package: ``base`` (the ``Codec`` contract, target records and registry), ``helpers`` (colour and array
helpers the codecs share) and one module per codec. Importing the package registers every built-in codec.
"""

from adaptkit.codecs.base import (
    CODECS,
    Codec,
    CodecError,
    Instances,
    Keypoints,
    TargetNote,
    as_image,
    build_codec,
    list_codecs,
    register_codec,
)
from adaptkit.codecs.binary_mask import BinaryMaskCodec
from adaptkit.codecs.depth import DepthCodec
from adaptkit.codecs.heatmap import HeatmapCodec
from adaptkit.codecs.helpers import _soft_dice, distinct_colors
from adaptkit.codecs.instances import InstancesCodec
from adaptkit.codecs.keypoints import COCO_KEYPOINTS, COCO_SKELETON, KeypointsCodec
from adaptkit.codecs.normals import NormalsCodec
from adaptkit.codecs.rgb import RGBCodec
from adaptkit.codecs.semantic import SemanticCodec

__all__ = [
    "COCO_KEYPOINTS",
    "COCO_SKELETON",
    "CODECS",
    "BinaryMaskCodec",
    "Codec",
    "CodecError",
    "DepthCodec",
    "HeatmapCodec",
    "Instances",
    "InstancesCodec",
    "Keypoints",
    "KeypointsCodec",
    "NormalsCodec",
    "RGBCodec",
    "SemanticCodec",
    "TargetNote",
    "_soft_dice",
    "as_image",
    "build_codec",
    "distinct_colors",
    "list_codecs",
    "register_codec",
]
