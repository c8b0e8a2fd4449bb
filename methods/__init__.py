"""The builtin temporal-aggregation methods, one concept per module (an alignment, a fusion, an
aggregator or a helper of theirs).

Importing this package imports every module in it, so a new method file registers its parts in
``harness.aggregation.REGISTRY`` without a second edit. The registry imports the package through the
``vodbench.methods`` entry point declared in ``pyproject.toml``.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
