"""Edit directions in W+: one format for every latent edit, and the methods that find them.

A `Directions` holds K unit vectors [K, num_ws, w_dim] with a name and a scale each (the std of
codes along the direction), so that an edit reads `ws + strength * scale * vector` with the
strength in sigmas of the codes (`apply`). It is tied to its generator by the fingerprint
(`inversion.latents.generator_fingerprint`), like a latents file.

  ganspace        GANSpace (Haerkoenen et al. 2020): PCA of w = mapping(z) over sampled z; the
                  principal axes, broadcast over the layers ('pc0', 'pc1', ...).
  interfacegan    InterFaceGAN (Shen et al. 2020): the unit normal of a linear boundary between
                  labelled codes (an L2-regularised logistic regression), toward label True.
  defect_direction  InterFaceGAN on sampled codes of an RGB + defect-mask generator, labelled
                  by whether the generated mask holds a defect pixel ('defect').
  given           vectors the user already has (`given`, `read_direction_file`).

`read_direction_file` reads the official files as they are, with method 'given' and a scale
that keeps the official strength: `apply(ws, d, s)` does what the official code does for degree
s (v: the file's array; V: v in W+, broadcast over the layers or reshaped):

  file  what (from)                            shape                     apply(ws, d, s)
  .npz  ours (`save_directions`)               DIRECTIONS_LAYOUT         as saved
  .npy  InterFaceGAN boundary (genforce)       [w_dim] or [1, w_dim]     ws + s * V
  .npy  W+ boundary (SFE editings/bound)       [num_ws, w_dim] or        ws + s * V
                                               [1, num_ws * w_dim]
  .pt   tensor (SFE interfacegan_directions)   one of the .npy shapes    ws + s / 2 * V
  .pt   GANSpace PCA (SFE ganspace_pca)        {'comp': [K, 1, w_dim],   ws + s * std_i * comp_i
                                                'std': [K],              on every layer ('pc<i>')
                                                'mean': [1, w_dim]}      or [start, end) (named)

  - The named GANSpace edits are SFE's FFHQ ones (SFE_GANSPACE_EDITS, 'eye_openness', ...).
    SFE sets a coordinate rather than adding: layers [start, end) get layer 0's coordinate
    along comp_i moved to p stds from the PCA mean (power p, absolute; `editings/ganspace.py`).
    Here s is relative (0 = no edit, the GANSpace paper's convention); `ganspace_strength(ws,
    d, name, p)` is the s that reproduces SFE's power p on the code ws exactly.
  - SFE halves the degree of its InterFaceGAN tensors; e4e, which ships the same files, does
    not: for e4e's factor f pass s = 2 f.
  - genforce's `linear_interpolate` adds s * v to W+ codes (as here), but moves a single W code
    to distance s from the boundary: for that, pass s - w . v.
  - Official files carry no generator fingerprint. They are made for FFHQ 1024 px config-F
    StyleGAN2 (num_ws 18, w_dim 512); only the shape is checked, the generator is the user's
    call (recorded in info).

    from inversion import directions, latents
    d = directions.ganspace(model, num_components=8)
    directions.save_directions('dirs.npz', d)
    rec = latents.load_latents('out/latents/a.npz', model)
    ws = directions.apply(rec.ws, d.direction('pc0'), [-2, 0, 2])   # [3, num_ws, w_dim]
    age = directions.read_direction_file('age.pt', model)          # SFE's InterFaceGAN age
    ws = directions.apply(rec.ws, age.direction('age'), 3.0)       # SFE's degree 3

CLI: `python -m inversion directions {ganspace,defect} --out dirs.npz` and
`python -m inversion edit direction --latents a.npz --directions dirs.npz --name pc0`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from generators import networks, torch_io
from inversion import latents as latents_lib

__all__ = [
    'DIRECTIONS_FORMAT',
    'Direction',
    'Directions',
    'DirectionsError',
    'METHODS',
    'SFE_GANSPACE_EDITS',
    'apply',
    'defect_direction',
    'defect_pixels',
    'direction_edit_ws',
    'ganspace',
    'ganspace_strength',
    'given',
    'interfacegan',
    'load_directions',
    'read_direction_file',
    'run_direction_edit',
    'run_directions_command',
    'sample_ws',
    'save_directions',
]

DIRECTIONS_FORMAT = 'stylegan-inversion-jax/directions'
DIRECTIONS_VERSION = 1
DIRECTIONS_LAYOUT = """\
directions .npz (numpy, no pickles):
  format     str   'stylegan-inversion-jax/directions'
  version    int   1
  vectors    f32   [K, num_ws, w_dim], each of unit norm over the whole block
  scales     f32   [K] std of codes along each vector (1 = unknown)
  meta_json  str   {"names": [K str], "method": str, "generator_id": str, "info": {...}}
