"""Cursus's registry API (``cursus.registry``, seeds 000 and 001) on a nameplate Registry.

Switch by changing imports::

    # from cursus.registry import get_config_class_name, register_step, set_workspace_context
    # from cursus.registry.builder_registry import StepBuilderRegistry, get_global_registry
    # from cursus.registry.hybrid.manager import UnifiedRegistryManager
    from nameplate.compat.cursus import (get_config_class_name, register_step, set_workspace_context,
                                         StepBuilderRegistry, get_global_registry, UnifiedRegistryManager)

Functions name their workspace argument ``workspace_id`` as Cursus does (``workspace=``, nameplate's
spelling, works too) and take an optional ``registry=``; without one they use
:func:`default_registry` (nameplate's discovery).

Everything lives in the Registry: steps, builders (entries of the ``builder`` kind, their class's
import path as target), hyperparameters and aliases are rows every process sees at once; nothing here
holds registry data in memory. Workspaces are the Registry's layers. The
current workspace is per thread or asyncio task (a context variable), never process-wide.

Where Cursus reads an unknown workspace as core, so does this module (logged as a warning); the
Registry itself refuses unknown workspaces. A first registration in a workspace that does not exist
creates it over core.

Errors::

    NameplateError
    └── RegistryError                  Cursus's error (unresolvable_types, available_builders)
        ├── StepNotFoundError          also EntryNotFoundError and ValueError (Cursus's ValueError)
        ├── BuilderNotFoundError       also EntryNotFoundError: no builder for a step type or config
        ├── StepValidationError        also ValidationError (ValueError): strict mode refused
        └── BuilderClassError          also InvalidInputError (ValueError): not a class, does not import

    StepDefinitionWarning (UserWarning)   warn mode registered a name that breaks Cursus's rules
"""

from __future__ import annotations

from ._base import (
    CURSUS_LEGACY_ALIASES,
    ENV_CURSUS_WORKSPACE,
    BuilderClassError,
    BuilderNotFoundError,
    RegistryError,
    StepDefinitionWarning,
    StepNotFoundError,
    StepValidationError,
    default_registry,
    install_legacy_aliases,
)
from ._builders import (
    ENTRY_POINT_GROUP,
    StepBuilderRegistry,
    get_global_registry,
    list_global_step_types,
    register_global_builder,
)
from ._manager import (
    CoreStepRegistry,
    HybridRegistryManager,
    LocalStepRegistry,
    ResolutionContext,
    StepDefinition,
    StepResolutionResult,
    UnifiedRegistryManager,
    WorkspaceRegistryManager,
)
from ._steps import (
    BUILDER_STEP_NAMES,
    CONFIG_STEP_REGISTRY,
    LEGACY_ALIASES,
    SAGEMAKER_STEP_TYPES,
    SPEC_STEP_TYPES,
    STEP_NAMES,
    StepNamesRegistry,
    clear_workspace_context,
    debug_step_resolution,
    export_registry_to_json,
    get_all_hyperparameter_classes,
    get_all_step_names,
    get_available_steps,
    get_builder_step_name,
    get_builder_step_names,
    get_config_class_name,
    get_config_step_registry,
    get_hyperparameter_class_by_model_type,
    get_legacy_aliases,
    get_sagemaker_step_type,
    get_spec_step_type,
    get_spec_step_types,
    get_spec_type,
    get_step_names,
    get_workspace_context,
    naming_problems,
    register_step,
    register_steps,
    set_workspace_context,
    to_pascal_case,
    validate_hyperparameter_class,
    validate_registry_integrity,
    validate_step_name,
    workspace_context,
)

__all__ = [
    "BUILDER_STEP_NAMES",
    "CONFIG_STEP_REGISTRY",
    "CURSUS_LEGACY_ALIASES",
    "ENTRY_POINT_GROUP",
    "ENV_CURSUS_WORKSPACE",
    "LEGACY_ALIASES",
    "SAGEMAKER_STEP_TYPES",
    "SPEC_STEP_TYPES",
    "STEP_NAMES",
    "BuilderClassError",
    "BuilderNotFoundError",
    "CoreStepRegistry",
    "HybridRegistryManager",
    "LocalStepRegistry",
    "RegistryError",
    "ResolutionContext",
    "StepBuilderRegistry",
    "StepDefinition",
    "StepDefinitionWarning",
    "StepNamesRegistry",
    "StepNotFoundError",
    "StepResolutionResult",
    "StepValidationError",
    "UnifiedRegistryManager",
    "WorkspaceRegistryManager",
    "clear_workspace_context",
    "debug_step_resolution",
    "default_registry",
    "export_registry_to_json",
    "get_all_hyperparameter_classes",
    "get_all_step_names",
    "get_available_steps",
    "get_builder_step_name",
    "get_builder_step_names",
    "get_config_class_name",
    "get_config_step_registry",
    "get_global_registry",
    "get_hyperparameter_class_by_model_type",
    "get_legacy_aliases",
    "get_sagemaker_step_type",
    "get_spec_step_type",
    "get_spec_step_types",
    "get_spec_type",
    "get_step_names",
    "get_workspace_context",
    "install_legacy_aliases",
    "list_global_step_types",
    "naming_problems",
    "register_global_builder",
    "register_step",
    "register_steps",
    "set_workspace_context",
    "to_pascal_case",
    "validate_hyperparameter_class",
    "validate_registry_integrity",
    "validate_step_name",
    "workspace_context",
]
