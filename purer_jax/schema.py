"""Every config field declared once: type, allowed values, meaning and the module that reads it,
plus the rules that tie fields together; `check` refuses a config before any work.

Defaults stay in purer_jax/config.py (`base()`, changed by scenarios and variants). The
reference page docs/CONFIG.md is generated from these declarations:

  python -m purer_jax.schema docs/CONFIG.md
"""
import math
import sys
from typing import NamedTuple, Optional

import ml_collections

from purer_jax import config as config_lib
from purer_jax import data, utils

# Classes of each meta split and images per class, to check tasks before any data is read:
# CIFAR-FS has 600 per class, the MiniImageNet copy the configs name 100.
SPLIT_CLASSES = {'cifar_fs': {s: len(c) for s, c in data.CIFAR_FS_CLASSES.items()},
                 'mini_imagenet': {'meta_train': 64, 'meta_val': 16, 'meta_test': 20}}
IMAGES_PER_CLASS = {'cifar_fs': 600, 'mini_imagenet': 100}
ARCHS = ('conv4', 'resnet10', 'resnet18', 'resnet34', 'resnet50')
# What `augment.settings` reads from a section's `augment` (teachers' and the meta-batch's).
AUGMENT = ('', 'flip', 'shift', 'flip,shift', 'shift,flip')


class Field(NamedTuple):
  """A config field's declaration."""
  type: type          # int, float, str, bool or tuple
  meaning: str
  owner: str          # the modules that read it
  range: str = ''     # numbers (a tuple's items too): '>= a', '> a' or 'in [a, b)'; '' any
  choices: tuple = ()  # str: its values; tuple: its items
  item: Optional[type] = None  # a tuple's items
  nonempty: bool = False       # a tuple needs an item