"""
METHODS = ('ganspace', 'interfacegan', 'given')
COMMANDS = ('ganspace', 'defect')
MIN_PER_CLASS = 10  # interfacegan: fewest labelled codes of each class
UNIT_TOL = 1e-3     # |norm - 1| a stored vector may be off by (float32 rounding is ~1e-7)


class DirectionsError(latents_lib.LatentsError):
  """A directions file is unreadable, or does not belong to the generator it is used with."""


class Direction(NamedTuple):
  """One direction: what `apply` moves codes along."""
  name: str
  vector: np.ndarray  # [num_ws, w_dim], unit norm
  scale: float        # std of codes along `vector`: strength 1 moves a code by this much


@dataclasses.dataclass(frozen=True, eq=False)
class Directions:
  """K named edit directions of one generator (see the module docstring)."""
  vectors: np.ndarray       # [K, num_ws, w_dim] float32, each of unit norm over the block
  names: list[str]          # [K] unique names ('pc0', 'defect', ...)
  scales: np.ndarray        # [K] float32 std of codes along each vector (1 = unknown)
  method: str               # 'ganspace' | 'interfacegan' | 'given'
  generator_id: str         # `latents.generator_fingerprint` of the generator
  info: dict[str, Any] = dataclasses.field(default_factory=dict)  # JSON-able details

  def __post_init__(self):
    vectors = np.asarray(self.vectors, np.float32)
    names = [str(n) for n in self.names]
    scales = np.asarray(self.scales, np.float32).reshape(-1)
    if vectors.ndim != 3:
      raise ValueError(f'vectors must be [K, num_ws, w_dim], got {vectors.shape}')
    if len(names) != len(vectors) or len(scales) != len(vectors):
      raise ValueError(f'{len(vectors)} vectors need as many names and scales, got '
                       f'{len(names)} names and {len(scales)} scales')
    if len(set(names)) != len(names):
      raise ValueError(f'direction names must be unique, got {names}')
    if self.method not in METHODS:
      raise ValueError(f'method must be one of {METHODS}, got {self.method!r}')
    if not (np.isfinite(vectors).all() and np.isfinite(scales).all()):
      raise ValueError('vectors and scales must be finite')
    if (scales <= 0).any():
      raise ValueError(f'scales must be > 0, got {scales.tolist()}')
    norms = np.sqrt(np.square(vectors.astype(np.float64)).sum((1, 2)))
    if len(norms) and np.abs(norms - 1).max() > UNIT_TOL:
      raise ValueError(f'vectors must have unit norm over [num_ws, w_dim], got norms '
                       f'{np.round(norms, 4).tolist()} (`given` normalises)')
    object.__setattr__(self, 'vectors', vectors)
    object.__setattr__(self, 'names', names)
    object.__setattr__(self, 'scales', scales)
    object.__setattr__(self, 'info', dict(self.info))

  def __len__(self) -> int:
    return len(self.names)

  def index(self, name: str) -> int:
    """Position of direction `name`; a KeyError lists the known names."""
    if name not in self.names:
      raise KeyError(f'no direction {name!r}; this file has {", ".join(self.names) or "none"}')
    return self.names.index(name)

  def get(self, name: str) -> np.ndarray:
    """The unit vector [num_ws, w_dim] of direction `name`."""
    return self.vectors[self.index(name)]

  def direction(self, name: str) -> Direction:
    """Direction `name` with its scale, for `apply`."""
    i = self.index(name)
    return Direction(name, self.vectors[i], float(self.scales[i]))


# ----------------------------------------------------------------------------------------------
# The file.


def save_directions(path: str | os.PathLike, d: Directions) -> str:
  """Writes `d` as one .npz (DIRECTIONS_LAYOUT), atomically; returns the path."""
  path = os.fspath(path)
  try:
    meta = json.dumps({'names': d.names, 'method': d.method, 'generator_id': d.generator_id,
                       'info': d.info})
  except (TypeError, ValueError) as e:
    raise ValueError(f'Directions.info must be JSON-able (numbers, strings, lists, dicts): '
                     f'{e}') from None
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, format=np.asarray(DIRECTIONS_FORMAT), version=np.asarray(DIRECTIONS_VERSION),
           vectors=d.vectors, scales=d.scales, meta_json=np.asarray(meta))
  os.replace(tmp, path)
  return path


def load_directions(path: str | os.PathLike, model=None) -> Directions:
  """Reads a directions file; with `model` (or its fingerprint), checks it belongs to it.

  Raises:
    DirectionsError (a `latents.LatentsError`): a missing, corrupt or incomplete file, or one
      made for another generator (the message names both and the fix).
  """
  path = os.fspath(path)
  arrays = latents_lib.read_npz(path, latents_lib.NpzFormat(
      'directions', DIRECTIONS_FORMAT, DIRECTIONS_VERSION,
      ('version', 'vectors', 'scales', 'meta_json'), 'inversion.directions.DIRECTIONS_LAYOUT',
      '`python -m inversion directions {ganspace,defect} --out FILE` writes one',
      'make the directions again'), DirectionsError)
  try:
    meta = json.loads(str(arrays['meta_json']))
  except ValueError as e:
    raise DirectionsError(f'{path}: its meta_json field is not JSON ({e}); make the directions '
                          'again') from None
  missing = [k for k in ('names', 'method', 'generator_id') if k not in meta]
  if missing:
    raise DirectionsError(f'{path}: its meta_json lacks {", ".join(missing)}; make the '
                          'directions again')
  try:
    d = Directions(arrays['vectors'], meta['names'], arrays['scales'], meta['method'],
                   meta['generator_id'], meta.get('info', {}))
  except ValueError as e:
    raise DirectionsError(f'{path} holds invalid directions: {e}') from None
  if model is not None:
    check_generator(d, model, path)
  return d


def check_generator(d: Directions, model, what: str = 'these directions') -> None:
  """Raises DirectionsError unless `d` was made for `model` (a Model or its fingerprint)."""
  want = model if isinstance(model, str) else latents_lib.generator_fingerprint(model)
  if d.generator_id != want:
    raise DirectionsError(
        f'{what}: these directions were made with generator {d.generator_id}, but the '
        f'checkpoint given is {want}. Directions only mean something for the generator they '
        'were made with: pass that checkpoint (--checkpoint), or make directions for this '
        'generator (`python -m inversion directions {ganspace,defect} --checkpoint ...`).')
  gc = getattr(model, 'g_config', None)
  if gc is not None and d.vectors.shape[1:] != (gc.num_ws, gc.w_dim):
    raise DirectionsError(f'{what}: vectors {d.vectors.shape[1:]} do not fit this generator '
                          f'[{gc.num_ws}, {gc.w_dim}]')


# ----------------------------------------------------------------------------------------------
# Applying a direction.


def apply(ws, direction: Direction | np.ndarray, strength: float | Sequence[float]) -> np.ndarray:
  """ws + strength * scale * vector: moves codes `strength` sigmas along a direction.

  Args:
    ws: [num_ws, w_dim] or [N, num_ws, w_dim] codes.
    direction: a `Direction` (`Directions.direction(name)`), or a bare [num_ws, w_dim] vector
      (scale 1: strength in code units).
    strength: in sigmas of the codes along the direction (the std `scale` the method measured:
      strength 1 moves a code one std of the sampled/labelled codes). A float, or a sequence
      of S strengths for a leading axis.

  Returns:
    float32, ws's shape for a float strength, else [S, *ws.shape].
  """
  ws = np.asarray(ws, np.float32)
  vector = np.asarray(getattr(direction, 'vector', direction), np.float32)
  scale = float(getattr(direction, 'scale', 1.0))
  if ws.ndim not in (2, 3) or ws.shape[-2:] != vector.shape:
    raise ValueError(f'ws must be [num_ws, w_dim] or [N, num_ws, w_dim] with [num_ws, w_dim] = '
                     f'the direction\'s {vector.shape}, got {ws.shape}')
  s = np.asarray(strength, np.float32)
  if s.ndim > 1:
    raise ValueError(f'strength must be a float or a sequence of floats, got shape {s.shape}')
  s = s.reshape(s.shape + (1,) * ws.ndim)
  return (ws + s * np.float32(scale) * vector).astype(np.float32)


def given(vectors, names: Sequence[str], *, generator_id: str, num_ws: Optional[int] = None,
          scales=None, info: Optional[dict] = None) -> Directions:
  """Directions from vectors the user has: [K, w_dim] (broadcast over `num_ws` layers) or
  [K, num_ws, w_dim]; each normalised to unit norm. scales None = 1 (strength in code units)."""
  v = np.asarray(vectors, np.float64)
  if v.ndim == 2:
    if num_ws is None:
      raise ValueError('W vectors [K, w_dim] need num_ws (the generator\'s g_config.num_ws)')
    v = np.broadcast_to(v[:, None], (len(v), num_ws, v.shape[1]))
  if v.ndim != 3:
    raise ValueError(f'vectors must be [K, w_dim] or [K, num_ws, w_dim], got {v.shape}')
  norms = np.sqrt(np.square(v).sum((1, 2), keepdims=True))
  if (norms == 0).any():
    raise ValueError('a direction vector is all zero')
  scales = np.ones(len(v)) if scales is None else scales
  return Directions(v / norms, list(names), scales, 'given', generator_id, info or {})


# ----------------------------------------------------------------------------------------------
# Official direction files (InterFaceGAN, SFE, GANSpace).


OFFICIAL_GENERATOR = ('FFHQ 1024 px StyleGAN2 config-F (num_ws 18, w_dim 512), not checked: '
                      'the file carries no fingerprint')
SFE_INTERFACEGAN_FACTOR = 0.5  # SFE get_interface_gan_edits: w + degree / 2 * direction
# SFE editings/latent_editor.py, human_faces (for ffhq_pca.pt): name -> (component, first layer,
# end layer, SFE's power).
SFE_GANSPACE_EDITS = {
    'eye_openness': (54, 7, 8, 5.0),
    'trimmed_beard': (58, 7, 9, 7.0),
    'lipstick': (34, 10, 11, 20.0),
    'face_roundness': (37, 0, 5, 20.0),
    'nose_length': (51, 4, 5, -30.0),
    'eyebrow_thickness': (37, 8, 9, 20.0),
    'head_angle_up': (11, 1, 4, -10.5),
    'displeased': (36, 4, 7, 10.0),
}
PCA_KEYS = ('comp', 'std', 'mean')
PCA_UNIT_TOL = 1e-5  # |norm - 1| of a GANSpace component (float32 rounding is ~1e-7)


def read_direction_file(path: str | os.PathLike, generator, *, name: Optional[str] = None,
                        generator_id: Optional[str] = None) -> Directions:
  """Reads edit directions in any format of the module docstring's table, as they are.

  The scales keep the official strengths (`apply(ws, d, s)` = the official edit of degree s);
  info records the source file, its format and the strength convention. Official files carry
  no fingerprint: they are made for FFHQ 1024 px config-F StyleGAN2, and using them with
  another generator of the same shape is the user's responsibility (it is not refused).

  Args:
    path: .npz (ours), .npy (InterFaceGAN / SFE boundary) or .pt / .pth (SFE InterFaceGAN
      tensor, GANSpace PCA dict).
    generator: the generator the edits are for: a Model, or its W+ shape (num_ws, w_dim).
    name: the direction's name for a file of one vector (default: the file's stem); files
      that name their directions (.npz, GANSpace PCA) keep theirs.
    generator_id: the fingerprint recorded in official files' directions (default: the
      Model's; needed with a shape); .npz files are checked against it.

  Returns:
    Directions [K, num_ws, w_dim]: one for a vector file; 'pc0'.. and SFE's named edits for a
    GANSpace PCA dict.

  Raises:
    DirectionsError: a missing, unreadable or unknown file, or one whose shapes do not fit the
      generator (the message names the file, both shapes and the fix).
  """
  path = os.fspath(path)
  if isinstance(generator, tuple):
    (num_ws, w_dim), gen_id = generator, generator_id
    if gen_id is None:
      raise ValueError('with a W+ shape instead of a Model, pass generator_id= (the '
                       'fingerprint to record)')
  else:
    num_ws, w_dim = generator.g_config.num_ws, generator.g_config.w_dim
    gen_id = generator_id or latents_lib.generator_fingerprint(generator)
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npz':
    d = load_directions(path, gen_id if isinstance(generator, tuple) else generator)
    if d.vectors.shape[1:] != (num_ws, w_dim):
      raise DirectionsError(f'{path}: vectors {d.vectors.shape[1:]} do not fit this generator '
                            f'[{num_ws}, {w_dim}]')
    return d
  if ext not in ('.npy', '.pt', '.pth'):
    raise DirectionsError(f'{path}: unknown direction file type {ext!r}; expected .npz (ours), '
                          '.npy (InterFaceGAN / SFE boundary) or .pt (SFE InterFaceGAN tensor, '
                          'GANSpace PCA dict)')
  if not os.path.isfile(path):
    raise DirectionsError(f'direction file {path} does not exist')
  info = {'source': path, 'generator': OFFICIAL_GENERATOR}
  name = name or os.path.splitext(os.path.basename(path))[0]
  if ext == '.npy':
    v = _read_array(path, lambda: np.load(path, allow_pickle=False))
    return _vector_directions(path, v, (num_ws, w_dim), name, gen_id,
                              {**info, 'format': 'boundary-npy'}, factor=1.0)
  obj = _read_array(path, lambda: torch_io.load(path))
  if isinstance(obj, dict):
    return _ganspace_directions(path, obj, (num_ws, w_dim), gen_id, info)
  return _vector_directions(path, obj, (num_ws, w_dim), name, gen_id,
                            {**info, 'format': 'sfe-interfacegan-pt'},
                            factor=SFE_INTERFACEGAN_FACTOR)


def _read_array(path: str, read):
  """read() of an official file, a DirectionsError naming it if it fails."""
  try:
    return read()
  except Exception as e:  # numpy / zip / pickle errors of a corrupt file
    raise DirectionsError(f'{path} is not a readable direction file ({type(e).__name__}: '
                          f'{e}); download it again') from None


def _float_array(path: str, a, what: str) -> np.ndarray:
  """`a` as float64, a DirectionsError unless it is a finite numeric array."""
  if not (isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.number)):
    raise DirectionsError(f'{path}: {what} must be a numeric array, got '
                          f'{getattr(a, "dtype", type(a).__name__)}')
  if not np.isfinite(a).all():
    raise DirectionsError(f'{path}: {what} holds NaN or infinite values; download it again')
  return a.astype(np.float64)


def _misfit(path: str, what: str, shape, wplus: tuple[int, int], expected: str) -> str:
  """The message for a file whose shapes do not fit the generator."""
  return (f'{path}: {what} of shape {shape} does not fit this generator\'s W+ codes '
          f'[{wplus[0]}, {wplus[1]}] (expected {expected}). Official InterFaceGAN / SFE / '
          'GANSpace files are made for FFHQ 1024 px config-F StyleGAN2 [18, 512]: use them with '
          'such a generator, or make directions for this one (`python -m inversion directions '
          '...`).')


def _vector_directions(path: str, v, wplus: tuple[int, int], name: str, generator_id: str,
                       info: dict, *, factor: float) -> Directions:
  """One direction from a vector file v: the official edit is ws + degree * factor * V."""
  num_ws, w_dim = wplus
  v = _float_array(path, v, 'the direction')
  step = f'strength * {factor:g}' if factor != 1 else 'strength'
  if v.size == w_dim and v.shape[-1:] == (w_dim,):
    block = np.broadcast_to(v.reshape(1, w_dim), wplus)
    strength = f'ws + {step} * v on every layer'
  elif v.size == num_ws * w_dim and v.shape[-1] in (w_dim, num_ws * w_dim):
    block = v.reshape(wplus)
    strength = f'ws + {step} * v.reshape(num_ws, w_dim)'
  else:
    raise DirectionsError(_misfit(
        path, 'the direction', list(v.shape), wplus, f'[{w_dim}] or [1, {w_dim}] (one w, broadcast '
        f'over the layers), or [{num_ws}, {w_dim}] or [1, {num_ws * w_dim}] (a W+ direction)'))
  norm = float(np.sqrt(np.square(block).sum()))
  if norm == 0:
    raise DirectionsError(f'{path}: the direction is all zero')
  return given(block[None], [name], generator_id=generator_id, scales=[factor * norm],
               info={**info, 'file_shape': list(v.shape), 'strength': strength})


def _ganspace_directions(path: str, pca: dict, wplus: tuple[int, int], generator_id: str,
                         info: dict) -> Directions:
  """'pc<i>' on every layer and SFE's named edits from a GANSpace PCA dict (module docstring)."""
  num_ws, w_dim = wplus
  missing = [k for k in PCA_KEYS if k not in pca]
  if missing:
    raise DirectionsError(f'{path}: a .pt direction file must hold a tensor or a GANSpace PCA '
                          f'dict {PCA_KEYS}; this dict lacks {", ".join(missing)} (it has '
                          f'{", ".join(map(str, pca)) or "nothing"})')
  comp, std, mean = (_float_array(path, pca[k], f'its {k!r}') for k in PCA_KEYS)
  k, shapes = len(comp), [list(a.shape) for a in (comp, std, mean)]
  if comp.size != k * w_dim or std.shape != (k,) or mean.size != w_dim:
    raise DirectionsError(_misfit(
        path, 'the PCA (comp, std, mean)', shapes, wplus,
        f'comp [K, 1, {w_dim}], std [K], mean [1, {w_dim}]'))
  comp, mean = comp.reshape(k, w_dim), mean.reshape(w_dim)
  if np.abs(np.sqrt(np.square(comp).sum(1)) - 1).max() > PCA_UNIT_TOL or (std <= 0).any():
    raise DirectionsError(f'{path}: not a GANSpace PCA: its comp rows must have unit norm and '
                          'its std be > 0')
  # name -> (component, layers [start, end)); SFE's edits where their component and layers exist
  named = {n: e[:3] for n, e in SFE_GANSPACE_EDITS.items() if e[0] < k and e[2] <= num_ws}
  edits = {**named, **{f'pc{i}': (i, 0, num_ws) for i in range(k)}}
  vectors = np.zeros((len(edits), num_ws, w_dim))
  for row, (i, start, end) in zip(vectors, edits.values()):
    row[start:end] = comp[i]
  index = np.asarray([i for i, _, _ in edits.values()])
  info = {**info, 'format': 'ganspace-pca-pt', 'file_shape': shapes,
          'strength': 'ws + strength * std_i * comp_i on the layers [start, end); SFE\'s power '
                      'is absolute: ganspace_strength',
          'ganspace': {'component': index.tolist(),
                       'layers': [[start, end] for _, start, end in edits.values()],
                       'mean_coordinate': (comp[index] @ mean / std[index]).tolist()},
          'sfe_powers': {n: SFE_GANSPACE_EDITS[n][3] for n in named},
          'sfe_edits_left_out': sorted(set(SFE_GANSPACE_EDITS) - set(named))}
  return given(vectors, list(edits), generator_id=generator_id,
               scales=std[index] * np.sqrt(np.square(vectors).sum((1, 2))), info=info)


