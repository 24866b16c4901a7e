"""Models by name. A builder is `fn(in_channels, num_classes, **recipe_kwargs) -> nn.Module`."""
from cnnlab.models.registry import MODELS, build_model
from cnnlab.models import small, stacked, tv  # noqa: F401  (registration)

__all__ = ["MODELS", "build_model"]