_F = Field
FIELDS = {
    'scenario': _F(str, "The scenario: its variants' recipes, its results' label",
                   'config, evaluate', choices=('ss', 'sh', 'mh')),
    'seed': _F(int, "Seed of the teachers' inits and class subsets, the bank, meta-training",
               'pretrain, train', '>= 0'),
    'workdir': _F(str, 'Work directory when --workdir is not given', 'cli'),
    'data.dataset': _F(str, "The meta-learner's dataset: meta-val, meta-test, the pool's teachers",
                       'pretrain, train, evaluate', choices=data.DATASETS),
    'data.data_dir': _F(str, "Folder of data.dataset's splits", 'pretrain, train'),
    'data.source': _F(str, "How data.dataset's splits are read (auto: npz, folders or TFDS)",
                      'pretrain, train', choices=('auto', 'npz', 'folders', 'tfds')),
    'data.extra_dataset': _F(str, "MH: the second dataset teachers come from ('': none)",
                             'pretrain, train', choices=('',) + data.DATASETS),
    'data.extra_data_dir': _F(str, "Folder of data.extra_dataset's splits", 'pretrain, train'),
    'teachers.source': _F(str, 'Teachers trained here, or imported PyTorch checkpoints', 'main',
                          choices=('pretrain', 'torch')),
    'teachers.torch_dir': _F(str, 'Folder of model_{i}.pth files (teachers.source=torch)', 'main'),
    'teachers.archs': _F(tuple, 'Teacher architectures: teacher i gets archs[i % len] (MH: drawn)',
                         'pretrain, zoo', choices=ARCHS, item=str, nonempty=True),
    'teachers.assignment': _F(str, 'Classes per teacher: disjoint blocks, or random subsets (Plus)',
                              'pretrain', choices=('disjoint', 'random')),
    'teachers.num': _F(int, 'Pool size (a disjoint pool stops when the classes run out)',
                       'pretrain, zoo', '>= 1'),
    'teachers.ways': _F(int, 'Classes per teacher', 'pretrain', '>= 2'),
    'teachers.epochs': _F(int, "Epochs of a teacher's training", 'pretrain', '>= 1'),
    'teachers.batch_size': _F(int, "Batch size of a teacher's training", 'pretrain', '>= 1'),
    'teachers.lr': _F(float, "Peak lr of a teacher's training", 'pretrain', '> 0'),
    'teachers.schedule': _F(str, "A teacher's lr schedule: steps at milestones, cosine decay, or "
                            'one-cycle', 'pretrain', choices=('step', 'cosine', 'onecycle')),
    'teachers.label_smoothing': _F(float, "Label smoothing of a teacher's cross-entropy",
                                   'pretrain', 'in [0, 1)'),
    'teachers.together': _F(int, 'Teachers of one shape trained in one compiled program (0: all; '
                            '1: one by one)', 'pretrain', '>= 0'),
    'teachers.milestones': _F(tuple, "Epochs where a teacher's lr is multiplied by gamma",
                              'pretrain', '>= 1', item=int),
    'teachers.gamma': _F(float, "Teacher lr factor at each milestone", 'pretrain', '> 0'),
    'teachers.clip': _F(float, "Global gradient-norm clip of a teacher's training", 'pretrain',
                        '> 0'),
    'teachers.heldout_frac': _F(float, "Images per class held out to pick a teacher's epoch",
                                'pretrain', 'in [0, 1)'),
    'teachers.keep': _F(str, "A teacher's epoch: best held-out accuracy, or last", 'pretrain',
                        choices=('best', 'last')),
    'teachers.max_per_class': _F(int, 'Images per class a teacher trains on (0: all)', 'pretrain',
                                 '>= 0'),
    'teachers.augment': _F(str, "Augmentation of a teacher's training images", 'pretrain',
                           choices=AUGMENT),
    'teachers.shift': _F(int, "Largest translation (px) of a teacher's shift augmentation",
                         'pretrain', '>= 0'),
    'teachers.per_iter': _F(int, "Teachers whose bank classes a meta-iteration refines (0: all)",
                            'train', '>= 0'),
    'meta.algo': _F(str, 'Meta-learning algorithm', 'meta', choices=('maml', 'protonet', 'anil')),
    'meta.arch': _F(str, 'Meta-learner architecture', 'evaluate', choices=ARCHS),
    'meta.init': _F(str, "Meta-learner init (auto: the teachers' average where they fit; "
                    "arch_average: the average of those of the learner's arch; teacher: the best "
                    'held-out one)', 'train', choices=('auto', 'random', 'average',
                                                       'arch_average', 'teacher')),
    'meta.ways': _F(int, 'Classes per task (N-way)', 'train, evaluate', '>= 2'),
    'meta.shots': _F(int, 'Support images per class (K-shot)', 'train, evaluate', '>= 1'),
    'meta.queries': _F(int, 'Query images per class of real tasks (and pseudo ones by default)',
                       'train, evaluate', '>= 1'),
    'meta.train_queries': _F(int, 'Query images per class of pseudo tasks (0: meta.queries)',
                             'train', '>= 0'),
    'meta.inner_lr': _F(float, 'Inner-loop SGD lr', 'meta', '> 0'),
    'meta.inner_steps': _F(int, 'Inner-loop steps in meta-training', 'meta', '>= 0'),
    'meta.test_inner_steps': _F(int, 'Inner-loop steps at meta-val and meta-test', 'meta', '>= 0'),
    'meta.test_inner_lr': _F(float, 'Inner-loop lr at meta-val and meta-test (0: inner_lr)', 'meta',
                             '>= 0'),
    'meta.second_order': _F(bool, 'Meta-gradient through the inner loop', 'meta'),
    'meta.meta_batch': _F(int, 'Pseudo tasks per meta-iteration', 'train', '>= 1'),
    'meta.outer_lr': _F(float, 'Adam lr of the meta-learner', 'train', '> 0'),
    'meta.outer_schedule': _F(str, 'Outer lr: constant, or cosine decay to 0 at train.iterations',
                              'train', choices=('constant', 'cosine')),
    'inversion.spc': _F(int, 'Bank images per pseudo class', 'train, synthesize', '>= 1'),
    'inversion.lr': _F(float, "Adam lr of the bank's pixels", 'inversion', '> 0'),
    'inversion.ce': _F(float, "Weight of the teachers' cross-entropy", 'inversion', '>= 0'),
    'inversion.bn': _F(float, 'Weight of the BatchNorm-statistics term', 'inversion', '>= 0'),
    'inversion.tv': _F(float, 'Weight of the total-variation prior', 'inversion', '>= 0'),
    'inversion.l2': _F(float, 'Weight of the pixel L2 prior', 'inversion', '>= 0'),
    'inversion.jitter': _F(int, 'Random shift (px) of the bank images each step', 'inversion',
                           '>= 0'),
    'inversion.native_size': _F(bool, "MH: small teachers' classes reach the learner as seen at "
                                'their size', 'train'),
    'inversion.strategy': _F(str, "How a teacher group's loss runs (auto: timed; chunks: "
                             'synthesize only)', 'inversion',
                             choices=('auto', 'loop', 'vmap', 'chunks')),
    'inversion.steps': _F(int, 'Inversion steps of purer_jax.synthesize', 'synthesize', '>= 1'),
    'inversion.shard': _F(bool, "Shards the inversion's teachers over every device and process",
                          'train'),
    'eci.start': _F(float, "Where ECI's adversarial term starts, as a fraction of "
                    'train.iterations (1: never)', 'train', 'in [0, 1]'),
    'eci.patience': _F(int, 'Meta-iterations without a better pseudo-query accuracy to fire ECI',
                       'train', '>= 1'),
    'eci.adv_scale': _F(float, "Weight of ECI's adversarial term", 'train', '>= 0'),
    'eci.ema': _F(float, "Decay of the plateau signal's moving average (0: raw)", 'train',
                  'in [0, 1)'),
    'train.iterations': _F(int, 'Meta-iterations (0: the initialisation is evaluated)', 'train',
                           '>= 0'),
    'train.log_every': _F(int, 'Meta-iterations per metrics.jsonl record', 'train', '>= 1'),
    'train.ckpt_every': _F(int, 'Meta-iterations per checkpoint', 'train', '>= 1'),
    'train.val_every': _F(int, 'Meta-iterations per meta-val evaluation', 'train', '>= 1'),
    'train.png_every': _F(int, 'Meta-iterations per pseudo-episode PNG', 'train', '>= 1'),
    'train.val_tasks': _F(int, 'Meta-val tasks per evaluation or tuning trial', 'evaluate', '>= 1'),
    'train.warmup': _F(int, 'Inversion-only bank steps before meta-training', 'train', '>= 0'),
    'train.augment': _F(str, 'Augmentation of the pseudo meta-batch', 'train',
                        choices=AUGMENT),
    'train.shift': _F(int, 'Largest translation (px) of the shift augmentation', 'train', '>= 0'),
    'eval.tasks': _F(int, 'Meta-test tasks per method', 'evaluate', '>= 1'),
    'eval.seed': _F(int, 'Seed of the meta-test tasks (the same for every method)', 'evaluate',
                    '>= 0'),
    'eval.val_seed': _F(int, 'Seed of the meta-val tasks', 'evaluate', '>= 0'),
    'eval.batch': _F(int, 'Tasks per compiled evaluation call', 'evaluate', '>= 1'),
    'eval.methods': _F(tuple, 'Methods meta-tested after meta-training', 'train',
                       choices=('random', 'average', 'ota', 'pool', 'purer', 'purer_proto'),
                       item=str),
    'eval.pool_layers': _F(tuple, "`pool`'s representations, one chosen on meta-val",
                           'evaluate, pool', choices=('features', 'logits', 'both'), item=str,
                           nonempty=True),
    'eval.pool_norms': _F(tuple, "`pool`'s block normalisations, one chosen on meta-val",
                          'evaluate, pool', choices=('l2', 'centred'), item=str, nonempty=True),
    'eval.tune_adapt': _F(bool, "Each tuned method's test-time steps and lr chosen on meta-val",
                          'train'),
    'eval.tune_methods': _F(tuple, 'Methods eval.tune_adapt tunes', 'train',
                            choices=('random', 'average', 'ota', 'purer'), item=str),
    'eval.adapt_steps': _F(tuple, 'Test-time inner steps eval.tune_adapt tries', 'evaluate', '>= 0',
                           item=int, nonempty=True),
    'eval.adapt_lrs': _F(tuple, 'Test-time inner lrs eval.tune_adapt tries', 'evaluate', '> 0',
                         item=float, nonempty=True),
    'distil.weight': _F(float, "Weight of the pool-distillation loss in the outer loss (0: off)",
                        'train, distil', '>= 0'),
    'distil.batch': _F(int, 'Bank images distilled per meta-iteration (at most the bank)',
                       'train, distil', '>= 1'),
    'distil.per_iter': _F(int, 'Teachers drawn per meta-iteration whose blocks are the target '
                          '(0: all)', 'train, distil', '>= 0'),
    'distil.layer': _F(str, "The pool representation the learner regresses onto", 'distil',
                       choices=('features', 'logits', 'both')),
    'icfil.enabled': _F(bool, 'PURER also scored with ICFIL calibration', 'train, icfil'),
    'icfil.tau': _F(float, "Temperature of ICFIL's contrastive loss", 'icfil', '> 0'),
    'icfil.images_per_class': _F(int, 'Pseudo support images ICFIL inverts per class', 'icfil',
                                 '>= 1'),
    'icfil.inv_steps': _F(int, "ICFIL's inversion steps per task", 'icfil', '>= 0'),
    'icfil.cal_steps': _F(int, "ICFIL's calibration steps per task", 'icfil', '>= 0'),
    'icfil.lr': _F(float, "ICFIL's calibration lr", 'icfil', '>= 0'),
}