def ganspace_strength(ws, d: Directions, name: str,
                      power: float | Sequence[float]) -> np.ndarray:
  """The strength that makes `apply(ws, d.direction(name), strength)` SFE's GANSpace edit of
  `power` (`editings/ganspace.py` get_delta) on the one code ws [num_ws, w_dim].

  SFE moves the layers [start, end) by (power - c) * std * comp, where c = (ws[0] - mean) .
  comp / std is layer 0's coordinate along the component (in stds from the PCA mean): the power
  is the coordinate the edit goes to, not a step. This returns power - c ([S] for S powers).
  """
  g = d.info.get('ganspace')
  if g is None:
    raise ValueError(f'{name!r}: not a direction of a GANSpace PCA file (read_direction_file)')
  i = d.index(name)
  start, end = g['layers'][i]
  direction = d.direction(name)
  # vector[start] = comp / sqrt(n) and scale = std * sqrt(n), n = end - start (comp unit)
  c = (end - start) * float(np.asarray(ws, np.float64)[0] @ direction.vector[start]) \
      / direction.scale - g['mean_coordinate'][i]
  return np.asarray(power, np.float64) - c


# ----------------------------------------------------------------------------------------------
# Sampling codes.


@functools.lru_cache(maxsize=8)
def _mapping_fn(g_config):
  return jax.jit(lambda v, z, c: networks.mapping(g_config, v, z, c))


