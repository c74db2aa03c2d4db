"""PURER meta-training (docs/DESIGN.md §4-§8); the final meta-test is `purer_jax.meta_test`.

One meta-iteration is one compiled program (`train_step`): an Adam step on the bank over all
teachers (plus ECI's adversarial term while the switch is on, under `lax.cond`), a meta-batch
of pseudo tasks from the updated, detached bank, and the outer Adam step. Iteration `it` draws
its randomness from fold_in(rng, it), so a run resumed from a checkpoint repeats exactly what
an uninterrupted run does.

Workdir: checkpoints/ (orbax; the latest, including the best-by-meta-val parameters),
metrics.jsonl, tb/ (TensorBoard), pseudo_XXXXXX.png.
"""
import functools
import json
import os
import signal
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from purer_jax import bank as bank_lib
from purer_jax import data as data_lib
from purer_jax import augment, distil, eci, evaluate, inversion, meta, parallel, utils, viz
from purer_jax import workdir as workdir_lib

# Checked every iteration, in this order, so the error names the first term that broke.
GUARDED = ('inv/ce', 'inv/bn', 'inv/tv', 'inv/l2', 'inv/adv', 'inv/loss', 'meta/loss',
           'meta/grad_norm', 'state_finite')


def task_kw(config, layout) -> dict:
  return dict(ways=config.meta.ways, shots=config.meta.shots,
              queries=config.meta.train_queries or config.meta.queries,
              real=eci.real_classes(layout))


def train_step(state, teachers, rng, *, learner, inv, tx, meta_batch, task_kw, adv_scale,
               adv_start, patience, ema=0.0, flip=False, shift=0, view=lambda x: x,
               distiller=None):
  """One meta-iteration; returns (state, metrics). `state['it']` is the iteration's index.
  view: the bank -> the bank as the meta-learner sees it, what tasks are built from.
  distiller: `distil.Distiller`, whose loss joins the outer loss (state['distil'])."""
  it = state['it']
  k_inv, k_adv, k_tasks, k_aug = jax.random.split(jax.random.fold_in(rng, it), 4)
  on = state['switch'].on

  def adversarial(images, params):
    return jax.lax.cond(
        on, lambda: eci.adversarial_loss(view(images), params, k_adv, learner=learner,
                                         adv_scale=adv_scale, **task_kw),
        lambda: jnp.zeros((), images.dtype))

  images, bank_opt, inv_m = inversion.inversion_update(
      state['images'], state['bank_opt'], teachers, k_inv, tx=inv.tx, extra_loss=adversarial,
      extra_args=state['params'], lazy=inv.lazy, **inv.loss_kw)
  images, bank_opt = inv.constrain((images, bank_opt))
  tasks = eci.sample_tasks(jax.lax.stop_gradient(view(images)), k_tasks, num=meta_batch,
                           **task_kw)
  if flip or shift:
    tasks = augment.augment_tasks(tasks, k_aug, flip=flip, shift=shift)
  extra = {}
  if distiller is None:
    (loss, (_, accs)), grads = jax.value_and_grad(meta.batch_loss, has_aux=True)(
        state['params'], tasks, learner=learner)  # tasks in an unrolled loop: see meta
  else:  # its own key, so that the other streams stay those of a run without it
    (loss, (_, accs)), extra['distil/loss'], grads, state['distil'] = distil.outer_grads(
        state['params'], state['distil'], tasks, jax.lax.stop_gradient(view(images)),
        jax.random.fold_in(k_aug, 1), learner=learner, distiller=distiller, tx=tx)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  acc = jnp.mean(accs)  # of the meta-batch, before the outer update
  new = dict(state, it=it + 1, params=params, opt_state=opt_state, images=images,
             bank_opt=bank_opt, switch=eci.switch_update(state['switch'], it, acc,
                                                        adv_start=adv_start, patience=patience,
                                                        ema=ema))
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(
      (params, images))]))
  metrics = {f'inv/{k}': inv_m[k] for k in ('ce', 'bn', 'tv', 'l2', 'acc', 'loss')}
  metrics.update({'inv/adv': inv_m['extra'], 'meta/loss': loss, 'meta/pseudo_acc': acc,
                  'meta/grad_norm': optax.tree.norm(grads), 'eci/on': on,
                  'state_finite': finite.astype(jnp.float32), **extra})
  return new, metrics


