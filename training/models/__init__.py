"""CNN families. Importing this package registers every builder."""

# Model families: importing each module registers its builders.
from training.models import (  # noqa: F401
    alexnet,
    backbones,
    generic,
    googlenet,
    lenet,
    mini_xception,
    vgg,
)
from training.models.base import ConvNet
from training.models.registry import get_model, list_models, register_model

__all__ = ["ConvNet", "get_model", "list_models", "register_model"]
