"""The encoders-vs-optimisation benchmark end to end on a tiny random generator: every method
runs or is a 'skipped' row with its reason, and every output file is written."""

import json

import jax
import numpy as np
import pytest

from benchmarks import compare
from generators import checkpoint, networks

RES = 16


def tiny_model() -> checkpoint.Model:
  """A random 16 px G with its D: small enough that compiling is most of a test's time."""
  g = networks.GeneratorConfig(z_dim=8, w_dim=8, img_resolution=RES, channel_base=64,
                               channel_max=16, mapping_layers=2)
  d = networks.DiscriminatorConfig(img_resolution=RES, channel_base=64, channel_max=16)
  return checkpoint.Model(g, networks.init_generator(g, jax.random.PRNGKey(0)), d,
                          networks.init_discriminator(d, jax.random.PRNGKey(1)),
                          {'source': 'tiny test generator'})


def test_quick_comparison_writes_everything_and_skips_what_is_missing(tmp_path):
  model = tiny_model()
  g = model.g_config
  z = jax.random.normal(jax.random.PRNGKey(2), (3, g.z_dim))
  targets = np.clip(np.asarray(model.synthesis(model.mapping(z))), -1, 1)
  settings = compare.Settings(steps=4, curve_steps=(2, 4), indomain_steps=2, batch_size=3,
                              robust_images=1, translations=(0, 2), rotations=(5,),
                              scales=(1.2,), w_avg_samples=100)
  out = tmp_path / 'compare'
  payload = compare.run(model, targets, ['a', 'b', 'c'], out, settings, sfe_paths='random')
  for name in ('compare.md', 'compare.csv', 'compare.json', 'quality_vs_time.png', 'grid.png',
               'losses.png', 'robustness.png'):
    assert (out / name).is_file(), name
  rows = {r['method']: r for r in payload['rows']}
  for method in ('Z', 'W', 'W+', 'W+ noise', 'projector', 'SFE W+ head', 'SFE'):
    assert rows[method]['status'] == 'ok' and np.isfinite(rows[method]['psnr']), method
  # No domain-guided encoder for this generator, and methods not built: skipped, with why.
  for method in ('domain encoder', 'in-domain', 'SFE + W+ refinement', 'PTI'):
    assert rows[method]['status'].startswith('skipped: '), rows[method]
  assert 'encoder' in rows['domain encoder']['status']
  curve = payload['curves']['W+']
  assert [c[0] for c in curve] == [2, 4]
  assert curve[-1][2]['psnr'] == pytest.approx(rows['W+']['psnr'])  # last point = the row
  assert rows['W+']['steps'] == 4 and rows['SFE']['steps'] == 0
  checks = payload['findings']
  assert checks[0].split()[0] in ('PASS', 'FAIL') and 'W+ < W < Z' in checks[0]
  assert checks[1].startswith('SKIP idinvert')
  assert '[untrained SFE networks]' in checks[2]
  robust = payload['robustness']
  assert set(robust) == {'W+', 'SFE'} and len(robust['W+']['translate']) == 2
  assert json.loads((out / 'compare.json').read_text())['findings'] == checks
