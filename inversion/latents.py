"""The latents file: one image's inversion as plain NumPy (no pickles), tied to its generator.

`save_latents` writes what `api.invert` found for one image (LATENTS_LAYOUT), `load_latents`
reads it back and, given a generator, refuses latents made with another one: a latent only
means something for the generator it was found with (`generator_fingerprint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import TYPE_CHECKING, NamedTuple, Optional

import jax
import numpy as np

if TYPE_CHECKING:
  from inversion import api

__all__ = [
    'LATENTS_FORMAT',
    'LATENTS_LAYOUT',
    'LatentRecord',
    'LatentsError',
    'generator_fingerprint',
    'load_latents',
    'save_latents',
]

LATENTS_FORMAT = 'stylegan-inversion-jax/latents'
LATENTS_VERSION = 1
LATENTS_LAYOUT = """\
latents/<name>.npz (numpy .npz, no pickles), one image per file:
  format          str   'stylegan-inversion-jax/latents'
  version         int   1
  name            str   image name (file stem)
  space           str   'z' | 'w' | 'wplus': the optimised parametrisation
  latent          f32   the optimised variable: z [z_dim] | w [w_dim] | ws [num_ws, w_dim]
  ws              f32   [num_ws, w_dim]: what the synthesis network consumes
  noise/<layer>   f32   [r, r] optimised unit-variance noise maps ('b8.conv0', ...); absent when
                        the generator's stored maps were used
  loss/<term>     f32   [steps] unweighted per-step loss of each term ('total' = weighted sum)
  generator_id    str   fingerprint of the generator (sha256 of its config and weights)
  generator_json  str   generator config and source, for humans
  config_json     str   the inversion config
  metrics_json    str   {'mse', 'psnr', 'ssim'[, 'lpips']} of the reconstruction
  status          str   'ok' or 'non-finite loss at step k (kept the last finite latent)'
