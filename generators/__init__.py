"""StyleGAN2 in JAX: exact networks, torch-free checkpoint loaders, training, embedded model.

    import generators
    model = generators.load("ffhq.pkl")        # NVlabs / rosinality / state dict / TF / native
    model = generators.load()                  # the embedded default model
    images = model.sample(range(8), psi=0.7)   # [8, H, W, C] in [-1, 1], NHWC
"""

from generators import xla_cpu  # first: sets XLA:CPU flags before JAX starts (see its docstring)
from generators import cache  # then: JAX's persistent compilation cache (see its docstring)
from generators.checkpoint import Model, load, load_embedded, save
from generators.networks import (Discriminator, DiscriminatorConfig, Generator, GeneratorConfig,
                                 mapping, synthesis)

COMPILATION_CACHE_DIR = cache.enable_compilation_cache()

__all__ = ["Discriminator", "DiscriminatorConfig", "Generator", "GeneratorConfig", "Model",
           "load", "load_embedded", "mapping", "save", "synthesis"]
