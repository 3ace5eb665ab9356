"""StyleGAN2 inversion: the compiled engine, the API, editing, losses and metrics.

Public API (imported lazily, so `import inversion.images` stays light):

    invert, InversionResult, Inverter                                   (inversion.api)
    invert_folder, FolderResult                                         (inversion.jobs)
    load_latents, save_latents, LatentRecord, LatentsError              (inversion.latents)
    Engine, EngineSpec, ImageTerm, LatentTerm, LatentContext, make_engine  (inversion.engine)
    interpolate, crossover, expression_transfer, morph, render,
    diffuse, inpaint                                                    (inversion.editing)
    Directions, load_directions, save_directions, ganspace, interfacegan,
    defect_direction                                                    (inversion.directions)
    Encoder, load_encoder, save_encoder                                 (inversion.encoders)
"""

import importlib

_EXPORTS = {
    'invert': 'api', 'InversionResult': 'api', 'Inverter': 'api',
    'invert_folder': 'jobs', 'FolderResult': 'jobs',
    'load_latents': 'latents', 'save_latents': 'latents', 'LatentRecord': 'latents',
    'LatentsError': 'latents', 'LATENTS_LAYOUT': 'latents',
    'Engine': 'engine', 'EngineSpec': 'engine', 'ImageTerm': 'engine', 'LatentTerm': 'engine',
    'LatentContext': 'engine', 'make_engine': 'engine',
    'interpolate': 'editing', 'crossover': 'editing', 'expression_transfer': 'editing',
    'morph': 'editing', 'render': 'editing', 'diffuse': 'editing', 'inpaint': 'editing',
    'Directions': 'directions', 'load_directions': 'directions',
    'save_directions': 'directions', 'ganspace': 'directions', 'interfacegan': 'directions',
    'defect_direction': 'directions',
    'Encoder': 'encoders', 'load_encoder': 'encoders', 'save_encoder': 'encoders',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'inversion.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + __all__)
