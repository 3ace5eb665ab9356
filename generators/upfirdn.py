"""FIR up/down-sampling (upfirdn2d) and the resampling convolutions built on it, NHWC.

Semantics follow NVlabs `torch_utils/ops/upfirdn2d.py` and `conv2d_resample.py` exactly:

  upfirdn2d(x, f, up, down, padding, gain):
    1. up-sample by inserting `up - 1` zeros after every pixel (the result is `H * up` long);
    2. pad (or crop, for negative values) by `padding = (before, after)` on both spatial axes;
    3. convolve with the FIR filter `f` scaled by `gain` (a true convolution, i.e. `f` flipped);
    4. down-sample by keeping every `down`-th pixel.

Two implementations: `upfirdn2d_reference` does the four steps literally with a 2-D filter, and
`upfirdn2d` does them as one `lax.pad` (zero insertion, padding and cropping together) followed by
two 1-D passes of shifted, strided slices (the stride performs the down-sampling). The tests check that they
agree. Filters are separable: we keep the 1-D taps and apply them along H and then W.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_TAPS = (1, 3, 3, 1)  # StyleGAN2's binomial resampling filter.
_NHWC = ("NHWC", "HWIO", "NHWC")


def setup_filter(taps: Sequence[float] = DEFAULT_TAPS) -> np.ndarray:
  """Normalised 1-D FIR taps (sum 1); the 2-D filter is their outer product."""
  f = np.asarray(taps, dtype=np.float32)
  return f / f.sum()


def filter_2d(f1d: np.ndarray) -> np.ndarray:
  """The separable 2-D filter `outer(f, f)`, as NVlabs stores it in `resample_filter` buffers."""
  return np.outer(f1d, f1d).astype(np.float32)


def _pad_config(up: int, padding: tuple[int, int]) -> tuple[int, int, int]:
  """`lax.pad` config for one axis: zero insertion, then `padding` (negative values crop)."""
  before, after = padding
  # lax.pad's interior padding leaves no zeros after the last pixel; the reference does.
  return (before, after + up - 1, up - 1)


def _fir_axis(x: jax.Array, taps: np.ndarray, axis: int, down: int) -> jax.Array:
  """Valid 1-D correlation along `axis` with stride `down`, as a sum of shifted strided slices.

  XLA fuses the slices and multiply-adds into one elementwise kernel; on CPU this is ~50x
  faster than the equivalent depthwise (feature-grouped) convolution.
  """
  k = len(taps)
  out_len = (x.shape[axis] - k) // down + 1
  acc = None
  for i, tap in enumerate(taps):
    part = jax.lax.slice_in_dim(x, i, i + down * (out_len - 1) + 1, stride=down, axis=axis)
    part = part * jnp.asarray(tap, x.dtype)
    acc = part if acc is None else acc + part
  return acc


def upfirdn2d(
    x: jax.Array,  # [B, H, W, C]
    f: np.ndarray,  # [K] 1-D taps (the 2-D filter is outer(f, f))
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int] = (0, 0),  # (before, after), same on both axes
    gain: float = 1.0,
) -> jax.Array:
  """Up-sample, FIR-filter and down-sample `x` (fast separable path)."""
  pad = _pad_config(up, padding)
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), pad, pad, (0, 0, 0)])
  # Each 1-D pass carries sqrt(gain), so the 2-D filter carries `gain`; flip = true convolution.
  taps = np.asarray(f[::-1], np.float64) * np.sqrt(gain)
  x = _fir_axis(x, taps, axis=1, down=down)
  return _fir_axis(x, taps, axis=2, down=down)


def upfirdn2d_reference(
    x: jax.Array,  # [B, H, W, C]
    f2d: np.ndarray,  # [K, K] 2-D filter
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int] = (0, 0),
    gain: float = 1.0,
) -> jax.Array:
  """The four steps of upfirdn2d done literally (slow, for testing the fast path)."""
  batch, height, width, channels = x.shape
  # 1. Zero insertion.
  z = jnp.zeros((batch, height, up, width, up, channels), x.dtype)
  x = z.at[:, :, 0, :, 0, :].set(x).reshape(batch, height * up, width * up, channels)
  # 2. Pad, then crop.
  before, after = padding
  x = jnp.pad(x, [(0, 0), (max(before, 0), max(after, 0)), (max(before, 0), max(after, 0)), (0, 0)])
  h_end = x.shape[1] - max(-after, 0)
  w_end = x.shape[2] - max(-after, 0)
  x = x[:, max(-before, 0):h_end, max(-before, 0):w_end, :]
  # 3. Convolve (flip the filter: conv_general_dilated correlates).
  kernel = jnp.asarray(f2d[::-1, ::-1] * gain, x.dtype)
  kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, channels))
  x = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC, feature_group_count=channels)
  # 4. Keep every `down`-th pixel.
  return x[:, ::down, ::down, :]


def upsample2d(x: jax.Array, f: np.ndarray, factor: int = 2) -> jax.Array:
  """2x FIR up-sampling that keeps the image aligned (`upfirdn2d.upsample2d`)."""
  k = len(f)
  padding = ((k + factor - 1) // 2, (k - factor) // 2)
  return upfirdn2d(x, f, up=factor, padding=padding, gain=factor**2)


def downsample2d(x: jax.Array, f: np.ndarray, factor: int = 2) -> jax.Array:
  """2x FIR down-sampling that keeps the image aligned (`upfirdn2d.downsample2d`)."""
  k = len(f)
  padding = ((k - factor + 1) // 2, (k - factor) // 2)
  return upfirdn2d(x, f, down=factor, padding=padding)


def conv2d(x: jax.Array, w: jax.Array, padding: int = 0, stride: int = 1) -> jax.Array:
  """Plain cross-correlation, NHWC x HWIO (what torch's conv2d computes)."""
  return jax.lax.conv_general_dilated(
      x, w.astype(x.dtype), (stride, stride), [(padding, padding)] * 2, dimension_numbers=_NHWC)


def _phase_taps(kernel: int, up: int, phase: int) -> tuple[list[int], int]:
  """Taps of a stride-`up` transposed conv that land on output phase `phase`, and the input
  offset of the first one: output `up*m + phase` reads inputs `m + first_offset + j`."""
  taps = [k for k in range(kernel) if (phase + k - (kernel - 1)) % up == 0]
  return taps, (phase + taps[0] - (kernel - 1)) // up


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose2d(x: jax.Array, w: jax.Array, up: int) -> jax.Array:
  """Stride-`up` transposed convolution with full padding (the correlation `w` applied to the
  zero-inserted input padded by kernel - 1): [B, H, W, I] -> [B, (H-1)*up + k, ..., O].

  Computed as `up`^2 small dense convolutions on the input grid, one per output phase, then
  interleaved (sub-pixel convolution). It does only the useful multiply-adds; XLA's
  `lhs_dilation` convolution also multiplies the inserted zeros, and its input gradient runs
  at under half the dense-conv rate on CPU (see benchmarks/generator_speed.py).
  The weight gradient is one matrix product (`_conv_transpose2d_weight_grad`), not autodiff's
  per-phase convolutions with image-sized windows, which XLA:CPU runs 20-30x slower.
  """
  return _conv_transpose2d_phases(x, w, up)


def _conv_transpose2d_phases(x: jax.Array, w: jax.Array, up: int) -> jax.Array:
  """`conv_transpose2d`'s forward pass: one dense convolution per output phase, interleaved."""
  kernel, height, width = w.shape[0], x.shape[1], x.shape[2]
  if kernel < up:
    raise ValueError(f"conv_transpose2d needs kernel >= up (got {kernel} < {up}); some output "
                     "phases would have no taps.")
  size_h, size_w = (height - 1) * up + kernel, (width - 1) * up + kernel
  per_phase_h, per_phase_w = -(-size_h // up), -(-size_w // up)  # rows per phase, rounded up

  def padding(taps, offset, in_len, out_len):
    before = -offset  # pad (or, if negative, crop) so that output m starts at input m + offset
    return before, out_len - in_len - before + len(taps) - 1

  rows = []
  for phase_h in range(up):
    taps_h, offset_h = _phase_taps(kernel, up, phase_h)
    cols = []
    for phase_w in range(up):
      taps_w, offset_w = _phase_taps(kernel, up, phase_w)
      cols.append(jax.lax.conv_general_dilated(
          x, w[np.asarray(taps_h)][:, np.asarray(taps_w)].astype(x.dtype), (1, 1),
          [padding(taps_h, offset_h, height, per_phase_h),
           padding(taps_w, offset_w, width, per_phase_w)], dimension_numbers=_NHWC))
    rows.append(jnp.stack(cols, axis=3))  # [B, Mh, Mw, up(w phase), O]
  y = jnp.stack(rows, axis=2)  # [B, Mh, up(h phase), Mw, up(w phase), O]
  y = y.reshape(x.shape[0], per_phase_h * up, per_phase_w * up, w.shape[-1])
  return y[:, :size_h, :size_w]


def _tap_views(a: jax.Array, kernel: int, stride: int, count_h: int, count_w: int,
               reverse: bool) -> jax.Array:
  """The kernel*kernel strided views a[:, s*m + t_h, s*n + t_w, :] (m < count_h, n < count_w),
  one per tap (t = kernel-1-tap if `reverse`), stacked: [B * count_h * count_w, k*k*C]."""
  views = []
  for tap_h in range(kernel):
    for tap_w in range(kernel):
      start_h, start_w = (kernel - 1 - tap_h, kernel - 1 - tap_w) if reverse else (tap_h, tap_w)
      views.append(a[:, start_h:start_h + stride * (count_h - 1) + 1:stride,
                     start_w:start_w + stride * (count_w - 1) + 1:stride, :])
  return jnp.stack(views, axis=3).reshape(a.shape[0] * count_h * count_w, -1)


def _contract_rows(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [N, P]^T @ b [N, Q] -> [P, Q]: a weight gradient summed over batch and pixels."""
  return jax.lax.dot_general(a, b.astype(a.dtype), (((0,), (0,)), ((), ())))


def _conv_transpose2d_weight_grad(x: jax.Array, dy: jax.Array, kernel: int, up: int) -> jax.Array:
  """d(loss)/dw of `conv_transpose2d` as one GEMM over batch and pixels.

  Output pixel `up*m + kernel-1 - kh` takes input pixel `m` through tap `kh`, so
  dw[kh, kw, i, o] = sum over (b, m, n) of x[b, m, n, i] * dy[b, up*m + kernel-1-kh,
  up*n + kernel-1-kw, o]: x times the k*k strided views of dy.
  """
  _, height, width, in_channels = x.shape
  views = _tap_views(dy, kernel, up, height, width, reverse=True)  # [BHW, k*k*O]
  dw = _contract_rows(x.reshape(-1, in_channels), views)  # [I, k*k*O]
  return dw.reshape(in_channels, kernel, kernel, -1).transpose(1, 2, 0, 3)


def _conv_transpose2d_fwd(x, w, up):
  return _conv_transpose2d_phases(x, w, up), (x, w)


def _conv_transpose2d_bwd(up, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _conv_transpose2d_phases(x, w, up), x)
  (dx,) = input_vjp(dy)
  return dx, _conv_transpose2d_weight_grad(x, dy, w.shape[0], up).astype(w.dtype)


conv_transpose2d.defvjp(_conv_transpose2d_fwd, _conv_transpose2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def strided_conv2d(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """VALID cross-correlation with a stride (NHWC x HWIO), differentiated by hand.

  The input gradient is `conv_transpose2d` of the output gradient (sub-pixel form: only the
  useful multiply-adds, where XLA's `lhs_dilation` form also multiplies inserted zeros) and the
  weight gradient is one GEMM. Both stay cheap when differentiated again: R1's gradient of the
  input gradient otherwise becomes a dilated convolution with an image-sized window, which
  XLA:CPU runs at about 1 GFLOP/s (1.4 of a 2.5 s D step with R1 at 64 px, batch 32).
  """
  return conv2d(x, w, stride=stride)


def _strided_conv2d_fwd(x, w, stride):
  return conv2d(x, w, stride=stride), (x, w)


def _strided_conv2d_bwd(stride, residuals, dy):
  x, w = residuals
  kernel, _, in_channels, _ = w.shape
  _, height, width, _ = x.shape
  _, out_h, out_w, out_channels = dy.shape
  # Output m reads inputs stride*m + tap: the transposed conv of dy with w flipped and I <-> O.
  flipped = jnp.swapaxes(w[::-1, ::-1], 2, 3).astype(dy.dtype)
  dx = conv_transpose2d(dy, flipped, stride)  # [B, (M-1)*stride + k, ...]
  # Input rows past (M-1)*stride + k feed no output: their gradient is zero.
  dx = jnp.pad(dx, ((0, 0), (0, height - dx.shape[1]), (0, width - dx.shape[2]), (0, 0)))
  views = _tap_views(x, kernel, stride, out_h, out_w, reverse=False)  # [BMN, k*k*I]
  dw = _contract_rows(views, dy.reshape(-1, out_channels))  # [k*k*I, O]
  return dx.astype(x.dtype), dw.reshape(kernel, kernel, in_channels, out_channels).astype(w.dtype)


strided_conv2d.defvjp(_strided_conv2d_fwd, _strided_conv2d_bwd)


def conv_transpose2d_reference(x: jax.Array, w: jax.Array, up: int) -> jax.Array:
  """`conv_transpose2d` as XLA's zero-inserting (`lhs_dilation`) convolution, for tests."""
  kernel = w.shape[0]
  return jax.lax.conv_general_dilated(
      x, w.astype(x.dtype), (1, 1), [(kernel - 1, kernel - 1)] * 2,
      lhs_dilation=(up, up), dimension_numbers=_NHWC)


def conv2d_resample(
    x: jax.Array,  # [B, H, W, I]
    w: jax.Array,  # [kh, kw, I, O]
    f: np.ndarray,  # [K] 1-D FIR taps
    up: int = 1,
    down: int = 1,
    padding: int = 0,  # the layer's own padding (kernel_size // 2)
    flip_weight: bool = True,  # False: true convolution (NVlabs' up-sampling layers use that)
) -> jax.Array:
  """Convolution with optional 2x FIR up- or down-sampling (`conv2d_resample.conv2d_resample`).

  Algorithm, as NVlabs orders it (all paths are linear, so the order only changes the cost):
    up:   1x1 kernels convolve first, then FIR up-sample; larger kernels use a stride-2
          transposed convolution (zero insertion + convolution), then the FIR at gain 4.
    down: 1x1 kernels FIR down-sample first, then convolve; larger kernels FIR-filter at full
          resolution, then a stride-2 convolution.
  """
  kernel = w.shape[0]
  k = len(f)
  if up > 1 and down > 1:
    raise ValueError("conv2d_resample supports up- or down-sampling, not both.")
  if not flip_weight:
    w = w[::-1, ::-1]
  if up > 1:
    pad_before = padding + (k + up - 1) // 2
    pad_after = padding + (k - up) // 2
    if kernel == 1:
      x = conv2d(x, w)
      return upfirdn2d(x, f, up=up, padding=(pad_before, pad_after), gain=up**2)
    # Transposed convolution (zero insertion, full padding). torch's conv_transpose2d is a true
    # convolution, so NVlabs' `flip_weight` sense inverts there; both inversions cancel and `w`
    # (already flipped above where asked) is the correlation kernel.
    x = conv_transpose2d(x, w, up)
    fir_padding = (pad_before - (kernel - 1), pad_after - (kernel - up))
    return upfirdn2d(x, f, padding=fir_padding, gain=up**2)
  if down > 1:
    pad_before = padding + (k - down + 1) // 2
    pad_after = padding + (k - down) // 2
    if kernel == 1:
      x = upfirdn2d(x, f, down=down, padding=(pad_before, pad_after))
      return conv2d(x, w)
    x = upfirdn2d(x, f, padding=(pad_before, pad_after))
    if kernel < down:  # its input gradient cannot be a conv_transpose2d: plain autodiff
      return conv2d(x, w, stride=down)
    return strided_conv2d(x, w, down)
  return conv2d(x, w, padding=padding)
