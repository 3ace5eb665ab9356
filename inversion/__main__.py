"""Command line: invert images, edit inverted latents, run the demo.

    python -m inversion invert --checkpoint G.pkl --images DIR_OR_FILES --method wplus \
        --steps 1000 --out out/run [--batch-size 8] [--mask M.png] [--config.optimizer.lr=0.02]
        [--init out/encoder/latents]             # start from given latents (files per image)
        [--align my_module:detect_landmarks]     # FFHQ face alignment (inversion/align.py)
        [--skip-bad]                             # go on without unreadable images
        [--coordinator H:P --num-processes N --process-id I | --distributed]   # several hosts
    python -m inversion edit interpolate --a out/run/latents/a.npz --b out/run/latents/b.npz \
        --num 8 --out morph.png [--checkpoint G.pkl]
    python -m inversion edit crossover --content A.npz --style B.npz [--cutoff 4] --out mix.png
    python -m inversion edit expression --a A.npz --b B.npz --c C.npz [--strength 1] --out e.png
    python -m inversion edit direction --latents L.npz --direction D.npy --strength 3 --out e.png
        [--name smile] [--encoder sfe_editor_light.pt,e4e_ffhq_encode.pt]   # SFE latents
    python -m inversion demo [--out out/demo] [--steps 600]
    python -m inversion invert --images DIR --method idinvert|encoder [--encoder ENCODER_DIR] ...
    python -m inversion invert --images DIR --method sfe --encoder sfe_editor_light.pt,e4e.pt ...
    python -m inversion train-encoder --config idinvert --checkpoint G --data DIR_OR_embedded \
        --workdir runs/enc                      # resumable; then:
    python -m inversion export-encoder --workdir runs/enc --out ENCODER_DIR
    python -m inversion train-sfe --stage inverter --config sfe:small,train_inverter,embedded \
        --data embedded --workdir runs/sfe1      # resumable; then stage 2 and the export:
    python -m inversion train-sfe --stage editor --config sfe:small,train_editor,embedded \
        --data embedded --workdir runs/sfe2 --inverter-workdir runs/sfe1
    python -m inversion export-sfe --workdir runs/sfe2 --out SFE_DIR
    python -m inversion defects --images NORMALS --masks MASKS|--random-masks 8 --out out/syn \
        [--space z|w|wplus] [--defect stitch|distill|none] [--defect-source MVTEC_CATEGORY_DIR]

Without --checkpoint the embedded default model is used. Methods: z, w, wplus, wplus_noise
(configs/image2stylegan.py), projector (configs/projector.py), idinvert (in-domain inversion)
and encoder (the encoder alone; configs/idinvert.py), sfe (StyleFeatureEditor, one forward
pass; inversion/sfe.py); any config field can be set
with --config.field=value. `invert` is resumable: rerun the same command after an interruption.
Errors in the input or settings print one `error:` line; STYLEGAN_INV_TRACEBACK=1 shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from generators import distributed
from generators.cli import run_cli

METHODS = {'z': 'image2stylegan:z', 'w': 'image2stylegan:w', 'wplus': 'image2stylegan:wplus',
           'wplus_noise': 'image2stylegan:wplus_noise', 'projector': 'projector',
           'idinvert': 'idinvert', 'encoder': 'idinvert:encoder', 'sfe': 'sfe'}
ENCODER_METHODS = ('idinvert', 'encoder', 'sfe')  # they use --encoder


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m inversion', description=__doc__.split('\n')[0])
  sub = p.add_subparsers(dest='command', required=True)

  inv = sub.add_parser('invert', help='invert images (a folder, files), resumable')
  inv.add_argument('--checkpoint', default=None,
                   help='generator file/dir, or embedded:NAME (default: embedded:default)')
  inv.add_argument('--images', nargs='+', required=True, help='a folder or image files')
  inv.add_argument('--method', choices=sorted(METHODS), default='wplus')
  inv.add_argument('--steps', type=int, default=None, help='optimisation steps (config.steps)')
  inv.add_argument('--out', required=True, help='output folder')
  inv.add_argument('--batch-size', type=int, default=8, help='images per compiled batch')
  inv.add_argument('--mask', default=None, help='mask image for every image (white = counts)')
  inv.add_argument('--seed', type=int, default=None, help='PRNG seed (config.seed)')
  inv.add_argument('--skip-bad', action='store_true',
                   help='invert the readable images and list unreadable ones in metrics.csv as '
                   'skipped (default: stop before the first step, listing all of them)')
  inv.add_argument('--init', default=None, metavar='DIR',
                   help="start from latents files named like the images (e.g. another job's "
                        'latents/ folder, or an encoder\'s output) instead of config.init')
  inv.add_argument('--align', default=None, metavar='MODULE:FUNCTION',
                   help='FFHQ-align faces first, with your landmark detector: a function '
                        'image [H, W, 3] -> [68, 2] (x, y) or None (see inversion/align.py)')
  inv.add_argument('--encoder', default=None, metavar='PATH',
                   help='methods idinvert and encoder: a native encoder folder (default: the '
                   "embedded model's shipped encoder); method sfe: the SFE files, comma-"
                   'separated (sfe_editor_light.pt,e4e_ffhq_encode.pt), a native SFE folder '
                   "(export-sfe; default: the embedded model's shipped one), or random")
  inv.add_argument('--no-progress', action='store_true', help='no progress bar')
  distributed.add_arguments(inv)

  tr = sub.add_parser('train-encoder', help='train a domain-guided encoder (idinvert), resumable')
  tr.add_argument('--config', default='idinvert',
                  help="idinvert (= idinvert:train), idinvert:train_fakes, idinvert:train,embedded")
  tr.add_argument('--checkpoint', default=None, help='the frozen generator (default: embedded)')
  tr.add_argument('--data', required=True,
                  help="a folder of real images, or 'embedded' (the embedded model's own photo "
                       'crops, training region only)')
  tr.add_argument('--workdir', required=True, help='run folder; rerun the command to resume')
  tr.add_argument('--no-progress', action='store_true')
  distributed.add_arguments(tr)

  ex = sub.add_parser('export-encoder', help="write a training run's encoder as a native folder")
  ex.add_argument('--workdir', required=True)
  ex.add_argument('--out', required=True)
  ex.add_argument('--checkpoint', default=None, help='the generator it was trained for')
  ex.add_argument('--step', type=int, default=None, help='a kept checkpoint (default: latest)')

  ts = sub.add_parser('train-sfe', help='train SFE (inverter, then feature editor), resumable')
  ts.add_argument('--stage', choices=['inverter', 'editor'], required=True)
  ts.add_argument('--config', default=None,
                  help='sfe:small,train_inverter (default for --stage inverter), '
                  'sfe:small,train_editor, +,embedded (sized for the embedded model on 2 CPU '
                  'cores), official for the paper\'s sizes')
  ts.add_argument('--checkpoint', default=None, help='the frozen generator (default: embedded)')
  ts.add_argument('--data', required=True,
                  help="a folder of real images, or 'embedded' (the embedded model's crops)")
  ts.add_argument('--workdir', required=True, help='run folder; rerun the command to resume')
  ts.add_argument('--inverter-workdir', default=None,
                  help='--stage editor: the stage-1 workdir (or an exported SFE folder)')
  ts.add_argument('--no-progress', action='store_true')
  distributed.add_arguments(ts)

  xs = sub.add_parser('export-sfe', help="write an SFE training run's networks as a native "
                      'folder (--encoder of --method sfe)')
  xs.add_argument('--workdir', required=True)
  xs.add_argument('--out', required=True)
  xs.add_argument('--checkpoint', default=None, help='the generator it was trained for')
  xs.add_argument('--step', type=int, default=None, help='a kept checkpoint (default: latest)')

  ed = sub.add_parser('edit', help='edit inverted latents, write an image strip')
  ed.add_argument('kind', choices=['interpolate', 'crossover', 'expression', 'direction',
                                   'diffuse', 'inpaint'])
  ed.add_argument('--checkpoint', default=None, help='generator the latents belong to')
  ed.add_argument('--a', help='latents file (interpolate, expression)')
  ed.add_argument('--b', help='latents file (interpolate, expression)')
  ed.add_argument('--c', help='latents file (expression)')
  ed.add_argument('--content', help='latents file (crossover)')
  ed.add_argument('--style', help='latents file (crossover)')
  ed.add_argument('--num', type=int, default=8, help='interpolate: frames, ends included')
  ed.add_argument('--cutoff', type=int, default=None, help='crossover: first style layer')
  ed.add_argument('--strength', type=float, default=None,
                  help='expression: scale of c - b (default 1); direction: one strength '
                  '(instead of --strengths)')
  ed.add_argument('--latents', help='direction: the latents file to edit')
  ed.add_argument('--directions', '--direction', dest='directions',
                  help='direction: a directions file (python -m inversion directions ...), or '
                  'an official one as it is: InterFaceGAN / SFE .npy or .pt, a GANSpace PCA .pt')
  ed.add_argument('--name', help='direction: which direction of the file (e.g. defect, pc0, '
                  'smile); not needed for a file of one direction')
  ed.add_argument('--strengths', default='-3,-1.5,0,1.5,3',
                  help='direction: comma list of strengths, in sigmas of the codes along it')
  ed.add_argument('--context', help='diffuse: the image that receives the region')
  ed.add_argument('--source', help='diffuse: the image the region comes from')
  ed.add_argument('--region', help='diffuse: mask PNG, white = the pasted region')
  ed.add_argument('--image', help='inpaint: the image with missing pixels')
  ed.add_argument('--mask', help='inpaint: mask PNG, white = known pixels')
  ed.add_argument('--encoder', default=None, help='diffuse, inpaint: the encoder (default: the '
                  "embedded model's); direction on SFE latents: the SFE files (comma-separated) "
                  'or random')
  ed.add_argument('--steps', type=int, default=None, help='diffuse, inpaint: in-domain steps')
  ed.add_argument('--out', required=True, help='output PNG')

  dr = sub.add_parser('directions', help='find edit directions of a generator (GANSpace PCA, '
                      'or the defect direction of an RGB + mask generator)')
  dr.add_argument('kind', choices=['ganspace', 'defect'])
  dr.add_argument('--checkpoint', default=None)
  dr.add_argument('--out', required=True, help='directions .npz')
  dr.add_argument('--num-components', type=int, default=8, help='ganspace: directions')
  dr.add_argument('--num-samples', type=int, default=10_000, help='sampled codes')
  dr.add_argument('--seed', type=int, default=0)

  df = sub.add_parser('defects', help='put defects where masks say on normal images (RGB + mask '
                      'generators), written as an MVTec AD folder; resumable')
  df.add_argument('--checkpoint', default=None, help='RGB + mask generator (default: embedded)')
  df.add_argument('--images', nargs='+', required=True, help='normal images: a folder or files')
  df.add_argument('--masks', nargs='+', default=None,
                  help='target masks (white = defect) for every image: a folder or PNG files, or '
                  'an MVTec AD category folder (its ground_truth/ masks)')
  df.add_argument('--random-masks', type=int, default=0, metavar='N',
                  help='instead of --masks: N procedural masks per image (generators/defects.py)')
  df.add_argument('--out', required=True, help='output folder (an MVTec AD category folder)')
  df.add_argument('--space', choices=['z', 'w', 'wplus'], default='wplus')
  df.add_argument('--defect', choices=['stitch', 'distill', 'none'], default='stitch',
                  help='what the inside of the mask is fitted to (configs/defect_synthesis.py)')
  df.add_argument('--defect-source', default=None, metavar='DIR',
                  help='stitch: an MVTec AD category folder of real defects (default: the '
                  "embedded data's procedural defects; --random-masks paste their own)")
  df.add_argument('--steps', type=int, default=None)
  df.add_argument('--seed', type=int, default=None)
  df.add_argument('--batch-size', type=int, default=8)
  df.add_argument('--encoder', default=None, metavar='DIR',
                  help='domain-guided encoder of the start codes (default: the embedded one)')
  df.add_argument('--no-progress', action='store_true')

  dm = sub.add_parser('demo', help='invert examples/*.png with Z, W, W+ on the embedded model')
  dm.add_argument('--out', default='out/demo')
  dm.add_argument('--steps', type=int, default=None)
  dm.add_argument('--checkpoint', default=None, help='another generator (default: embedded)')
  dm.add_argument('--no-progress', action='store_true')
  return p


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith('--config.')]
  args = _parser().parse_args([a for a in argv if not a.startswith('--config.')])
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  for noisy in ('absl', 'jax._src.xla_bridge'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  return run_cli(_run, args, overrides)  # bad input, settings or files: one error line


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
  from generators import checkpoint  # pylint: disable=import-outside-toplevel
  from inversion import api, demo, editing, jobs, report  # pylint: disable=import-outside-toplevel

  if args.command in ('invert', 'train-encoder', 'train-sfe'):  # before any other JAX work
    distributed.from_args(args, runtime_needed=args.command != 'invert')
  if args.command in ('train-encoder', 'export-encoder'):
    return _encoder_command(args, overrides)
  if args.command in ('train-sfe', 'export-sfe'):
    return _sfe_command(args, overrides)

  if args.command == 'invert':
    extra = []
    if args.encoder is not None:
      if args.method not in ENCODER_METHODS:
        raise SystemExit(f'error: --encoder is for --method {" or ".join(ENCODER_METHODS)}, not '
                         f'{args.method}')
      if args.method != 'sfe':
        extra.append(f'--config.encoder.path={args.encoder}')
    if args.method == 'sfe' and (args.steps is not None or args.seed is not None):
      raise SystemExit('error: --method sfe is one forward pass: --steps and --seed do not '
                       'apply (untrained weights take --config.seed)')
    if args.steps is not None:
      extra.append(f'--config.steps={args.steps}')
    if args.seed is not None:
      extra.append(f'--config.seed={args.seed}')
    config = api.as_config(METHODS[args.method], extra + overrides)
    model = checkpoint.load(args.checkpoint)
    images = args.images[0] if len(args.images) == 1 else args.images
    align = None
    if args.align:
      from inversion import align as align_lib  # pylint: disable=import-outside-toplevel
      align = align_lib.aligner_from_spec(args.align, model.resolution)
    res = jobs.invert_folder(images, model, config, args.out, args.batch_size, mask=args.mask,
                            progress=not args.no_progress, align=align, init=args.init,
                            skip_bad=args.skip_bad,
                            encoder=args.encoder if args.method == 'sfe' else None)
    cols = [c for c in ('mse', 'psnr', 'ssim', 'lpips') if any(c in r for r in res.rows)]
    if res.merged:
      print(report.format_table(res.rows, ['name'] + cols + ['status']))
    unreadable = f', {len(res.unreadable)} unreadable (skipped)' if res.unreadable else ''
    who = f'{res.process.describe()}: ' if res.process.count > 1 else ''
    wait = '' if res.merged else (' (process 0 wrote metrics.csv and grid.png)' if
                                  res.process.runtime else
                                  ' (metrics.csv and grid.png wait for the other processes)')
    print(f'{who}{len(res.inverted)} inverted, {len(res.skipped)} already done, '
          f'{len(res.failed)} failed{unreadable}; outputs in {res.out_dir}{wait}')
    return 1 if res.failed else 0

  if args.command == 'defects':
    return _defects_command(args, overrides, checkpoint.load(args.checkpoint))

  if args.command == 'directions':
    from inversion import directions  # pylint: disable=import-outside-toplevel
    print(directions.run_directions_command(
        args.kind, checkpoint.load(args.checkpoint), args.out, num_components=args.num_components,
        num_samples=args.num_samples, seed=args.seed))
    return 0

  if args.command == 'edit' and args.kind in ('direction', 'diffuse', 'inpaint'):
    return _edit_with_encoder_or_directions(args, overrides, checkpoint.load(args.checkpoint))

  if args.command == 'edit':
    if overrides:
      raise SystemExit('error: --config.* options only apply to invert/demo')
    files = {'interpolate': [args.a, args.b], 'crossover': [args.content, args.style],
             'expression': [args.a, args.b, args.c]}[args.kind]
    if any(f is None for f in files):
      flags = {'interpolate': '--a, --b', 'crossover': '--content, --style',
               'expression': '--a, --b, --c'}[args.kind]
      raise SystemExit(f'error: edit {args.kind} needs {flags}')
    model = checkpoint.load(args.checkpoint)
    path = editing.run_edit(args.kind, model, files, args.out, num=args.num,
                            cutoff=args.cutoff,
                            strength=1.0 if args.strength is None else args.strength)
    print(f'wrote {path}')
    return 0

  model = checkpoint.load(args.checkpoint)
  steps = demo.DEMO_STEPS if args.steps is None else args.steps
  out = demo.demo(args.out, model, steps=steps, overrides=overrides,
                  progress=not args.no_progress)
  print(out['table'])
  print(f'wrote {out["out_dir"]}/grid.png (target | Z | W | W+), metrics.csv, metrics.json, '
        'losses.png')
  return 0


def _need(args: argparse.Namespace, *flags: str) -> None:
  missing = [f for f in flags if getattr(args, f.lstrip('-').replace('-', '_')) is None]
  if missing:
    raise SystemExit(f'error: edit {args.kind} needs {", ".join(missing)}')


def _edit_with_encoder_or_directions(args: argparse.Namespace, overrides: list[str],
                                     model) -> int:
  """edit direction / diffuse / inpaint: write a strip PNG."""
  from inversion import editing, images  # pylint: disable=import-outside-toplevel
  if args.kind == 'direction':
    _need(args, '--latents', '--directions')
    from inversion import directions  # pylint: disable=import-outside-toplevel
    strengths = ([args.strength] if args.strength is not None else
                 [float(v) for v in args.strengths.split(',')])
    path = directions.run_direction_edit(model, args.latents, args.directions, args.name,
                                         strengths, args.out, encoder=args.encoder)
    print(f'wrote {path} (strengths {strengths})')
    return 0
  extra = [] if args.steps is None else [f'--config.steps={args.steps}']
  if args.encoder:
    extra.append(f'--config.encoder.path={args.encoder}')
  res = model.resolution
  load = lambda path, mask=False: (images.load_weight_mask(path, res)[..., 0] if mask else
                                   images.load_image(path, res, model.channels))
  if args.kind == 'diffuse':
    _need(args, '--context', '--source', '--region')
    context, source = load(args.context), load(args.source)
    composite, result = editing.diffuse(model, context, source, load(args.region, mask=True),
                                        overrides=extra + overrides)
    frames = [context, source, composite, result.reconstructions[0]]
  else:
    _need(args, '--image', '--mask')
    image, known = load(args.image), load(args.mask, mask=True)
    result = editing.inpaint(model, image, known, overrides=extra + overrides)
    frames = [image * known[..., None] + (1 - known[..., None]) * -1, result.reconstructions[0]]
  print(f'wrote {editing.write_strip(args.out, np.stack(frames))}')
  return 0


def _encoder_command(args: argparse.Namespace, overrides: list[str]) -> int:
  """train-encoder / export-encoder."""
  from generators import checkpoint  # pylint: disable=import-outside-toplevel
  from inversion.encoders import train as train_lib  # pylint: disable=import-outside-toplevel

  model = checkpoint.load(args.checkpoint)
  if args.command == 'export-encoder':
    if overrides:
      raise SystemExit('error: --config.* options do not apply to export-encoder')
    path = train_lib.export_encoder(args.workdir, args.out, model, args.step)
    print(f'wrote {path}')
    return 0
  import configs  # pylint: disable=import-outside-toplevel
  name = 'idinvert:train' if args.config == 'idinvert' else args.config
  config = configs.load_config(name, overrides)
  if config.get('method') != 'idinvert_train':
    raise SystemExit(f'error: --config {args.config} is not an encoder training config; use '
                     'idinvert, idinvert:train_fakes or idinvert:train,embedded')
  state = train_lib.train_encoder(config, model, args.data, args.workdir,
                                  progress=not args.no_progress)
  print(f'trained to step {int(state.step)} in {args.workdir}; export it with `python -m '
        f'inversion export-encoder --workdir {args.workdir} --out DIR`')
  return 0


def _sfe_command(args: argparse.Namespace, overrides: list[str]) -> int:
  """train-sfe / export-sfe."""
  from generators import checkpoint  # pylint: disable=import-outside-toplevel
  from inversion.encoders import sfe_train  # pylint: disable=import-outside-toplevel

  model = checkpoint.load(args.checkpoint)
  if args.command == 'export-sfe':
    if overrides:
      raise SystemExit('error: --config.* options do not apply to export-sfe')
    print(f'wrote {sfe_train.export_sfe(args.workdir, args.out, model, args.step)}')
    return 0
  import configs  # pylint: disable=import-outside-toplevel
  name = args.config or f'sfe:small,train_{args.stage}'
  if args.inverter_workdir is not None:
    if args.stage != 'editor':
      raise SystemExit('error: --inverter-workdir is for --stage editor')
    overrides = [f'--config.editor.inverter={args.inverter_workdir}'] + overrides
  config = configs.load_config(name, overrides)
  if config.get('method') != 'sfe_train' or config.stage != args.stage:
    raise SystemExit(f'error: --config {name} is not a stage-{args.stage} SFE training config; '
                     f'use sfe:small,train_{args.stage}[,embedded]')
  state = sfe_train.train_sfe(config, model, args.data, args.workdir,
                              progress=not args.no_progress)
  print(f'trained stage {args.stage} to step {int(state.step)} in {args.workdir}; export it '
        f'with `python -m inversion export-sfe --workdir {args.workdir} --out DIR`')
  return 0


def _defects_command(args: argparse.Namespace, overrides: list[str], model) -> int:
  from inversion import api, defects, encoders, report  # pylint: disable=import-outside-toplevel
  extra = [f'--config.{k}={v}' for k, v in (('steps', args.steps), ('seed', args.seed),
                                              ('defect.source', args.defect_source))
           if v is not None]
  config = api.as_config(f'defect_synthesis:{args.space},{args.defect}', extra + overrides)
  encoder = None if args.encoder is None else encoders.resolve_encoder(args.encoder, model)
  masks = args.masks[0] if args.masks and len(args.masks) == 1 else args.masks
  res = defects.synthesize_folder(
      args.images[0] if len(args.images) == 1 else args.images, model, config, args.out,
      masks=masks, random_masks_per_image=args.random_masks, batch_size=args.batch_size,
      encoder=encoder, progress=not args.no_progress)
  print(report.format_table(res.rows, ['name', 'normal', 'mask', 'iou', 'psnr_outside',
                                       'status']))
  print(f'{len(res.done)} synthesised, {len(res.skipped)} already done; MVTec AD layout in '
        f'{res.out_dir} (test/{config.defect.category}/, ground_truth/{config.defect.category}/'
        '), grid.png, metrics.csv')
  return 0


if __name__ == '__main__':
  sys.exit(main())