class ConfigError(utils.UserError):
  """A config value outside its declaration, or fields that contradict each other."""
  status = 2


def leaves(config, prefix: str = '') -> dict:
  """{'group.field': value} of a ConfigDict."""
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(leaves(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _is(value, kind) -> bool:
  if kind in (int, float) and isinstance(value, bool):
    return False
  return isinstance(value, {float: (int, float), tuple: (tuple, list)}.get(kind, kind))


def _within(x, spec: str) -> bool:
  if spec.startswith('>='):
    return x >= float(spec[2:])
  if spec.startswith('>'):
    return x > float(spec[1:])
  low, high = (float(b) for b in spec[4:-1].split(','))
  return (x >= low if spec[3] == '[' else x > low) and (x <= high if spec[-1] == ']' else x < high)


def _allows(f: Field, value) -> bool:
  if not _is(value, f.type) or (f.type is tuple and f.nonempty and not value):
    return False
  kind, items = (f.item, value) if f.type is tuple else (f.type, (value,))
  return all(_is(x, kind) and (kind is not float or math.isfinite(x)) and
             (not f.choices or x in f.choices) and (not f.range or _within(x, f.range))
             for x in items)


def _limits(f: Field) -> str:
  """A field's choices and bounds (of each item, for a tuple), e.g. "from 'a', 'b'", '>= 1'."""
  words = ['from ' + ', '.join(map(repr, f.choices))] if f.choices else []
  return ' '.join(words + ([f.range] if f.range else []))


def _allowed(f: Field) -> str:
  """What `f` allows, in words: 'an int >= 1', "a non-empty tuple of strs from 'a', 'b'"."""
  name = {int: 'int', float: 'finite float', str: 'str', bool: 'bool'}
  if f.type is tuple:
    what = f'a {"non-empty " if f.nonempty else ""}tuple of {name[f.item]}s'
  else:
    what = ('an ' if f.type is int else 'a ') + name[f.type]
  return f'{what} {_limits(f)}'.rstrip()


def _flag(name: str, value) -> str:
  """The command-line flag that sets `name` to `value`, quoted for a shell where needed."""
  if isinstance(value, (tuple, list)):
    text = '(' + ','.join(map(repr, value)) + (',)' if len(value) == 1 else ')')
    return f'"--config.{name}={text}"'
  return f'--config.{name}={value}'


def _problem(name: str, value, need: str, good) -> str:
  # A string is shown bare where the field holds strings, quoted where it is the wrong type.
  bare = isinstance(value, str) and value and FIELDS[name].type is str
  return f'{name}={value if bare else repr(value)}: must be {need}; e.g. {_flag(name, good)}'


def field_problem(name: str, value) -> str:
  """The message for a value `name` does not allow, with its base default as the example."""
  return _problem(name, value, _allowed(FIELDS[name]), leaves(config_lib.base())[name])


# Rules across fields: each returns problems of a config whose fields all pass, [] if none.

def _datasets(c) -> list:
  return [name for name, _, _ in data.run_datasets(c)]


def _real_tasks(c) -> list:
  """Real tasks: meta.ways at most the classes of the smallest meta-val or meta-test split,
  meta.shots + meta.queries at most its images per class."""
  out, ds = [], _datasets(c)
  classes = min(SPLIT_CLASSES[d][s] for d in ds for s in ('meta_val', 'meta_test'))
  if c.meta.ways > classes:
    out.append(_problem('meta.ways', c.meta.ways, f'<= {classes}, the classes of the smallest '
                        f'meta-val or meta-test split of {" and ".join(ds)}', min(5, classes)))
  per_class = min(IMAGES_PER_CLASS[d] for d in ds)
  where = f'the {per_class} images per class of the meta-val and meta-test splits'
  if c.meta.shots >= per_class:
    out.append(_problem('meta.shots', c.meta.shots, f'< {per_class}, with the queries among '
                        + where, 1))
  elif c.meta.shots + c.meta.queries > per_class:
    spare = per_class - c.meta.shots
    out.append(_problem('meta.queries', c.meta.queries, f'<= {spare}: meta.shots + meta.queries '
                        f'are at most {where}', min(15, spare)))
  return out


def _pool_classes(c) -> list:
  """The pool: teachers.ways at most a dataset's meta-train classes; meta.ways at most the
  distinct classes the bank can hold (teachers.num x teachers.ways, capped by meta-train's)."""
  train = [SPLIT_CLASSES[d]['meta_train'] for d in _datasets(c)]
  if c.teachers.ways > min(train):
    return [_problem('teachers.ways', c.teachers.ways, f'<= {min(train)}, the meta-train '
                     'classes of a dataset of the pool', 5)]
  bank = min(c.teachers.num * c.teachers.ways, sum(train))
  if c.meta.ways > bank:
    return [_problem('meta.ways', c.meta.ways, f'<= {bank}, the classes the pool can supply '
                     f'(teachers.num={c.teachers.num} x teachers.ways={c.teachers.ways}, at '
                     f'most {sum(train)})', min(5, bank))]
  return []


def _pseudo_tasks(c) -> list:
  """Pseudo tasks: meta.shots + their queries (meta.train_queries, else meta.queries) at most
  inversion.spc, the bank's images per class."""
  need = c.meta.shots + (c.meta.train_queries or c.meta.queries)
  if need > c.inversion.spc:
    return [_problem('inversion.spc', c.inversion.spc, f'>= meta.shots + '
                     f'{"meta.train_queries" if c.meta.train_queries else "meta.queries"} = '
                     f'{need}, the images of a pseudo task per class', need)]
  return []


def _sharded_pool(c) -> list:
  """inversion.shard shards the whole pool: teachers.per_iter must be 0."""
  if c.inversion.shard and c.teachers.per_iter:
    return [_problem('teachers.per_iter', c.teachers.per_iter,
                     '0 with inversion.shard=True (or set --config.inversion.shard=False)', 0)]
  return []


def _teacher_epoch(c) -> list:
  """teachers.heldout_frac=0 leaves no held-out images to pick the best epoch on:
  teachers.keep must be 'last'."""
  if c.teachers.heldout_frac == 0 and c.teachers.keep == 'best':
    return [_problem('teachers.keep', c.teachers.keep, "'last' with teachers.heldout_frac=0",
                     'last')]
  return []


def _second_dataset(c) -> list:
  """data.extra_dataset is another dataset than data.dataset."""
  if c.data.extra_dataset == c.data.dataset:
    return [_problem('data.extra_dataset', c.data.extra_dataset, f"'' or a dataset other than "
                     f'data.dataset={c.data.dataset}', '')]
  return []


def _icfil_learner(c) -> list:
  """ICFIL calibrates what the learner adapts: icfil.enabled needs meta.algo maml or anil."""
  if c.icfil.enabled and c.meta.algo not in ('maml', 'anil'):
    return [_problem('icfil.enabled', c.icfil.enabled, f'False with meta.algo={c.meta.algo} '
                     '(it adapts no parameters)', False)]
  return []


RULES = (_real_tasks, _pool_classes, _pseudo_tasks, _sharded_pool, _teacher_epoch,
         _second_dataset, _icfil_learner)


def problems(config) -> list:
  """Every problem of `config`, one line each: the field, its value, what it allows and a good
  flag. Fields first; the rules across fields only once every field passes."""
  values = leaves(config)
  out = [f'{k}: not a declared field (purer_jax/schema.py, docs/CONFIG.md)' for k in values
         if k not in FIELDS]
  out += [f'{k}: missing (configs build on purer_jax.config.base())' for k in FIELDS
          if k not in values]
  out += [field_problem(k, v) for k, v in values.items() if k in FIELDS and not
          _allows(FIELDS[k], v)]
  return out or [p for rule in RULES for p in rule(config)]


def check(config):
  """Raises ConfigError naming every problem of `config` (`problems`)."""
  found = problems(config)
  if len(found) > 1:
    raise ConfigError(f'{len(found)} problems:\n' + '\n'.join('  ' + p for p in found))
  if found:
    raise ConfigError(found[0])


def markdown() -> str:
  """docs/CONFIG.md: the fields as one table, then the rules across fields."""
  default = leaves(config_lib.base())
  cell = lambda s: s.replace('|', '\\|')
  lines = ['# Config fields', '',
           'Generated from `purer_jax/schema.py` by `python -m purer_jax.schema docs/CONFIG.md`. '
           'Defaults are `config.base()` (SS); the scenario files and variants change some '
           '(`purer_jax/config.py`). A float must be finite. Every command checks the whole '
           'config (this table, then the rules below it) before any work, and a value outside '
           'them exits with status 2 and a message naming the field.', '',
           '| field | type | range | default | meaning | owner |', '|---|---|---|---|---|---|']
  for name, f in FIELDS.items():
    kind, limits = f.type.__name__, _limits(f)
    if f.type is tuple:
      kind, limits = f'tuple of {f.item.__name__}', f'items {limits}' if limits else ''
      limits = ', '.join(['non-empty'] * f.nonempty + [limits] * bool(limits))
    lines.append(f'| `{name}` | {kind} | {cell(limits)} | `{default[name]!r}` | '
                 f'{cell(f.meaning)} | {f.owner} |')
  lines += ['', '## Rules across fields', '']
  lines += ['- ' + ' '.join(r.__doc__.split()) for r in RULES]
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit('usage: python -m purer_jax.schema docs/CONFIG.md')
  with open(sys.argv[1], 'w') as out_file:
    out_file.write(markdown())
