"""StyleGAN2 inversion: the compiled engine, the API, editing, losses and metrics.

Public API (imported lazily, so `import inversion.images` stays light):

    invert, invert_folder, InversionResult, FolderResult, Inverter     (inversion.api)
    load_latents, save_latents, LatentRecord, LatentsError, demo       (inversion.api)
    Engine, EngineSpec, ImageTerm, LatentTerm, LatentContext, make_engine  (inversion.engine)
    interpolate, crossover, expression_transfer, morph, render         (inversion.editing)
"""

import importlib

_EXPORTS = {
    'invert': 'api', 'invert_folder': 'api', 'InversionResult': 'api', 'FolderResult': 'api',
    'Inverter': 'api', 'load_latents': 'api', 'save_latents': 'api', 'LatentRecord': 'api',
    'LatentsError': 'api', 'demo': 'api', 'LATENTS_LAYOUT': 'api',
    'Engine': 'engine', 'EngineSpec': 'engine', 'ImageTerm': 'engine', 'LatentTerm': 'engine',
    'LatentContext': 'engine', 'make_engine': 'engine',
    'interpolate': 'editing', 'crossover': 'editing', 'expression_transfer': 'editing',
    'morph': 'editing', 'render': 'editing',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'inversion.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + __all__)
