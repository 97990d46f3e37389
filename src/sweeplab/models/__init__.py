"""Model zoo: ``build_model(cfg, input_shape, num_classes)``, ``check_architecture``."""
from sweeplab.models import zoo  # noqa: F401  (registers the models)
from sweeplab.models.registry import (
    MODELS,
    ModelConfig,
    PoolingModelConfig,
    build_model,
    check_architecture,
    check_model,
    count_parameters,
)

__all__ = [
    "MODELS",
    "ModelConfig",
    "PoolingModelConfig",
    "build_model",
    "check_architecture",
    "check_model",
    "count_parameters",
]