@functools.lru_cache(maxsize=8)
def _defect_count_fn(g_config):
  def count(v, ws):
    img = networks.synthesis(g_config, v, ws, 'const')  # [B, H, W, C]
    return jnp.sum(img[..., 3] > 0, axis=(1, 2))
  return jax.jit(count)


def _batched(fn, arrays: Sequence[Optional[np.ndarray]], batch_size: int) -> np.ndarray:
  """fn over leading-axis batches of `arrays`, the last one padded (one compile)."""
  n = len(arrays[0])
  b = max(1, min(batch_size, n))
  out = []
  for s in range(0, n, b):
    take = np.arange(s, s + b).clip(max=n - 1)
    out.append(np.asarray(fn(*[None if a is None else a[take] for a in arrays])))
  return np.concatenate(out)[:n]


def sample_ws(model, num_samples: int, seed: int = 0, batch_size: int = 1000) -> np.ndarray:
  """ws = mapping(z) [N, num_ws, w_dim] for z ~ N(0, I) from PRNGKey(seed), psi 1 (for a
  conditional generator with classes drawn uniformly)."""
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')
  gc = model.g_config
  kz, kc = jax.random.split(jax.random.PRNGKey(seed))
  z = np.asarray(jax.random.normal(kz, (num_samples, gc.z_dim)))
  c = None
  if gc.c_dim:
    c = np.asarray(jax.nn.one_hot(jax.random.randint(kc, (num_samples,), 0, gc.c_dim), gc.c_dim))
  fn = _mapping_fn(gc)
  return _batched(lambda zb, cb: fn(model.g_vars, zb, cb), [z, c], batch_size).astype(np.float32)


