"""The run configuration: typed dataclasses that own their defaults and help text (schema), loading from
YAML with dotted overrides and validation (load), and the generated docs reference (reference)."""

from sfedlora.config.load import (
    CONFIG_DIR,
    DEFAULT,
    builtin_configs,
    config_from_dict,
    config_path,
    dotted,
    load_config,
    not_results,
    parse_override,
    parse_value,
    read_yaml,
    same_value,
    to_dict,
    validate,
    written_only,
)
from sfedlora.config.schema import (
    DataConfig,
    EvalConfig,
    FedConfig,
    LoraConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)

__all__ = ["CONFIG_DIR", "DEFAULT", "DataConfig", "EvalConfig", "FedConfig", "LoraConfig", "ModelConfig", "RunConfig",
           "TrainConfig", "builtin_configs", "config_from_dict", "config_path", "dotted", "load_config",
           "not_results", "parse_override", "parse_value", "same_value", "read_yaml", "to_dict", "validate",
           "written_only"]
