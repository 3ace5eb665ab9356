"""Editing with inverted latents (Image2StyleGAN, Abdal et al. 2019, section 4).

All edits work on W+ codes ws [num_ws, w_dim] (a W or Z inversion's ws are the broadcast or
mapped w, so they work too) and render with `render`:

  interpolate          morphing: ws(t) = (1 - t) ws_a + t ws_b, t = 0 .. 1 (paper 4.1);
  crossover            style transfer: layers [0, cutoff) from the content code, the rest from
                       the style code (paper 4.2: the first 9 of 18 layers at 1024 px);
  expression_transfer  w_a + strength (w_c - w_b): the change from b to c applied to a (4.3).

and, on in-domain inversion (In-Domain GAN Inversion, Zhu et al. 2020, section 4; configs/
idinvert.py, with the generator's encoder):

  diffuse              semantic diffusion (4.3): paste a region of one image into another and
                       in-domain invert the composite with the loss on the pasted region only,
                       so that the generator redraws the surroundings to fit it;
  inpaint              masked in-domain inversion: the loss sees the known pixels only, the
                       generator fills the rest in the encoder's domain.

Noise maps: where the latents carry optimised noise maps, interpolation blends them linearly,
crossover and expression transfer use the first (content / a) code's maps; otherwise the
generator's stored maps are used.

    from inversion import editing, latents
    a = latents.load_latents('out/latents/a.npz', model)
    b = latents.load_latents('out/latents/b.npz', model)
    frames = editing.morph(model, a, b, num=8)          # [8, H, W, C]
    editing.write_strip('morph.png', frames)

CLI: `python -m inversion edit {interpolate,crossover,expression} ...` writes the strips.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from generators import networks
from inversion import images as images_lib

if TYPE_CHECKING:
  from inversion import api

__all__ = [
    'crossover',
    'diffuse',
    'inpaint',
    'expression_transfer',
    'interpolate',
    'interpolate_noise',
    'morph',
    'render',
    'run_edit',
    'write_strip',
]

EDITS = ('interpolate', 'crossover', 'expression')


def _ws(ws) -> np.ndarray:
  ws = np.asarray(ws, np.float32)
  if ws.ndim != 2:
    raise ValueError(f'ws must be [num_ws, w_dim], got {ws.shape}')
  return ws


def interpolate(ws_a, ws_b, num: int = 8) -> np.ndarray:
  """Linear interpolation, t = linspace(0, 1, num): [num, num_ws, w_dim] (ends are a and b)."""
  a, b = _ws(ws_a), _ws(ws_b)
  if a.shape != b.shape:
    raise ValueError(f'ws_a {a.shape} and ws_b {b.shape} differ')
  if num < 2:
    raise ValueError(f'num must be >= 2, got {num}')
  t = np.linspace(0.0, 1.0, num, dtype=np.float32)[:, None, None]
  return (1 - t) * a + t * b


def interpolate_noise(noise_a: Mapping[str, np.ndarray], noise_b: Mapping[str, np.ndarray],
                      num: int = 8) -> dict[str, np.ndarray]:
  """Linear blend of two noise-map dicts: {layer: [num, r, r]}."""
  if set(noise_a) != set(noise_b):
    raise ValueError('the two latents have different noise layers')
  t = np.linspace(0.0, 1.0, num, dtype=np.float32)[:, None, None]
  return {k: (1 - t) * np.asarray(noise_a[k]) + t * np.asarray(noise_b[k]) for k in noise_a}


def crossover(ws_content, ws_style, cutoff: Optional[int] = None) -> np.ndarray:
  """Layers [0, cutoff) from the content code, [cutoff, num_ws) from the style code.

  cutoff None = num_ws // 2 (Image2StyleGAN: 9 of 18 at 1024 px). Early layers set coarse
  structure; late layers colour and fine texture. [num_ws, w_dim].
  """
  c, s = _ws(ws_content), _ws(ws_style)
  if c.shape != s.shape:
    raise ValueError(f'ws_content {c.shape} and ws_style {s.shape} differ')
  cutoff = c.shape[0] // 2 if cutoff is None else int(cutoff)
  if not 0 <= cutoff <= c.shape[0]:
    raise ValueError(f'cutoff must be in [0, {c.shape[0]}], got {cutoff}')
  return np.concatenate([c[:cutoff], s[cutoff:]])


def expression_transfer(ws_a, ws_b, ws_c, strength: float = 1.0) -> np.ndarray:
  """ws_a + strength * (ws_c - ws_b): the difference b -> c applied to a. [num_ws, w_dim]."""
  a, b, c = _ws(ws_a), _ws(ws_b), _ws(ws_c)
  if not a.shape == b.shape == c.shape:
    raise ValueError(f'ws shapes differ: {a.shape}, {b.shape}, {c.shape}')
  return a + strength * (c - b)


@functools.lru_cache(maxsize=8)
def _synthesis_fn(g_config):
  return jax.jit(lambda v, ws, noise: networks.synthesis(g_config, v, ws, 'const', noise))


def render(generator, ws, noise: Optional[Mapping[str, np.ndarray]] = None,
           batch_size: int = 8) -> np.ndarray:
  """ws [N, num_ws, w_dim] (or one [num_ws, w_dim]) -> images [N, H, W, C] in about [-1, 1].

  noise: {layer: [N, r, r] or [r, r]} maps replacing the stored ones (None = stored maps).
  Compiled once per generator (batches are padded to batch_size).
  """
  ws = np.asarray(ws, np.float32)
  if ws.ndim == 2:
    ws = ws[None]
  gc = generator.g_config
  if ws.shape[1:] != (gc.num_ws, gc.w_dim):
    raise ValueError(f'ws must be [N, {gc.num_ws}, {gc.w_dim}] for this generator, got '
                     f'{ws.shape}')
  n = len(ws)
  fn = _synthesis_fn(gc)
  out = []
  for s in range(0, n, batch_size):
    take = np.arange(s, s + batch_size).clip(max=n - 1)  # pad with the last code
    nz = None
    if noise:
      nz = {k: jnp.asarray(np.broadcast_to(v, (n,) + np.shape(v)[-2:])[take])
            for k, v in noise.items()}
    out.append(np.asarray(fn(generator.g_vars, jnp.asarray(ws[take]), nz)))
  return np.concatenate(out)[:n]


def morph(generator, a, b, num: int = 8) -> np.ndarray:
  """Frames between two `LatentRecord`s (or ws arrays): [num, H, W, C]."""
  ws_a, ws_b = getattr(a, 'ws', a), getattr(b, 'ws', b)
  na, nb = getattr(a, 'noise', None), getattr(b, 'noise', None)
  noise = interpolate_noise(na, nb, num) if na and nb else None
  return render(generator, interpolate(ws_a, ws_b, num), noise)


def write_strip(path: str | os.PathLike, frames: Sequence[np.ndarray] | np.ndarray,
                mask: str = 'drop') -> str:
  """Frames [N, H, W, C] in [-1, 1] -> one row PNG.

  mask: for RGB + defect-mask generators, 'drop' (default: RGB only; ordinary inversion leaves
  the mask channel unconstrained) or 'overlay' (paint the generated mask over the RGB).
  """
  grid = images_lib.image_grid(np.asarray(frames), rows=1, mask=mask)
  images_lib.save_image(os.fspath(path), grid)
  return os.fspath(path)


def run_edit(kind: str, generator, latents: Sequence[str | os.PathLike], out: str | os.PathLike,
             *, num: int = 8, cutoff: Optional[int] = None, strength: float = 1.0) -> str:
  """The `python -m inversion edit` commands: load latents files (checked against the
  generator), edit, write a strip PNG, return its path.

  interpolate  latents (a, b)        -> a, frames ..., b (num frames, ends included)
  crossover    latents (content, style) -> content | style | mixed
  expression   latents (a, b, c)     -> a | b | c | a + (c - b)
  """
  from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
  need = {'interpolate': 2, 'crossover': 2, 'expression': 3}
  if kind not in need:
    raise ValueError(f'edit must be one of {EDITS}, got {kind!r}')
  if len(latents) != need[kind]:
    raise ValueError(f'{kind} needs {need[kind]} latents files, got {len(latents)}')
  recs = [latents_lib.load_latents(p, generator) for p in latents]
  if kind == 'interpolate':
    frames = morph(generator, recs[0], recs[1], num)
  elif kind == 'crossover':
    content, style = recs
    mixed = crossover(content.ws, style.ws, cutoff)
    ws = np.stack([content.ws, style.ws, mixed])
    frames = _render_each(generator, ws, [content, style, content])
  else:
    a, b, c = recs
    edited = expression_transfer(a.ws, b.ws, c.ws, strength)
    frames = _render_each(generator, np.stack([a.ws, b.ws, c.ws, edited]), [a, b, c, a])
  return write_strip(out, frames)


def _region(mask, shape) -> np.ndarray:
  """A [H, W, 1] float mask in [0, 1] from [H, W] / [H, W, 1] (1 = the region)."""
  m = np.asarray(mask, np.float32)
  m = m[..., None] if m.ndim == 2 else m
  if m.shape != tuple(shape[:2]) + (1,):
    raise ValueError(f'the mask must be [{shape[0]}, {shape[1]}] or [{shape[0]}, {shape[1]}, 1], '
                     f'got {np.shape(mask)}')
  if m.min() < 0 or m.max() > 1:
    raise ValueError(f'mask values must lie in [0, 1], got [{m.min()}, {m.max()}]')
  if not m.max() > 0:
    raise ValueError('the mask marks no pixel (all 0): white (1) marks the region')
  return m


def diffuse(generator, context, source, region, config='idinvert', *, encoder=None,
            overrides: Sequence[str] = ()) -> tuple[np.ndarray, 'api.InversionResult']:
  """Semantic diffusion: `source`'s pixels inside `region` pasted into `context` (images
  [H, W, C] in [-1, 1], region [H, W(, 1)], 1 = pasted), then in-domain inverted with the loss
  on the region only. Returns (the composite, the inversion: its reconstruction is the blend)."""
  from inversion import api  # pylint: disable=import-outside-toplevel
  context, source = np.asarray(context, np.float32), np.asarray(source, np.float32)
  if context.shape != source.shape:
    raise ValueError(f'context {context.shape} and source {source.shape} differ in shape')
  m = _region(region, context.shape)
  composite = context * (1 - m) + source * m
  result = api.invert(composite[None], generator, api.as_config(config, overrides), mask=m,
                      encoder=encoder, progress=False)
  return composite, result


def inpaint(generator, image, known, config='idinvert', *, encoder=None,
            overrides: Sequence[str] = ()) -> 'api.InversionResult':
  """Masked in-domain inversion of `image` [H, W, C]: `known` [H, W(, 1)] is 1 where the pixels
  are known; the reconstruction fills the rest."""
  from inversion import api  # pylint: disable=import-outside-toplevel
  image = np.asarray(image, np.float32)
  m = _region(known, image.shape)
  return api.invert(image[None], generator, api.as_config(config, overrides), mask=m,
                    encoder=encoder, progress=False)


def _render_each(generator, ws, noise_from) -> np.ndarray:
  """Renders ws[i] with the noise maps of record noise_from[i] (stored maps where none)."""
  return np.concatenate([render(generator, w, r.noise or None) for w, r in zip(ws, noise_from)])