def defect_pixels(model, ws, batch_size: int = 256) -> np.ndarray:
  """[N] number of defect pixels (mask channel > 0) of the images of ws [N, num_ws, w_dim],
  rendered with the generator's stored noise maps."""
  _need_mask_channel(model)
  ws = np.asarray(ws, np.float32)
  fn = _defect_count_fn(model.g_config)
  return _batched(lambda b: fn(model.g_vars, b), [ws], batch_size).astype(np.int64)


def _need_mask_channel(model) -> None:
  c = model.g_config.img_channels
  if c != 4:
    raise ValueError(f'defect directions need an RGB + defect-mask generator (4 channels, the '
                     f'4th the mask); this one has {c}. For other attributes, label codes '
                     'yourself and call `interfacegan(codes, labels, name, generator_id=...)`.')


# ----------------------------------------------------------------------------------------------
# GANSpace.


def ganspace(model, num_components: int = 8, num_samples: int = 10_000, seed: int = 0,
             batch_size: int = 1000) -> Directions:
  """GANSpace (Haerkoenen et al. 2020, section 3.1): PCA of w = mapping(z) over sampled z.

  1. sample `num_samples` w (`sample_ws`); 2. centre them and take the SVD; 3. the top
  `num_components` right singular vectors, broadcast over all layers and normalised, are the
  directions 'pc0', 'pc1', ... (sign: the largest entry positive).

  scales: the std of the (layer-broadcast) codes along each unit W+ vector, sqrt(num_ws *
  eigenvalue): strength 1 moves every layer's w one std along the component. info:
  explained_variance_ratio, eigenvalues (of w), num_samples, seed.
  """
  gc = model.g_config
  if not 1 <= num_components <= min(gc.w_dim, num_samples):
    raise ValueError(f'num_components must be in [1, min(w_dim={gc.w_dim}, num_samples='
                     f'{num_samples})], got {num_components}')
  w = sample_ws(model, num_samples, seed, batch_size)[:, 0].astype(np.float64)  # [N, w_dim]
  w -= w.mean(0)
  _, sv, vt = np.linalg.svd(w, full_matrices=False)
  eig = sv ** 2 / max(num_samples - 1, 1)
  ratio = eig / eig.sum()
  comps = vt[:num_components]
  comps *= np.sign(comps[np.arange(num_components), np.abs(comps).argmax(1)])[:, None]
  vectors = np.broadcast_to(comps[:, None] / np.sqrt(gc.num_ws),
                            (num_components, gc.num_ws, gc.w_dim))
  info = {'explained_variance_ratio': ratio[:num_components].tolist(),
          'eigenvalues': eig[:num_components].tolist(), 'total_variance': float(eig.sum()),
          'num_samples': int(num_samples), 'seed': int(seed), 'space': 'w', 'psi': 1.0}
  return Directions(vectors, [f'pc{i}' for i in range(num_components)],
                    np.sqrt(eig[:num_components] * gc.num_ws), 'ganspace',
                    latents_lib.generator_fingerprint(model), info)