def resolve_init(name: str, teachers, model) -> str:
  """`auto` is `average` where the teachers can be averaged into the meta-learner."""
  if name not in ('auto', 'random', 'average', 'arch_average', 'teacher'):
    raise ValueError(f'config.meta.init must be auto, random, (arch_)average or teacher: {name!r}')
  if name == 'auto':
    return 'average' if evaluate.can_average(teachers, model) else 'random'
  return name


def outer_optimizer(meta_config, *, iterations: int) -> optax.GradientTransformation:
  lr = float(meta_config.outer_lr)
  if meta_config.outer_schedule == 'cosine':
    return optax.adam(optax.cosine_decay_schedule(lr, int(iterations)))
  if meta_config.outer_schedule != 'constant':
    raise ValueError(f'config.meta.outer_schedule={meta_config.outer_schedule!r}: choose '
                     "'constant' or 'cosine'")
  return optax.adam(lr)


class Trainer:
  """Everything static about a run: the meta-learner, the bank layout, the teachers' stacked
  variables, the optimisers, the RNG streams and the compiled step."""

  def __init__(self, config, teachers):
    self.config, self.teachers = config, teachers
    self.built_for = config.to_dict()  # as built, whatever later edits: see train(trainer=)
    self.model = evaluate.meta_model(config)
    self.learner = meta.from_config(config.meta, self.model)
    self.layout = bank_lib.make_layout(teachers, config.inversion.spc, self.model.image_size)
    stacked = bank_lib.stack_teachers(teachers, self.layout)
    if config.inversion.strategy == 'chunks':
      raise ValueError("config.inversion.strategy='chunks' runs the inversion as several "
                       'programs and meta-training needs one per iteration: use auto, loop '
                       'or vmap (for a pool of 100, teachers.per_iter keeps the step small)')
    self.mesh = parallel.teacher_mesh() if config.inversion.shard else None
    self.inv = inversion.make_inversion_step(self.layout, config.inversion, teachers=stacked,
                                             mesh=self.mesh,
                                             per_iter=int(config.teachers.per_iter))
    self.teacher_vars = self.inv.place_teachers(stacked)
    # What the meta-learner sees of the bank (`bank.as_seen`): tasks and PNGs are built from it.
    self.view = (functools.partial(bank_lib.as_seen, layout=self.layout)
                 if config.inversion.native_size else lambda x: x)
    self.tx = outer_optimizer(config.meta, iterations=config.train.iterations)
    self.distiller = distil.from_config(config, teachers, layout=self.layout, stacked=stacked)
    # Independent streams: training iterations (fold_in(rng, it)), the bank's init, PNGs.
    self.rng, self.bank_rng, self.png_rng = jax.random.split(jax.random.key(config.seed), 3)
    self.adv_start = eci.start_iteration(config.eci.start, config.train.iterations)
    step = jax.jit(functools.partial(
        train_step, learner=self.learner, inv=self.inv, tx=self.tx, view=self.view,
        meta_batch=config.meta.meta_batch, task_kw=task_kw(config, self.layout),
        adv_start=self.adv_start, patience=int(config.eci.patience), ema=float(config.eci.ema),
        distiller=self.distiller, **augment.settings(config.train)), donate_argnums=0)
    # ECI's scale is an argument, not a constant: one compiled program serves every scale.
    adv_scale = np.float32(config.eci.adv_scale)  # numpy: replicated over processes too
    self.step = lambda state, teachers, rng: step(state, teachers, rng, adv_scale=adv_scale)

  def init_params(self):
    name = resolve_init(self.config.meta.init, self.teachers, self.model)
    # The same key as the `random` baseline: purer - random isolates meta-training.
    return jax.tree.map(jnp.asarray, evaluate.baseline_params(
        name, self.teachers, self.model, jax.random.key(self.config.seed)))

  def init_state(self) -> dict:
    params = self.init_params()
    images, bank_opt = self.inv.init(self.bank_rng)
    state = {'it': jnp.asarray(0, jnp.int32), 'params': params,
             'opt_state': self.tx.init(params), 'images': images, 'bank_opt': bank_opt,
             'switch': eci.switch_init(self.adv_start)}
    if self.distiller:  # a key no iteration draws (they fold in it >= 0)
      state['distil'] = distil.init_state(self.distiller, self.model, self.tx,
                                          jax.random.fold_in(self.rng, 2 ** 32 - 1))
    return self.place(state)

  def place(self, state: dict) -> dict:
    """The state's arrays where the step expects them, so that the first step compiles the
    program every later one (and a resumed run) runs: on a mesh, the bank and its Adam moments
    sharded over their class axis and the rest replicated; otherwise fresh (uncommitted)."""
    if self.mesh is None:
      return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state)
    bank, replicated = self.inv.bank_sharding(), parallel.replicated(self.mesh)
    def put(a):
      if isinstance(a, jax.Array) and a.sharding in (bank, replicated):
        return a
      a = parallel.to_host(a)
      return parallel.put(a, bank if a.shape == self.layout.shape else replicated)
    return jax.tree.map(put, state)

  def warmup(self, state: dict) -> dict:
    """config.train.warmup inversion-only steps on a fresh bank, so that meta-training starts
    from pseudo images rather than noise."""
    n = int(self.config.train.warmup)
    prog = utils.Progress(n, 'bank warm-up')
    images, bank_opt = state['images'], state['bank_opt']
    for i in range(n):
      images, bank_opt, m = self.inv(images, bank_opt, self.teacher_vars,
                                     jax.random.fold_in(self.bank_rng, i))
      prog.update(i + 1, f"inv {float(m['loss']):.2f} target-acc {float(m['acc']):.3f}")
    return dict(state, images=images, bank_opt=bank_opt)

  def pseudo_episode(self, images, it: int) -> dict:
    return jax.tree.map(np.asarray, eci.sample_task(
        images, jax.random.fold_in(self.png_rng, it), **task_kw(self.config, self.layout)))


