"""Foreign APIs on nameplate, one module per system whose users switch by changing an import.

Each module wraps a :class:`~nameplate.Registry` (no second storage, no process-global state):
``nameplate.compat.cursus`` has Cursus's registry API (step names, builders, hyperparameters, the
unified manager), ``nameplate.compat.madsci`` MADSci's ``LocalRegistryManager``. The Cursus functions
listed below are also importable from ``nameplate.compat`` itself, where they lived first.
"""

from __future__ import annotations

from .cursus import (
    default_registry,
    get_all_hyperparameter_classes,
    get_available_steps,
    get_builder_step_name,
    get_config_class_name,
    get_hyperparameter_class_by_model_type,
    get_spec_type,
    get_step_names,
    get_workspace_context,
    register_step,
    validate_step_name,
    workspace_context,
)

__all__ = [
    "default_registry",
    "get_all_hyperparameter_classes",
    "get_available_steps",
    "get_builder_step_name",
    "get_config_class_name",
    "get_hyperparameter_class_by_model_type",
    "get_spec_type",
    "get_step_names",
    "get_workspace_context",
    "register_step",
    "validate_step_name",
    "workspace_context",
]