# ----------------------------------------------------------------------------------------------
# InterFaceGAN.


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_steps: int = 100):
  """L2-regularised logistic regression by damped Newton in the span of centred x [N, D].

  The L2-regularised optimum lies in the row space of x (the loss gradients do), so Newton runs
  on the coordinates x V_r in an orthonormal basis V_r of that space (from the smaller Gram
  matrix): exact, and cheap when codes are few or layer-broadcast (rank <= w_dim).
  Objective: mean log(1 + exp(-(2y - 1)(x.beta + b))) + l2 / 2 * s2 * |beta|^2, where s2 is
  the mean per-feature variance (so l2 does not depend on the codes' scale).
  Returns (beta [D], b, Newton steps, converged).
  """
  n, dim = x.shape
  if dim <= n:
    ev, vecs = np.linalg.eigh(x.T @ x)
    keep = ev > ev.max() * 1e-10
    basis = vecs[:, keep]                                            # [D, r]
  else:
    ev, vecs = np.linalg.eigh(x @ x.T)
    keep = ev > ev.max() * 1e-10
    basis = x.T @ vecs[:, keep] / np.sqrt(ev[keep])                  # [D, r]
  f = np.concatenate([x @ basis, np.ones((n, 1))], axis=1)           # [N, r + 1]; last = bias
  lam = l2 * ev.sum() / (n * dim)
  reg = np.full(f.shape[1], lam)
  reg[-1] = 0.0

  def objective(t):
    m = f @ t
    return np.mean(np.logaddexp(0.0, m) - y * m) + 0.5 * np.sum(reg * t * t)

  theta = np.zeros(f.shape[1])
  loss, steps, converged = objective(theta), 0, False
  for steps in range(1, max_steps + 1):
    p = 0.5 * (1.0 + np.tanh(0.5 * (f @ theta)))                     # sigmoid, no overflow
    grad = f.T @ (p - y) / n + reg * theta
    hess = (f * (p * (1 - p))[:, None]).T @ f / n + np.diag(reg + 1e-12)
    step = np.linalg.solve(hess, grad)
    decrement = float(grad @ step)
    if decrement < 1e-12:
      converged = True
      break
    t = 1.0
    while objective(theta - t * step) > loss - 0.25 * t * decrement and t > 1e-8:
      t *= 0.5
    theta = theta - t * step
    loss = objective(theta)
  return basis @ theta[:-1], float(theta[-1]), steps, converged