class _StopRequest:
  """SIGTERM/SIGINT: finish the iteration, checkpoint, exit. A second signal acts at once."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      self._old[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signum = signum
    signal.signal(signum, self._old[signum])

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


def checkpoint_manager(workdir):
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(
          # Two: a damaged latest checkpoint can be deleted to resume from the one before.
          max_to_keep=2, create=True, cleanup_tmp_directories=True,
          # Synchronous: the step donates the state's buffers right after a save.
          enable_async_checkpointing=False))


def _save(mngr, step: int, tree):
  """Saves checkpoint `step`, then the digest of its files (see purer_jax.workdir)."""
  mngr.save(step, args=ocp.args.StandardSave(tree), force=True)
  if not parallel.is_primary():
    return
  path = os.path.join(mngr.directory, str(step))
  utils.write_json(os.path.join(path, workdir_lib.DIGEST_FILE),
                   {'sha256': workdir_lib.digest(path)})


def _restore(mngr, step: int, target=None):
  """Checkpoint `step` (to `target`'s structure); a damaged one raises an error that names it
  and says how to resume."""
  path = os.path.join(mngr.directory, str(step))
  earlier = [s for s in mngr.all_steps() if s < step]
  fix = (f'delete {path} to resume from checkpoint {earlier[-1]}' if earlier else
         f'delete {path} to meta-train again from iteration 0 (the teachers are kept)')
  what = f'meta-training checkpoint {step}'
  recorded = os.path.join(path, workdir_lib.DIGEST_FILE)
  if os.path.isfile(recorded):
    with open(recorded) as f:
      workdir_lib.verify(path, json.load(f).get('sha256'), what, fix)
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # tensorstore / orbax errors of a truncated or damaged file
    raise workdir_lib.damaged(what, path, e, fix) from None


def _local_target(mngr, step: int):
  """Checkpoint `step`'s arrays as one device of this process holds them, whatever mesh or
  processes saved it (orbax needs a target to restore across topologies)."""
  from etils import epath  # orbax's own path type
  path = epath.Path(os.path.abspath(os.path.join(mngr.directory, str(step), 'default')))
  try:
    tree = ocp.StandardCheckpointHandler().metadata(path).tree
  except Exception:  # unreadable metadata: _restore names the damaged checkpoint
    return None
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), tree)


def load_best(workdir) -> dict:
  """The best meta-val parameters saved by `train` in W/checkpoints (finished or not)."""
  # Checked first: the manager would create the folder.
  mngr = (checkpoint_manager(workdir)
          if os.path.isdir(os.path.join(workdir, 'checkpoints')) else None)
  step = mngr.latest_step() if mngr else None
  if step is None:
    raise FileNotFoundError(f'no training checkpoint in {workdir}/checkpoints: meta-train '
                            'first (python -m purer_jax.main --config=... --workdir=W)')
  best = _restore(mngr, step, _local_target(mngr, step))['best']
  if float(best['val']) < 0:
    raise ValueError(f'checkpoint {step} in {mngr.directory} holds no meta-val evaluation '
                     'yet (config.train.val_every iterations are needed)')
  print(f"best checkpoint: meta-val {float(best['val']):.4f} at iteration {int(best['it'])}")
  return jax.device_get(best['params'])


def _truncate_jsonl(path, start):
  """Drops the records of iterations >= start (written by a run that was then interrupted)
  and a line a kill left half-written."""
  if not os.path.isfile(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except ValueError:
        print(f'{path}: dropped a half-written line ({line.strip()[:60]!r})')
        continue
      if rec.get('it', -1) < start:
        keep.append(line if line.endswith('\n') else line + '\n')
  with open(path, 'w') as f:
    f.writelines(keep)


def train(config, workdir, teachers, *, trainer: Optional[Trainer] = None) -> dict:
  """Meta-trains (resuming from W/checkpoints); returns {'params', 'val', 'it'} of the best
  meta-val evaluation (the final parameters if none ran). `trainer`, built for this config and
  these teachers, lends its compiled step to another run in the same process (tracing the step
  costs seconds)."""
  t = config.train
  if trainer is None:
    trainer = Trainer(config, teachers)
  elif trainer.teachers is not teachers or trainer.built_for != config.to_dict():
    raise ValueError('train(trainer=...) was given a Trainer built for another config or other '
                     'teachers: build one for this run, or leave trainer out')
  print('inversion strategy per teacher group: ' + ', '.join(
      f'{g.size} x {g.arch} ({g.num_classes} classes): {s}'
      for g, s in zip(trainer.layout.groups, trainer.inv.strategies)))
  if trainer.mesh is not None:
    print(f'teachers sharded over {trainer.mesh.size} devices of {jax.process_count()} '
          f'process(es) (this is process {jax.process_index()})')
  state = trainer.init_state()
  # On the host: a copy (the step donates the state's buffers) that every process holds.
  best = {'params': parallel.to_host(state['params']), 'val': np.asarray(-1.0, np.float32),
          'it': np.asarray(-1, np.int32)}
  mngr = checkpoint_manager(workdir)
  start = mngr.latest_step() or 0
  # Under jax.distributed every process runs this loop; process 0 alone writes files (orbax
  # checkpoints are written by all of them together).
  primary = parallel.is_primary()
  if primary:
    workdir_lib.record_run(config, workdir)
  if not start and t.warmup:
    state = trainer.warmup(state)
  if start:
    restored = _restore(mngr, start, {'state': state, 'best': best})
    # Placed anew like the initial state: restored arrays carry another sharding, which would
    # change the compiled program (no compilation cache hit).
    state, best = trainer.place(restored['state']), parallel.to_host(restored['best'])
    print(f'resumed from {mngr.directory}/{start} (best meta-val {float(best["val"]):.4f})')
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if primary:
    _truncate_jsonl(metrics_path, start)
  tb = utils.summary_writer(os.path.join(workdir, 'tb'), purge_step=start, enabled=primary)
  write_jsonl = utils.write_jsonl if primary else lambda *a: None
  val_splits = [data_lib.load(n, 'meta_val', d, s) for n, d, s in data_lib.run_datasets(config)]
  prog = utils.Progress(t.iterations, 'meta-train', start=start)
  window, t_window = [], time.time()

  with _StopRequest() as stop:
    for it in range(start, t.iterations):
      state, m = trainer.step(state, trainer.teacher_vars, trainer.rng)
      m = {k: float(v) for k, v in parallel.to_host(m).items()}
      bad = [k for k in GUARDED if not np.isfinite(m[k]) or (k == 'state_finite' and m[k] != 1)]
      if bad:
        tb.close()
        raise FloatingPointError(
            f'meta-iteration {it}: {bad[0]} is not finite ({m[bad[0]]}; all non-finite: {bad}); '
            f'stopped without saving. The last good checkpoint is step {mngr.latest_step()} '
            f'in {mngr.directory}')
      window.append(m)
      if m['eci/on']:
        write_jsonl(metrics_path, {'it': it, 'event': 'eci_switch_on'})
        tb.add_scalar('eci/switch', 1.0, it)
      done = it + 1
      if done % t.log_every == 0 or done == t.iterations:
        rec = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        rec['it_per_s'] = len(window) / (time.time() - t_window)
        for k, v in rec.items():
          tb.add_scalar(k, v, it)
        write_jsonl(metrics_path, {'it': it, **rec})
        window, t_window = [], time.time()
      if done % t.png_every == 0 or done == t.iterations:
        bank = np.asarray(trainer.view(parallel.to_host(state['images'])))
        ep = trainer.pseudo_episode(bank, it)
        if primary:
          viz.save_episode_png(os.path.join(workdir, f'pseudo_{done:06d}.png'), ep,
                               [trainer.layout.dataset[c] or config.data.dataset
                                for c in ep['classes']])
          viz.save_arch_pngs(os.path.join(workdir, f'pseudo_{done:06d}'), bank, trainer.layout,
                             teachers)
      if done % t.val_every == 0 or done == t.iterations:
        params = parallel.to_host(state['params'])
        val = evaluate.validate_readouts(params, config, val_splits)
        if val['val_acc'] > float(best['val']):
          best = {'params': params, 'val': np.asarray(val['val_acc'], np.float32),
                  'it': np.asarray(done, np.int32)}
        write_jsonl(metrics_path, {'it': it, **val, 'best_val': float(best['val'])})
        for k, v in val.items():
          tb.add_scalar(k.replace('val_acc', 'val/acc'), v, it)
      if done % t.ckpt_every == 0 or done == t.iterations or stop.signum:
        _save(mngr, done, {'state': state, 'best': best})
      prog.update(done, f"loss {m['meta/loss']:.3f} pseudo-acc {m['meta/pseudo_acc']:.3f} "
                        f"inv {m['inv/loss']:.2f} best-val {float(best['val']):.3f}")
      if stop.signum:
        tb.close()
        raise SystemExit(f'stopped by signal {stop.signum} after meta-iteration {it}; '
                         f'checkpoint {done} saved: re-run the same command to resume')
  tb.close()
  if float(best['val']) < 0:  # no meta-val ran (iterations == 0): use the final parameters
    best = {'params': state['params'], 'val': best['val'], 'it': state['it']}
  return parallel.to_host(best)


