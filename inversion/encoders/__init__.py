"""Encoders: networks that map an image to its latents in one forward pass.

Each encoder lives in its own module here, with its config in `configs/`, and plugs into the
same engine as optimisation, in the two ways encoder-based inversion uses it:
  - as the start: its latents are `init` for `api.invert` / `jobs.invert_folder` (config.init
    'encoder', or a list of `latents.LatentRecord`s or an array), so an encoder alone and
    encoder + optimisation are measured with the same code;
  - as a regulariser: an `engine.LatentTerm` (`domain_term`: idinvert's ||w - E(G(w))||^2
    keeps the code in the encoder's domain).

    from inversion import encoders
    enc = encoders.load_encoder('encoders/mine', model)   # checked against the generator
    ws = enc(images)                                       # [B, num_ws, w_dim]

The embedded model ships its trained domain-guided encoder (generators/embedded/encoder,
ENCODER_CARD.md): `default_encoder(model)` finds it for that model.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Optional

import jax.numpy as jnp

from inversion.encoders.domain import (Encoder, EncoderConfig, EncoderError, apply,
                                       load_encoder, save_encoder)

__all__ = ['EMBEDDED_ENCODER_DIR', 'Encoder', 'EncoderConfig', 'EncoderError', 'apply',
           'default_encoder', 'domain_term', 'load_encoder', 'resolve_encoder', 'save_encoder']

EMBEDDED_ENCODER_DIR = (pathlib.Path(__file__).resolve().parents[2] / 'generators' / 'embedded'
                        / 'encoder')


def default_encoder(model, generator_id: Optional[str] = None) -> Encoder:
  """The shipped encoder of the embedded model; an EncoderError for any other generator."""
  from inversion.encoders.domain import TRAIN_HINT  # pylint: disable=import-outside-toplevel
  if not (EMBEDDED_ENCODER_DIR / 'encoder.json').is_file():
    raise FileNotFoundError(f'the embedded encoder {EMBEDDED_ENCODER_DIR} is missing: restore it '
                            'with `git checkout -- generators/embedded/encoder` in a clone, or '
                            'pass --encoder (config.encoder.path).')
  encoder = load_encoder(EMBEDDED_ENCODER_DIR)
  try:
    encoder.check(model, 'the embedded encoder', generator_id)
  except EncoderError:
    raise EncoderError('no encoder given (--encoder, config.encoder.path), and the shipped one '
                       'belongs to the embedded model, not to this generator: pass an encoder '
                       f'trained for it, or {TRAIN_HINT}.') from None
  return encoder


def resolve_encoder(path: Optional[str], model, generator_id: Optional[str] = None) -> Encoder:
  """The encoder at `path` (checked against `model`, whose fingerprint `generator_id` is when
  known), or the default one where path is ''."""
  return (load_encoder(path, model, generator_id) if path
          else default_encoder(model, generator_id))


def _domain_distance(config: EncoderConfig, params, ctx) -> jnp.ndarray:
  """mean((w - E(G(w)))^2) over layers and dimensions, for one image (a LatentContext)."""
  recoded = apply(config, params, ctx.image[None])[0]
  return jnp.mean(jnp.square(ctx.ws - recoded))


def domain_term(config: EncoderConfig):
  """The LatentTerm function of in-domain inversion, fn(encoder variables, LatentContext):
  the gradient flows through E (its weights fixed, passed as term params) into w."""
  return functools.partial(_domain_distance, config)