def interfacegan(codes, labels, name: str, *, generator_id: str, space: str = 'wplus',
                 holdout: float = 0.2, seed: int = 0, l2: float = 1e-3) -> Directions:
  """InterFaceGAN (Shen et al. 2020, section 2.2): the unit normal of a linear boundary between
  codes labelled True and False, pointing toward True.

  A logistic regression (L2 weight `l2`, relative to the codes' variance) on codes centred by
  the training mean, solved by Newton (`_fit_logistic`), on a stratified split: `holdout` of
  each class is held out to measure accuracy.

  Args:
    codes: [N, num_ws, w_dim] W+ codes (e.g. inverted latents' ws, or `sample_ws`).
    labels: [N] bool (an attribute present: True).
    name: the direction's name.
    generator_id: `latents.generator_fingerprint` of the generator the codes belong to.
    space: 'wplus' fits on the whole codes; 'w' on codes[:, 0] (the direction is then
      broadcast over the layers).
    holdout: share of each class held out (0 = fit on all, no held-out accuracy).
    seed: of the split.

  Returns:
    Directions with one vector; scale = std of all codes projected on it; info: accuracies,
    class counts, the gap between the class means along it (in sigmas).

  Raises:
    ValueError: a class with fewer than 10 codes, or mismatched shapes.
  """
  codes = np.asarray(codes, np.float32)
  labels = np.asarray(labels)
  if codes.ndim != 3:
    raise ValueError(f'codes must be [N, num_ws, w_dim], got {codes.shape}')
  if labels.shape != (len(codes),):
    raise ValueError(f'labels must be [N] = [{len(codes)}] booleans, got {labels.shape}')
  if labels.dtype != bool:
    if not np.isin(labels, (0, 1)).all():
      raise ValueError('labels must be booleans (or 0 / 1)')
    labels = labels.astype(bool)
  if space not in ('wplus', 'w'):
    raise ValueError(f"space must be 'wplus' or 'w', got {space!r}")
  if not 0 <= holdout < 1:
    raise ValueError(f'holdout must be in [0, 1), got {holdout}')
  if not np.isfinite(codes).all():
    raise ValueError('codes hold NaN or infinite values')
  n_true, n_false = int(labels.sum()), int((~labels).sum())
  if min(n_true, n_false) < MIN_PER_CLASS:
    raise ValueError(f'need labelled codes of both classes, at least {MIN_PER_CLASS} of each: '
                     f'got {n_true} True and {n_false} False')
  num_ws, w_dim = codes.shape[1:]
  # Layer-broadcast codes (sampled, or W inversions) span W only: the W+ fit is then exactly
  # the W fit with l2 / num_ws (the same normal, tiled), at a fraction of the cost.
  broadcast = space == 'wplus' and bool((codes == codes[:, :1]).all())
  per_layer = space == 'w' or broadcast
  x = (codes[:, 0] if per_layer else codes.reshape(len(codes), -1)).astype(np.float64)

  # 1. stratified split
  rng = np.random.default_rng(seed)
  held = np.zeros(len(codes), bool)
  for cls in (True, False):
    idx = rng.permutation(np.flatnonzero(labels == cls))
    held[idx[:min(int(round(holdout * len(idx))), len(idx) - 1)]] = True
  train = ~held
  # 2. the boundary, on codes centred by the training mean
  mean = x[train].mean(0)
  beta, bias, steps, converged = _fit_logistic(x[train] - mean, labels[train].astype(np.float64),
                                    l2 / num_ws if broadcast else l2)
  predict = lambda rows: ((x[rows] - mean) @ beta + bias) > 0
  acc = lambda rows: float(np.mean(predict(rows) == labels[rows])) if rows.any() else None
  # 3. the unit normal in W+
  normal = np.tile(beta, (num_ws, 1)) if per_layer else beta.reshape(num_ws, w_dim)
  norm = np.sqrt(np.square(normal).sum())
  if not norm > 0:
    raise ValueError('the classifier found no boundary (all-zero normal): are the codes all '
                     'the same?')
  vector = normal / norm
  proj = codes.reshape(len(codes), -1).astype(np.float64) @ vector.reshape(-1)
  scale = float(proj.std()) or 1.0
  gap = float((proj[labels].mean() - proj[~labels].mean()) / scale)
  info = {'train_accuracy': acc(train), 'heldout_accuracy': acc(held),
          'num_true': n_true, 'num_false': n_false, 'num_train': int(train.sum()),
          'num_heldout': int(held.sum()), 'class_gap_sigma': gap, 'space': space,
          'layer_broadcast_codes': broadcast, 'l2': float(l2), 'newton_steps': int(steps),
          'converged': converged, 'seed': int(seed)}
  return Directions(vector[None], [name], [scale], 'interfacegan', generator_id, info)


