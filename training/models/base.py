"""The interface every convserve CNN implements (after timm's models)."""

from __future__ import annotations

import torch
import torch.nn as nn


class ConvNet(nn.Module):
    """A CNN split into a reusable feature extractor and a replaceable classifier head.

    Subclasses set ``self.num_classes`` and ``self.default_input_size`` and implement
    :meth:`forward_features`, :meth:`forward_head` and :meth:`reset_classifier`.
    Fine-tuning builds on this split: parameters of :meth:`head_parameters` are "new", the rest
    are "reused".
    """

    num_classes: int
    in_channels: int
    input_size: tuple[int, int]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps (or pooled features) before the classifier."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits from the output of :meth:`forward_features`."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a new, randomly initialised one for ``num_classes``."""
        raise NotImplementedError

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classifier head (the "new" layers when fine-tuning)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