SFE inversions (`inversion.sfe`) also hold:
  features        f32   [h, w, C] F_k, NHWC: the feature tensor injected at feature_layer
  feature_layer   str   the generator layer it replaces ('b64.conv1' = SFE's index 9)
  encoder_ws      f32   [num_ws, w_dim] the editing codes w_e (e4e's, or see encoder_source)
  encoder_source  str   'e4e' | 'domain-encoder' | 'inverter'
"""

REQUIRED_FIELDS = ('version', 'name', 'space', 'latent', 'ws', 'generator_id', 'generator_json',
                   'config_json', 'metrics_json', 'status')


class LatentsError(ValueError):
  """A latents file is unreadable, or does not belong to the generator it is used with."""


def generator_fingerprint(model) -> str:
  """'sha256:<16 hex>' of the generator's config and every variable (params and buffers)."""
  h = hashlib.sha256()
  cfg = dataclasses.asdict(model.g_config)
  h.update(json.dumps(cfg, sort_keys=True, default=list).encode())
  leaves = jax.tree_util.tree_flatten_with_path(model.g_vars)[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(leaf, np.float32))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return 'sha256:' + h.hexdigest()[:16]


def generator_json(model) -> str:
  """The generator's config, source and plain metadata as JSON, for humans."""
  return json.dumps({'config': dataclasses.asdict(model.g_config),
                     'source': model.metadata.get('source', ''),
                     'metadata': {k: v for k, v in model.metadata.items()
                                  if isinstance(v, (str, int, float, bool))}},
                    default=list)


@dataclasses.dataclass
class LatentRecord:
  """One image's latents as read from a latents .npz file (see LATENTS_LAYOUT)."""
  name: str
  space: str
  latent: np.ndarray
  ws: np.ndarray                   # [num_ws, w_dim]
  noise: dict[str, np.ndarray]
  losses: dict[str, np.ndarray]
  generator_id: str
  generator_json: str
  config_json: str
  metrics: dict[str, float]
  status: str
  path: str = ''
  features: Optional[np.ndarray] = None      # SFE: F_k [h, w, C]
  feature_layer: str = ''
  encoder_ws: Optional[np.ndarray] = None    # SFE: w_e [num_ws, w_dim]
  encoder_source: str = ''

  def check(self, generator_id: str, what: str = '') -> None:
    """Raises LatentsError unless these latents were made with `generator_id`."""
    if self.generator_id != generator_id:
      src = ''
      try:
        src = json.loads(self.generator_json).get('source', '')
      except ValueError:
        pass
      raise LatentsError(
          f'{what or self.path or self.name}: these latents were inverted with generator '
          f'{self.generator_id}{f" ({src})" if src else ""}, but the checkpoint given is '
          f'{generator_id}. Latents only mean something for the generator they were made '
          'with: pass that checkpoint (--checkpoint), or invert the image again with this one.')


def save_latents(path: str | os.PathLike, result: 'api.InversionResult', i: int,
                 generator) -> str:
  """Writes image i of a result as one latents file (LATENTS_LAYOUT); returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  arrays = {
      'format': np.asarray(LATENTS_FORMAT), 'version': np.asarray(LATENTS_VERSION),
      'name': np.asarray(result.names[i]), 'space': np.asarray(result.space),
      'latent': result.latents[i].astype(np.float32), 'ws': result.ws[i].astype(np.float32),
      'generator_id': np.asarray(result.generator_id or generator_fingerprint(generator)),
      'generator_json': np.asarray(generator_json(generator)),
      'config_json': np.asarray(result.config_json),
      'metrics_json': np.asarray(json.dumps({k: float(v[i]) for k, v in result.metrics.items()})),
      'status': np.asarray(result.status(i)),
  }
  if result.features is not None:
    arrays.update(features=result.features[i].astype(np.float32),
                  feature_layer=np.asarray(result.feature_layer),
                  encoder_ws=result.encoder_ws[i].astype(np.float32),
                  encoder_source=np.asarray(result.encoder_source))
  arrays.update({f'noise/{k}': v[i].astype(np.float32) for k, v in result.noise.items()})
  arrays.update({f'loss/{k}': v[i].astype(np.float32) for k, v in result.losses.items()})
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


class NpzFormat(NamedTuple):
  """What one of our .npz file kinds holds, for `read_npz` and its messages."""
  what: str               # 'latents', 'directions'
  name: str               # the "format" entry
  version: int            # the newest version this toolkit reads
  required: tuple         # fields every file has
  layout: str             # where its layout is documented
  where_made: str         # what writes such files
  remake: str             # the fix for a bad file


def read_npz(path: str, fmt: NpzFormat, error: type[Exception]) -> dict[str, np.ndarray]:
  """The arrays of a .npz file of kind `fmt` (no pickles); `error` naming the file and the fix
  if it is missing, unreadable, of another format or version, or lacks a required field."""
  if not os.path.isfile(path):
    raise error(f'{fmt.what} file {path} does not exist ({fmt.where_made})')
  try:
    with np.load(path, allow_pickle=False) as z:
      d = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile / pickle / OS errors of a corrupt file
    raise error(f'{path} is not a readable .npz {fmt.what} file ({type(e).__name__}: {e}); '
                f'{fmt.remake}') from None
  if str(d.get('format', '')) != fmt.name:
    raise error(f'{path} is not a {fmt.name} file (no "format" entry); it must be a {fmt.what} '
                f'file ({fmt.where_made})')
  missing = [k for k in fmt.required if k not in d]
  if missing:
    raise error(f'{path} lacks the field(s) {", ".join(missing)} of a {fmt.what} file (see '
                f'{fmt.layout}): it was cut short or edited; {fmt.remake}')
  if int(d['version']) > fmt.version:
    raise error(f'{path} has {fmt.what} format version {int(d["version"])}; this toolkit reads '
                f'up to {fmt.version}. Upgrade stylegan-inversion-jax.')
  return d


def load_latents(path: str | os.PathLike, generator=None) -> LatentRecord:
  """Reads a latents file; with `generator`, checks it was made with that generator.

  Raises:
    LatentsError: not a latents file (missing, corrupt, other format), a latent, ws or noise
      field with NaN / inf, or a generator mismatch (the message names both generators and the
      fix).
  """
  path = os.fspath(path)
  d = read_npz(path, NpzFormat(
      'latents', LATENTS_FORMAT, LATENTS_VERSION, tuple(REQUIRED_FIELDS),
      'inversion.latents.LATENTS_LAYOUT', '`python -m inversion invert` writes them to '
      '<out>/latents/<name>.npz', 'rerun the inversion that wrote it'), LatentsError)
  sfe_fields = [k for k in ('features', 'encoder_ws') if k in d]
  for field in ['latent', 'ws'] + sfe_fields + [k for k in d if k.startswith('noise/')]:
    if not np.isfinite(d[field]).all():
      raise LatentsError(f'{path}: field "{field}" holds NaN or infinite values, so it cannot '
                         'start an inversion or an edit (inversion never writes such a field: '
                         'the file was changed or damaged). Invert the image again.')
  rec = LatentRecord(
      name=str(d['name']), space=str(d['space']), latent=d['latent'], ws=d['ws'],
      noise={k[6:]: v for k, v in d.items() if k.startswith('noise/')},
      losses={k[5:]: v for k, v in d.items() if k.startswith('loss/')},
      generator_id=str(d['generator_id']), generator_json=str(d['generator_json']),
      config_json=str(d['config_json']), metrics=json.loads(str(d['metrics_json'])),
      status=str(d['status']), path=path, features=d.get('features'),
      feature_layer=str(d.get('feature_layer', '')), encoder_ws=d.get('encoder_ws'),
      encoder_source=str(d.get('encoder_source', '')))
  if generator is not None:
    rec.check(generator_fingerprint(generator) if not isinstance(generator, str) else generator,
              path)
    gc = getattr(generator, 'g_config', None)
    if gc is not None and rec.ws.shape != (gc.num_ws, gc.w_dim):
      raise LatentsError(f'{path}: ws {rec.ws.shape} do not fit this generator '
                         f'[{gc.num_ws}, {gc.w_dim}]')
  return rec
