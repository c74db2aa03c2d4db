"""Synthesises a pseudo dataset from the teacher pool (docs/DESIGN.md §4), no meta-learning: the
command over the inversion engine (purer_jax/inversion.py).

  python -m purer_jax.synthesize --config=configs/ss.py:smoke --workdir=W

Trains the teachers first when W has none (purer_jax.pretrain). Every step is one Adam step
on the bank over all teachers of the pool (`zoo.pool`; config.inversion.steps steps). Writes
W/inversion/bank.npz (images + layout), W/inversion/teacher_XXX.png (a pseudo episode per
teacher: a row per class), W/inversion/metrics.jsonl and W/inversion/report.json with each
teacher's `target_acc`: how often it assigns the synthesised images their target class.
With several devices (or processes under jax.distributed) teachers are sharded over them.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from purer_jax import bank as bank_lib
from purer_jax import cli, inversion, pretrain, utils, viz, zoo

_EPISODE_SHOTS = 8  # images per class drawn in each teacher's PNG


def target_accuracy(teachers, layout, images) -> list:
  """Per teacher (list order): the fraction of its un-jittered slice classified as targeted."""
  accs = [0.0] * len(teachers)
  for g in layout.groups:
    model = g.model
    predict = jax.jit(lambda v, x, m=model: jnp.argmax(m.apply(v, x), -1))
    xs = bank_lib.group_slice(images, g)
    if xs.shape[2] != g.image_size:
      xs = jax.vmap(lambda x: jax.image.resize(
          x, (x.shape[0], g.image_size, g.image_size, 3), 'bilinear'))(xs)
    tgt = np.asarray(bank_lib.targets(g.num_classes, layout.spc))
    for j, i in enumerate(g.members):
      accs[i] = float(np.mean(np.asarray(predict(teachers[i].variables, xs[j])) == tgt))
  return accs


def run(config, workdir: str) -> dict:
  """Inverts the pool in `workdir` for config.inversion.steps steps; returns the report."""
  if not zoo.read_manifest(workdir)['teachers']:
    print(f'no teachers in {zoo.teachers_dir(workdir)}: training them first')
    pretrain.run(config, workdir)
  teachers = zoo.pool(config, workdir)
  # MH: the bank lives at the largest input size (the meta-learner's, 84 px); teachers
  # trained at 32 px see their slice resized inside the step.
  size = max(t.image_size for t in teachers)
  layout = bank_lib.make_layout(teachers, config.inversion.spc, image_size=size)
  stacked = bank_lib.stack_teachers(teachers, layout)
  n = jax.device_count()
  mesh = (jax.make_mesh((n,), ('teachers',), axis_types=(jax.sharding.AxisType.Auto,))
          if n > 1 else None)
  t0 = time.time()
  step = inversion.make_inversion_step(layout, config.inversion, teachers=stacked, mesh=mesh)
  print(f'{len(teachers)} teachers in {len(layout.groups)} group(s), strategies '
        f'{dict(zip([f"{g.arch}x{g.size}" for g in layout.groups], step.strategies))}, '
        f'{n} device(s), bank {layout.shape} (chosen in {time.time() - t0:.0f}s)')
  rng = jax.random.key(config.seed)
  images, opt_state = step.init(jax.random.fold_in(rng, 0))
  tt = step.place_teachers(stacked)
  out = os.path.join(workdir, 'inversion')
  os.makedirs(out, exist_ok=True)
  metrics_path = os.path.join(out, 'metrics.jsonl')
  if os.path.exists(metrics_path):
    os.remove(metrics_path)
  steps = int(config.inversion.steps)
  prog = utils.Progress(steps, 'inversion')
  t0 = time.time()
  for i in range(steps):
    images, opt_state, m = step(images, opt_state, tt, jax.random.fold_in(rng, i + 1))
    if (i + 1) % config.train.log_every == 0 or i + 1 == steps:
      rec = {k: float(v) for k, v in m.items() if np.ndim(v) == 0}
      utils.write_jsonl(metrics_path, dict(step=i + 1, **rec))
      prog.update(i + 1, f"loss {rec['loss']:.3f} ce {rec['ce']:.3f} bn {rec['bn']:.2f} "
                  f"acc {rec['acc']:.3f}")
  seconds = time.time() - t0
  accs = target_accuracy(teachers, layout, images)
  bank_lib.save(os.path.join(out, 'bank.npz'), images, layout)
  for pos, t in enumerate(teachers):
    viz.save_teacher_classes(os.path.join(out, f'teacher_{t.index:03d}.png'), images, layout, t,
                             pos, _EPISODE_SHOTS)
  report = {
      'steps': steps, 'seconds': round(seconds, 1), 'steps_per_s': steps / max(seconds, 1e-9),
      'bank_shape': list(layout.shape), 'devices': n,
      'strategies': list(step.strategies),
      'mean_target_acc': float(np.mean(accs)),
      'teachers': [{'index': t.index, 'arch': t.arch, 'dataset': t.dataset,
                    'classes': list(t.classes), 'heldout_acc': t.heldout_acc,
                    'target_acc': a} for t, a in zip(teachers, accs)],
  }
  utils.write_json(os.path.join(out, 'report.json'), report)
  return report


def main(argv):
  del argv
  config, workdir = cli.config_and_workdir(splits=('meta_train',))
  report = run(config, workdir)
  accs = [t['target_acc'] for t in report['teachers']]
  print(f"{report['steps']} steps in {report['seconds']:.0f}s; target accuracy mean "
        f"{np.mean(accs):.3f} (min {np.min(accs):.3f}); wrote "
        f"{os.path.join(workdir, 'inversion')}/{{bank.npz,report.json,teacher_*.png}}")


if __name__ == '__main__':
  cli.run(main)
