"""CNN families. Importing this package registers every builder."""

from training.models.base import ConvNet
from training.models.registry import get_model, list_models, register_model

__all__ = ["ConvNet", "get_model", "list_models", "register_model"]
