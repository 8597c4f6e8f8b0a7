"""The array coordinator: one :class:`~pimega.runtime.NodeControl` over the IOCs of an
array's module nodes, driven over Channel Access (``pimega-array`` serves it)."""

from .config import ArrayConfig, ModuleNode, default_config, load_config
from .link import ModuleError, ModuleLost
from .node import ArrayNode

__all__ = [
    "ArrayConfig",
    "ArrayNode",
    "ModuleError",
    "ModuleLost",
    "ModuleNode",
    "default_config",
    "load_config",
]