def defect_direction(model, num_samples: int = 4000, seed: int = 0, space: str = 'wplus',
                     batch_size: int = 256) -> Directions:
  """The 'defect' direction of an RGB + defect-mask generator: InterFaceGAN on sampled codes.

  1. sample ws = mapping(z) (`sample_ws`); 2. render them with the stored noise maps and
  label each by whether its mask channel (the 4th: -1 none, +1 defect) holds any pixel > 0;
  3. `interfacegan` on (ws, labels). +strength adds defects, -strength removes them.

  Raises:
    ValueError: the generator has no mask channel (`interfacegan` takes your own labels).
  """
  _need_mask_channel(model)
  ws = sample_ws(model, num_samples, seed, batch_size=1000)
  counts = defect_pixels(model, ws, batch_size)
  d = interfacegan(ws, counts > 0, 'defect', generator_id=latents_lib.generator_fingerprint(model),
                   space=space, seed=seed)
  return dataclasses.replace(d, info={
      **d.info, 'num_samples': int(num_samples), 'defect_share': float(np.mean(counts > 0)),
      'mean_defect_pixels': float(counts.mean()),
      'labels': 'any mask-channel pixel > 0, stored noise maps', 'psi': 1.0})


# ----------------------------------------------------------------------------------------------
# Commands (`python -m inversion directions` / `edit direction`).


def run_directions_command(kind: str, model, out: str, *, num_components: int,
                           num_samples: int, seed: int) -> str:
  """`python -m inversion directions {ganspace,defect}`: computes, saves to `out`, returns a
  one-line summary."""
  if kind == 'ganspace':
    d = ganspace(model, num_components, num_samples, seed)
    ratio = d.info['explained_variance_ratio']
    what = (f'{len(d)} GANSpace directions {d.names[0]}..{d.names[-1]} explaining '
            f'{100 * sum(ratio):.1f}% of the variance of w ({100 * ratio[0]:.1f}% for pc0)')
  elif kind == 'defect':
    d = defect_direction(model, num_samples, seed)
    i = d.info
    what = (f"direction 'defect' (InterFaceGAN; {100 * i['defect_share']:.1f}% of the codes "
            f"have defect pixels; held-out accuracy {i['heldout_accuracy']:.3f}, train "
            f"{i['train_accuracy']:.3f})")
  else:
    raise ValueError(f'directions kind must be one of {COMMANDS}, got {kind!r}')
  path = save_directions(out, d)
  return f'wrote {path}: {what}, from {num_samples} sampled codes (seed {seed})'


def direction_edit_ws(ws, directions_path: str | os.PathLike, model, name: Optional[str],
                      strengths: float | Sequence[float]) -> np.ndarray:
  """ws [num_ws, w_dim] of `model` moved along a direction of a file (any `read_direction_file`
  format) at each strength: [S, num_ws, w_dim] (S = 1 for a float).

  name: the direction to take (None: the file's only one).
  """
  path = os.fspath(directions_path)
  d = read_direction_file(path, model, name=name)
  if name is None and len(d) != 1:
    raise DirectionsError(f'{path} holds {len(d)} directions: name one ({", ".join(d.names)})')
  try:
    direction = d.direction(name or d.names[0])
  except KeyError as e:
    raise DirectionsError(f'{path}: {e.args[0]}') from None
  return apply(ws, direction, np.atleast_1d(np.asarray(strengths, np.float32)))


def run_direction_edit(model, latents_path: str | os.PathLike,
                       directions_path: str | os.PathLike, name: Optional[str],
                       strengths: float | Sequence[float], out_png: str | os.PathLike, *,
                       encoder=None) -> str:
  """`python -m inversion edit direction`: moves a latents file's ws along a direction of a
  file at each strength (`direction_edit_ws`: our .npz with a name, or an official file),
  renders them (with the file's noise maps, if any) and writes a strip PNG (defect mask
  overlaid); returns its path.

  Latents of an SFE inversion (they carry F_k) are edited the SFE way (`inversion.sfe.edit`):
  the editing codes move too, and the feature editor turns the feature change into F_k';
  `encoder` is then the SFE networks (`inversion.sfe.SFE`, their files, or 'random').
  """
  from inversion import editing  # pylint: disable=import-outside-toplevel
  rec = latents_lib.load_latents(latents_path, model)
  ws = direction_edit_ws(rec.ws, directions_path, model, name, strengths)  # [S, num_ws, w_dim]
  if rec.features is None:
    frames = editing.render(model, ws, rec.noise or None)
  else:
    frames = _sfe_edit_frames(model, rec, ws, directions_path, name, strengths, encoder)
  return editing.write_strip(out_png, frames, mask='overlay')


def _sfe_edit_frames(model, rec: latents_lib.LatentRecord, ws: np.ndarray, directions_path,
                     name: Optional[str], strengths, encoder) -> np.ndarray:
  """The edited images of an SFE latents file: G(edited ws, editor(F_k, delta)) per strength."""
  from inversion import sfe  # pylint: disable=import-outside-toplevel
  if encoder is None:
    raise sfe.SFEError(
        f'{rec.path}: these latents come from SFE (they carry its feature tensor F_k at '
        f'{rec.feature_layer}): pass the SFE files they were inverted with (--encoder '
        'sfe_editor_light.pt,e4e_ffhq_encode.pt, or random) to edit them with their features.')
  nets = sfe.resolve(encoder, model)
  if nets.feature_layer != rec.feature_layer:
    raise sfe.SFEError(f'{rec.path}: F_k replaces {rec.feature_layer}, but these SFE networks '
                       f'work at {nets.feature_layer}: pass the SFE files of the inversion.')
  edited_e = direction_edit_ws(rec.encoder_ws, directions_path, model, name, strengths)
  repeat = lambda x: np.repeat(x[None], len(ws), axis=0)
  return sfe.render(nets, model, ws, repeat(rec.features), repeat(rec.encoder_ws), edited_e)
