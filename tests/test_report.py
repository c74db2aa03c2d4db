"""The results page from synthetic results.json files."""
import json
import os
import subprocess
import sys

import pytest

from purer_jax import config as config_lib
from purer_jax import ablation, records, report, time_to_accuracy, utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _methods(**accs):
  return {m: {'acc': a, 'ci95': 0.0068} for m, a in accs.items()}


def _results_dir(tmp_path):
  """docs/results with SS CIFAR-FS 1-shot (every field) and MH 5-shot (no optional fields)."""
  results = tmp_path / 'docs' / 'results'
  config = config_lib.build('ss', 'quick')
  config.teachers.max_per_class = 200
  config.eval.batch = 50  # not protocol: no deviation
  config.meta.test_inner_lr = config.meta.inner_lr  # the paper's, spelt out
  config.train.augment = 'flip'
  config.teachers.per_iter = 4
  utils.write_json(str(results / 'ss_cifar' / 'results.json'), {
      'scenario': 'ss', 'dataset': 'cifar_fs', 'ways': 5, 'shots': 1, 'tasks': 600,
      'methods': _methods(random=0.2213, average=0.2486, ota=0.2512, pool=0.40, purer=0.3295,
                          **{'purer+icfil': 0.3301}),
      'paired': {'purer-random': {'mean_diff': 0.1082, 'ci95': 0.0071},
                 'purer-average': {'mean_diff': 0.0809, 'ci95': 0.0069},
                 'purer-ota': {'mean_diff': 0.0783, 'ci95': 0.0072},
                 'purer-pool': {'mean_diff': -0.0705, 'ci95': 0.0066},
                 'purer+icfil': {'mean_diff': 0.0006, 'ci95': 0.0011}},
      'cost_gflop': {'random': 0.696, 'average': 0.696, 'ota': 0.696, 'purer': 0.696,
                     'pool': 7.816},
      # The tuned column: two tuned methods and the pool, scored the same in both.
      'tuned': {'methods': _methods(random=0.3366, purer=0.3400, pool=0.40),
                'paired': {'purer-random': {'mean_diff': 0.0034, 'ci95': 0.006}}},
      'best_val': 0.3412, 'best_it': 1750, 'iterations': 2000, 'init': 'average',
      'config': json.loads(config.to_json_best_effort()),
      'timing': {'meta_train_s': 1500.0, 'eval_s': 290.0, 'teachers_train_s': 600.0,
                 'wall_time_s': 2400.0},
      'provenance': {'commit': '0123456789abcdef0123456789abcdef01234567', 'dirty': False},
      'teachers_source': {'trained': 'in this run', 'seconds': 600.0},
      'teachers_heldout': [0.6, 0.7, 0.8]})
  (results / 'ss_cifar' / 'pseudo_conv4.png').write_bytes(b'\x89PNG')
  mh = {'scenario': 'mh', 'dataset': 'cifar_fs', 'ways': 5, 'shots': 5, 'tasks': 100,
        'methods': _methods(random=0.21, purer=0.31),
        'paired': {'purer-random': {'mean_diff': 0.10, 'ci95': 0.008}},
        'tuned': {'methods': _methods(random=0.25, purer=0.33)},
        'by_dataset': {'cifar_fs': _methods(random=0.21, purer=0.31),
                       'mini_imagenet': _methods(random=0.23, purer=0.29)}}
  utils.write_json(str(results / 'mh_5shot' / 'results.json'), mh)
  utils.write_json(str(results / 'mh_5shot' / 'mini_imagenet' / 'results.json'), dict(
      mh, dataset='mini_imagenet', methods=mh['by_dataset']['mini_imagenet'],
      tuned={'methods': _methods(random=0.27, purer=0.30)},
      paired={'purer-random': {'mean_diff': 0.06, 'ci95': 0.006}}))
  (results / 'notes').mkdir()  # a folder without results.json is not a cell
  return results


def test_page_numbers_and_missing_cells(tmp_path):
  out = report.write(str(_results_dir(tmp_path)))
  assert out == str(tmp_path / 'docs' / 'RESULTS.md')
  page = open(out).read()
  lines = page.splitlines()
  row = lambda *prefix: next(l for l in lines if l.startswith('| ' + ' | '.join(prefix)))
  assert row('SS', 'CIFAR-FS', 'Random') == (
      '| SS | CIFAR-FS | Random | 22.13 ± 0.68 | 33.66 ± 0.68 | 21.65 ± 0.45 | 0.70 | '
      'not run yet | — | 21.59 ± 0.45 | — |')
  # Each column on its own: a method the run did not tune has no tuned score.
  assert '| OTA | 25.12 ± 0.68 | — | 28.12 ± 0.62 / 29.10 ± 0.65 | 0.70 | not run yet |' in page
  assert '| Pool read-out | 40.00 ± 0.68 | 40.00 ± 0.68 | — | 7.82 | not run yet | — |' in page
  assert '| PURER | **32.95 ± 0.68** | 34.00 ± 0.68 | 38.66 ± 0.78 |' in page  # the cell's
  assert '| PURER+ICFIL | 33.01 ± 0.68 | — | — | — | not run yet | — | — | — |' in page
  assert ('| DRO‡ | quoted, not measured here | — | 23.92 ± 0.49 | — | quoted, not measured '
          'here | — | 24.34 ± 0.49 | — |') in page
  # SS MiniImageNet: nothing ran; the paper's figures and the 100-vs-600 note are there.
  assert row('SS', 'MiniImageNet†', 'Random') == (
      '| SS | MiniImageNet† | Random | not run yet | — | 22.45 ± 0.41 | — | not run yet | — | '
      '23.48 ± 0.45 | — |')
  assert '100 images per class where the paper\'s has 600' in page
  # MH: the mean of both meta-test sets, CI of a mean of independent estimates.
  assert row('MH', 'mixed†', 'Random') == (
      '| MH | mixed† | Random | not run yet | — | 21.11 | — | 22.00 ± 0.48 | 26.00 ± 0.48 | '
      '21.34 | — |')
  assert '| SH MiniImageNet 5-shot | not run yet |' + ' |' * 8 in page
  assert ('| SS CIFAR-FS 1-shot | `ss_cifar` | 600 | +10.82 ± 0.71 | -7.05 ± 0.66 (Pool read-out) '
          '| +0.06 ± 0.11 | 1,750 of 2,000 | 40 min (teachers 10 min, meta-training 25 min, '
          'meta-test 5 min) | 70.0% (min 60.0, max 80.0; 3 teachers) '
          '| `0123456789` |') in page
  assert ('| MH mixed 5-shot | `mh_5shot` | 100 | +8.00 ± 0.50 | +8.00 ± 0.50 (Random) | — | — '
          "| the teachers' source is not recorded | — | — |") in page
  assert '| MiniImageNet | 23.00 ± 0.68 | 29.00 ± 0.68 | +6.00 ± 0.60 |' in page
  # Deviations come from the recorded config; MH recorded none.
  assert '- `train.iterations` = 2,000 (paper: 60,000)' in page
  assert '- `teachers.epochs` = 15 (paper: 60)' in page
  assert '- `teachers.milestones` = (8, 12) (paper: (30, 40, 50))' in page
  assert '- `teachers.max_per_class` = 200 (paper: all images)' in page
  assert '- `train.val_every` = 250 (default: 500)' in page
  assert '- `train.augment` = \'flip\' (paper: none)' in page
  assert '- `teachers.per_iter` = 4 (paper: all teachers)' in page
  assert not any(k in page for k in ('eval.batch', 'inversion.spc', 'test_inner_lr'))
  assert 'meta-learner init: average; best meta-val accuracy: 34.12%.' in page
  assert 'unknown (this results.json records no `config`)' in page
  assert '![pseudo_conv4.png](results/ss_cifar/pseudo_conv4.png)' in page
  assert 'notes' not in page


def test_icfil_score_kept_beside_a_cell(tmp_path):
  """A `tune_icfil --test` score of the cell's checkpoint fills its PURER+ICFIL, paired with
  PURER; one of another checkpoint, or beside a run that scored ICFIL itself, is refused."""
  results = _results_dir(tmp_path)
  icf = {'scenario': 'mh', 'dataset': 'cifar_fs', 'ways': 5, 'shots': 5, 'tasks': 100,
         'methods': _methods(purer=0.31, **{'purer+icfil': 0.33}),
         'paired': {'purer+icfil': {'mean_diff': 0.02, 'ci95': 0.004}},
         'icfil': {'settings': {'tau': 0.5, 'lr': 0.001}, 'tuned_on': 'meta_val'}}
  utils.write_json(str(results / 'mh_5shot' / 'icfil_5shot' / 'results.json'), icf)
  (results / 'mh_5shot' / 'icfil_5shot' / 'icfil_task0.png').write_bytes(b'\x89PNG')
  page = open(report.write(str(results))).read()
  assert '| MiniImageNet | 23.00 ± 0.68 | 29.00 ± 0.68 | — | +6.00 ± 0.60 |' in page
  assert '| CIFAR-FS | 21.00 ± 0.68 | 31.00 ± 0.68 | 33.00 ± 0.68 | +10.00 ± 0.80 |' in page
  assert 'PURER+ICFIL on CIFAR-FS: `tune_icfil --params=best --test`' in page
  assert 'chosen on meta-val: lr 0.001, tau 0.5.' in page
  icfil_png = '![icfil_task0.png](results/mh_5shot/icfil_5shot/icfil_task0.png)'
  assert page.index('ICFIL, meta-test task 0') < page.index(icfil_png)
  # MH's mixed cell needs ICFIL on both meta-test sets.
  assert '| MH mixed 5-shot | `mh_5shot` | 100 | +8.00 ± 0.50 | +8.00 ± 0.50 (Random) | — |' in page
  utils.write_json(str(results / 'mh_5shot' / 'mini_imagenet' / 'icfil_5shot' / 'results.json'),
                   dict(icf, dataset='mini_imagenet', methods=_methods(
                       purer=0.29, **{'purer+icfil': 0.30}), paired={'purer+icfil': {
                           'mean_diff': 0.01, 'ci95': 0.003}}))
  page = open(report.write(str(results))).read()
  assert '|  |  | PURER+ICFIL | not run yet | — | — | — | 31.50 ± 0.48 | — | — | — |' in page
  assert '| +8.00 ± 0.50 (Random) | +1.50 ± 0.25 |' in page
  utils.write_json(str(results / 'mh_5shot' / 'icfil_5shot' / 'results.json'),
                   dict(icf, methods=_methods(purer=0.35, **{'purer+icfil': 0.36})))
  with pytest.raises(ValueError, match=r'plain PURER \(35.00 ± 0.68\) is not the cell\'s '
                     r'\(31.00 ± 0.68\).*re-run `tune_icfil --params=best --test`'):
    report.write(str(results))
  (results / 'mh_5shot' / 'icfil_5shot' / 'results.json').unlink()
  utils.write_json(str(results / 'ss_cifar' / 'icfil_1shot' / 'results.json'),
                   dict(icf, scenario='ss', shots=1, tasks=600))
  with pytest.raises(ValueError, match=r'scored PURER\+ICFIL already: keep one'):
    records.load_cells(str(results))


def test_rerun_reproduces_the_page_byte_for_byte(tmp_path):
  results = _results_dir(tmp_path)
  first = open(report.write(str(results)), 'rb').read()
  other = tmp_path / 'elsewhere.md'
  assert open(report.write(str(results), str(other)), 'rb').read() == first.replace(
      b'](results/', b'](docs/results/')  # links are relative to the page
  assert open(report.write(str(results)), 'rb').read() == first


def test_readme_headline_between_its_marks(tmp_path):
  results = _results_dir(tmp_path)
  readme = tmp_path / 'README.md'
  before, after = '# project\n\nintro\n', '\nrest\n'
  readme.write_text(before + report.HEADLINE_MARKS[0] + '\nstale\n' + report.HEADLINE_MARKS[1]
                    + after)
  report.write(str(results))
  text = readme.read_text()
  assert text.startswith(before + report.HEADLINE_MARKS[0]) and 'stale' not in text
  assert text.endswith(report.HEADLINE_MARKS[1] + after)
  rows = {tuple(r.split(' | ')[:3]): r for r in text.splitlines() if r.startswith('| ')}
  # The pool: its score, PURER's paired difference to it, both costs; the best other baseline.
  assert rows['| SS', 'CIFAR-FS', '1'] == (
      '| SS | CIFAR-FS | 1 | **32.95 ± 0.68** (38.66 ± 0.78) | 40.00 ± 0.68 | -7.05 ± 0.66 | '
      '0.70 / 7.82 | +7.83 ± 0.72 (OTA) |')
  assert rows['| SS', 'CIFAR-FS', '5'] == '| SS | CIFAR-FS | 5 | not run yet |  |  |  |  |'
  # MH: the mean of its two meta-test sets; its paired difference needs both sets'.
  assert ('| MH | mixed† | 5 | **30.00 ± 0.48** (33.10 ± 0.69) | not scored | — | — / — |'
          in text)
  assert ('PURER wins in 0, loses in 1 and ties in 0 of the 1 cells scored with it (paired 95% '
          'CI), by -7.05 to -7.05 points') in text
  assert 'on 100/600 meta-test tasks per cell' in text
  assert '[docs/RESULTS.md](docs/RESULTS.md)' in text
  report.write(str(results))
  assert readme.read_text() == text  # byte for byte
  readme.write_text('no marks\n')
  report.write(str(results))
  assert readme.read_text() == 'no marks\n'


@pytest.mark.slow
def test_cli_writes_beside_the_results_folder(tmp_path):
  results = _results_dir(tmp_path)
  out = subprocess.run([sys.executable, '-m', 'purer_jax.report', 'docs/results'],
                       cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr
  assert (tmp_path / 'docs' / 'RESULTS.md').read_text() == report.render(
      records.load_cells(str(results)), str(tmp_path / 'docs'))


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='no results folder'):
    report.write(str(tmp_path / 'nope'))
  results = _results_dir(tmp_path)
  dup = json.load(open(results / 'mh_5shot' / 'results.json'))
  utils.write_json(str(results / 'mh_again' / 'results.json'), dup)
  with pytest.raises(ValueError, match='both MH mixed 5-shot: keep one'):
    report.write(str(results))
  utils.write_json(str(results / 'mh_again' / 'results.json'), dict(dup, ways=20))
  with pytest.raises(ValueError, match='20-way 5-shot is not a cell'):
    report.write(str(results))


def _run(config, scores, best_val, **extra):
  return {'scenario': 'ss', 'dataset': 'cifar_fs', 'ways': 5, 'shots': 1, 'tasks': len(scores),
          'methods': _methods(purer=sum(scores) / len(scores)), 'best_val': best_val,
          'init': 'average', 'config': json.loads(config.to_json_best_effort()),
          'per_task': {'purer': scores}, 'timing': {'wall_time_s': 600.0},
          'val_curve': [{'it': 250, 'val_acc': best_val, 'minutes': 4.0}], **extra}


def test_ablation_pairs_each_run_with_the_quick_control(tmp_path):
  results = tmp_path / 'docs' / 'results'
  quick = config_lib.build('ss', 'quick')
  quick.eval.tune_adapt = True  # evaluation settings are not levers
  control = [0.2, 0.4, 0.6, 0.4]
  utils.write_json(str(results / 'quick' / 'results.json'), _run(
      quick, control, 0.30, per_task={'purer': [0.3, 0.4, 0.6, 0.5], 'purer_untuned': control},
      methods=_methods(purer=0.45, purer_untuned=0.40),
      adaptation={'purer': {'steps': 5, 'lr': 0.03, 'val_acc': 0.31}}))
  # ICFIL follows config.meta's adaptation: its plain PURER is the untuned score.
  utils.write_json(str(results / 'quick' / 'icfil_1shot' / 'results.json'), {
      'tasks': 4, 'methods': _methods(purer=0.40, **{'purer+icfil': 0.42}),
      'paired': {'purer+icfil': {'mean_diff': 0.02, 'ci95': 0.01}},
      'icfil': {'settings': {'tau': 0.5, 'lr': 0.001}, 'tuned_on': 'meta_val'}})
  aug = config_lib.build('ss', 'quick')
  aug.train.augment, aug.train.warmup = 'flip,shift', 100
  utils.write_json(str(results / 'ablation' / 'aug' / 'results.json'),
                   _run(aug, [0.3, 0.4, 0.7, 0.6], 0.33))
  report.write(str(results))
  page = (tmp_path / 'docs' / 'ABLATION.md').read_text()
  rows = {l.split(' | ')[0].strip('| `'): l for l in page.splitlines() if l.startswith('| `')}
  assert 'control (`:quick`)' in rows['quick'] and '40.00 ±' in rows['quick']
  # aug - control = (.1, 0, .1, .2): mean +10.00; its changes name both levers, nothing else.
  assert "`train.augment` '' → 'flip,shift'; `train.warmup` 0 → 100" in rows['ablation/aug']
  assert '| +10.00 ± ' in rows['ablation/aug'] and '| 33.00 |' in rows['ablation/aug']
  tuned = next(l for l in page.splitlines() if 'tuned adaptation' in l)
  assert 'test-time 5 steps at lr 0.03' in tuned and '+5.00 ±' in tuned
  icfil_row = next(l for l in page.splitlines() if '+ ICFIL' in l)
  assert '| 42.00 ± 0.68 | +2.00 ± 1.00 (vs the same run) |' in icfil_row
  assert '## 5-shot\n\nNo `:quick` control run yet.' in page
  levers = {l.split(' | ')[0][2:]: l for l in page.splitlines() if l.startswith('| ')}
  assert levers['pseudo-image augmentation'].endswith('| `ablation/aug` | not measured yet |')
  assert '| `ablation/aug` |' in levers['inversion-only warm-up']
  assert '| `quick` |' in levers['test-time inner steps and lr']
  assert '| not measured yet | not measured yet |' in levers['ECI']
  assert (tmp_path / 'docs' / 'figures' / 'time_to_accuracy.png').stat().st_size > 1000


def test_a_resumed_run_counts_every_segment():
  whole = {'timing': {'wall_time_s': 3000.0, 'teachers_train_s': 600.0, 'meta_train_s': 2100.0,
                      'eval_s': 300.0}, 'teachers_source': {'trained': 'in this run'}}
  assert records.wall_time(whole) == '50 min (teachers 10 min, meta-training 35 min, meta-test 5 min)'
  # A record that does not say where its teachers came from says so.
  assert records.wall_time({'timing': whole['timing']}).endswith(
      "meta-test 5 min; the teachers' source is not recorded)")
  # Each segment of a meta-training that was interrupted and resumed.
  segmented = dict(whole, timing=dict(whole['timing'], segments=[
      {'from_it': 0, 'to_it': 40, 'wall_s': 600.0, 'interrupted': True},
      {'from_it': 40, 'to_it': 100, 'wall_s': 1500.0}]))
  assert records.wall_time(segmented).endswith(
      'meta-test 5 min; meta-training in 2 segments: 10 min (interrupted), 25 min)')
  # The last command ran 1 h of a 2 h meta-training: the total sums the logged windows.
  resumed = dict(whole, timing=dict(whole['timing'], wall_time_s=3900.0, meta_train_s=3600.0,
                                    resumed_at=80, meta_train_logged_s=7200.0))
  assert records.wall_time(resumed) == ('2 h 15 min (teachers 10 min, meta-training 2 h 00 min, '
                                        'meta-test 5 min; summed: resumed at iteration 80)')
  # A resumed run lists its segments too, and says when its teachers' source is missing.
  resumed['timing']['segments'] = segmented['timing']['segments']
  del resumed['teachers_source']
  assert records.wall_time(resumed) == (
      '2 h 15 min (teachers 10 min, meta-training 2 h 00 min, meta-test 5 min; summed: resumed '
      'at iteration 80; meta-training in 2 segments: 10 min (interrupted), 25 min; the '
      "teachers' source is not recorded)")
  # Teachers from an earlier command: named, not counted.
  reused = dict(whole, timing=dict(whole['timing'], wall_time_s=2400.0, teachers_reused=True))
  assert records.wall_time(reused) == ('40 min (teachers reused, 10 min when trained earlier, '
                                       'not counted, meta-training 35 min, meta-test 5 min)')
  reused['timing'].update(resumed_at=80, meta_train_logged_s=7200.0)
  assert records.wall_time(reused).startswith('2 h 05 min (teachers reused')


def test_the_control_is_found_in_a_record_older_than_placement_fields():
  # A run recorded before `inversion.shard` existed is still the `:quick` control.
  old = config_lib.build('ss', 'quick').to_dict()
  del old['inversion']['shard']
  # Levers added later take their defaults, which keep the old behaviour.
  del old['meta']['train_queries'], old['inversion']['native_size']
  run = {'name': 'quick', 'res': {'shots': 1, 'config': old, 'init': 'average'}}
  assert ablation.find_controls([run], 1) == [run]
  new = config_lib.build('ss', 'quick')
  new.meta.train_queries = 3
  assert ablation.changes({'config': new.to_dict(), 'init': 'average'}, run['res']) == [
      '`meta.train_queries` 0 → 3']


def test_eci_settings_that_never_switch_on_are_no_change():
  quick = {'config': config_lib.build('ss', 'quick,5shot').to_dict(), 'init': 'average'}
  # :budget,5shot keeps budget's ECI fields but starts ECI at its last iteration.
  off = {'config': config_lib.build('ss', 'budget,5shot').to_dict(), 'init': 'average'}
  assert not [c for c in ablation.changes(off, quick) if 'eci.' in c]
  assert not ablation._lever_runs([({'name': 'b5', 'res': off}, {'res': quick})], ('eci.',))
  # At 1-shot :budget switches ECI on, so its fields are changes from :quick.
  on = {'config': config_lib.build('ss', 'budget').to_dict(), 'init': 'average'}
  quick_1shot = {'config': config_lib.build('ss', 'quick').to_dict(), 'init': 'average'}
  assert '`eci.start` 1 → 0.0416667' in ablation.changes(on, quick_1shot)


def test_each_run_is_paired_with_the_control_on_its_teachers(tmp_path):
  results = tmp_path / 'docs' / 'results'
  quick, budget = config_lib.build('ss', 'quick'), config_lib.build('ss', 'budget')
  utils.write_json(str(results / 'ss_quick' / 'results.json'),
                   _run(quick, [0.2, 0.4, 0.6, 0.4], 0.30, teachers_heldout=[0.8, 0.9]))
  utils.write_json(str(results / 'ablation' / 'quick_again' / 'results.json'),
                   _run(quick, [0.4, 0.4, 0.4, 0.4], 0.31, teachers_heldout=[0.7, 0.9]))
  utils.write_json(str(results / 'ablation' / 'budget' / 'results.json'),
                   _run(budget, [0.5, 0.5, 0.5, 0.6], 0.35, teachers_heldout=[0.7, 0.9]))
  utils.write_json(str(results / 'ablation' / 'eci' / 'results.json'),
                   _run(budget, [0.5, 0.5, 0.5, 0.6], 0.35, teachers_heldout=[0.6, 0.9]))
  last = config_lib.build('ss', 'quick')
  last.teachers.keep = 'last'
  utils.write_json(str(results / 'ablation' / 'last_epoch' / 'results.json'),
                   _run(last, [0.2, 0.4, 0.6, 0.5], 0.30, teachers_heldout=[0.75, 0.9]))
  page = ablation.render(ablation.load_runs(str(results)))
  rows = {l.split(' | ')[0].strip('| `'): l for l in page.splitlines() if l.startswith('| `')}
  # budget - quick_again (its teachers) = (.1, .1, .1, .2): +12.50, not the first control's.
  assert '(control `ablation/quick_again`, the same teachers)' in rows['ablation/budget']
  assert '| +12.50 ± ' in rows['ablation/budget']
  assert "`meta.outer_schedule` 'constant' → 'cosine'" in rows['ablation/budget']
  assert '(control `ss_quick`, other teachers of its recipe)' in rows['ablation/eci']
  assert ("`teachers.keep` 'best' → 'last' (control `ss_quick`, its teachers by the changed "
          'recipe)') in rows['ablation/last_epoch']
  assert '| — |' in rows['ablation/quick_again'] and '| — |' in rows['ss_quick']
  order = [l.split(' | ')[0] for l in page.splitlines() if l.startswith('| `')]
  assert order == ['| `ss_quick`', '| `ablation/eci`', '| `ablation/last_epoch`',
                   '| `ablation/quick_again`', '| `ablation/budget`']


def test_a_run_that_names_its_control_is_paired_with_it(tmp_path):
  """Two controls on the same teachers (another code, another session): the run goes with the
  one its teachers were copied from, not the first; a name no control answers is an error."""
  results = tmp_path / 'docs' / 'results'
  quick, budget = config_lib.build('ss', 'quick'), config_lib.build('ss', 'budget')
  for name, accs in (('ss_quick', [0.2, 0.4, 0.6, 0.4]),
                     ('ablation/quick_again', [0.4, 0.4, 0.4, 0.4])):
    utils.write_json(str(results / name / 'results.json'),
                     _run(quick, accs, 0.30, teachers_heldout=[0.8, 0.9]))
  run = _run(budget, [0.5, 0.5, 0.5, 0.6], 0.35, teachers_heldout=[0.8, 0.9],
             control='ablation/quick_again')
  utils.write_json(str(results / 'ablation' / 'budget' / 'results.json'), run)
  page = ablation.render(ablation.load_runs(str(results)))
  rows = {l.split(' | ')[0].strip('| `'): l for l in page.splitlines() if l.startswith('| `')}
  assert '(control `ablation/quick_again`, the same teachers)' in rows['ablation/budget']
  assert '| +12.50 ± ' in rows['ablation/budget']
  # The second control on those teachers measures the run-to-run noise: (.2, 0, -.2, 0).
  assert 'run again on the teachers of `ss_quick`' in rows['ablation/quick_again']
  assert '| +0.00 ± 13.86 |' in rows['ablation/quick_again'] and '| — |' in rows['ss_quick']
  utils.write_json(str(results / 'ablation' / 'budget' / 'results.json'),
                   dict(run, control='ablation/gone'))
  with pytest.raises(ValueError, match="names control 'ablation/gone'"):
    ablation.render(ablation.load_runs(str(results)))


def test_an_icfil_score_beside_a_run_is_its_own_ablation_row(tmp_path):
  results = tmp_path / 'docs' / 'results'
  quick, budget = config_lib.build('ss', 'quick'), config_lib.build('ss', 'budget')
  utils.write_json(str(results / 'quick' / 'results.json'), _run(quick, [0.2, 0.4, 0.6, 0.4], 0.3))
  utils.write_json(str(results / 'ablation' / 'budget' / 'results.json'),
                   _run(budget, [0.5, 0.5, 0.5, 0.6], 0.35))
  icf = {'scenario': 'ss', 'dataset': 'cifar_fs', 'ways': 5, 'shots': 1, 'tasks': 4,
         'methods': _methods(purer=0.525, **{'purer+icfil': 0.55}),
         'paired': {'purer+icfil': {'mean_diff': 0.025, 'ci95': 0.01}},
         'icfil': {'settings': {'tau': 0.5, 'lr': 0.001, 'enabled': False},
                   'tuned_on': 'meta_val'}}
  utils.write_json(str(results / 'ablation' / 'budget' / 'icfil_1shot' / 'results.json'), icf)
  page = ablation.render(ablation.load_runs(str(results)))
  row = next(l for l in page.splitlines() if l.startswith('| `ablation/budget` + ICFIL |'))
  assert '(lr 0.001, tau 0.5), chosen on meta-val' in row
  assert '| 55.00 ± 0.68 | +2.50 ± 1.00 (vs the same run) |' in row
  # A score of another checkpoint (its plain PURER is not the run's) is refused.
  utils.write_json(str(results / 'ablation' / 'budget' / 'icfil_1shot' / 'results.json'),
                   dict(icf, methods=_methods(purer=0.4, **{'purer+icfil': 0.55})))
  with pytest.raises(ValueError, match='is not the cell'):
    ablation.render(ablation.load_runs(str(results)))


def test_against_the_pool_takes_the_read_out_meta_val_chose(tmp_path):
  results = tmp_path / 'results'
  quick = config_lib.build('ss', 'quick')
  pool = [0.6, 0.6, 0.6, 0.6]
  utils.write_json(str(results / 'quick' / 'results.json'), _run(
      quick, [0.2, 0.4, 0.6, 0.4], 0.30, per_task={'purer': [0.2, 0.4, 0.6, 0.4], 'pool': pool},
      pool_variant={'layer': 'both', 'norm': 'l2', 'metric': 'cosine', 'val_acc': 0.5}))
  # The prototype read-out wins on meta-val (0.34 > 0.33) though MAML's head scores more here.
  distil = config_lib.build('ss', 'quick,distil')
  utils.write_json(str(results / 'ablation' / 'distil' / 'results.json'), _run(
      distil, [0.7, 0.7, 0.7, 0.7], 0.33, readout_val={'purer': 0.33, 'purer_proto': 0.34},
      per_task={'purer': [0.7, 0.7, 0.7, 0.7], 'purer_proto': [0.5, 0.7, 0.6, 0.6], 'pool': pool},
      pool_variant={'layer': 'both', 'norm': 'l2', 'metric': 'cosine', 'val_acc': 0.5}))
  assert records.learner_choice({'readout_val': {'purer': 0.33, 'purer_proto': 0.34}}) == \
      'purer_proto'
  assert records.learner_choice({}) == 'purer'
  page = ablation.render(ablation.load_runs(str(results)))
  section = page[page.index('## Against the pool'):page.index('## Levers')]
  rows = {l.split(' | ')[0].strip('| `'): l for l in section.splitlines() if l.startswith('| `')}
  assert '| prototype | 60.00 ± ' in rows['ablation/distil']
  assert '| -0.00 ± ' in rows['ablation/distil'] or '| +0.00 ± ' in rows['ablation/distil']
  assert '| MAML head | 40.00 ± ' in rows['quick'] and '| -20.00 ± ' in rows['quick']
  assert ('**No learner beats the pool at 1-shot yet.** The closest is `ablation/distil` '
          '(prototype)') in section
  assert '5-shot' not in section


def test_time_to_accuracy_starts_at_an_empty_workdir(tmp_path):
  """Only runs that trained their teachers count; the curve starts after the minutes before
  meta-training and is stretched to the recorded meta-training time; a run's `time_control`
  gives the pair's ratio of wall times."""
  results = tmp_path / 'docs' / 'results'
  timing = lambda wall: {'wall_time_s': wall, 'meta_train_s': 600.0, 'eval_s': 60.0}
  curve = [{'it': 500, 'val_acc': 0.30, 'minutes': 4.0}, {'it': 1000, 'val_acc': 0.32,
                                                          'minutes': 8.0}]
  trained = {'trained': 'in this run', 'seconds': 100.0}
  quick = config_lib.build('ss', 'quick')
  utils.write_json(str(results / 'quick' / 'results.json'), _run(
      quick, [0.3, 0.4], 0.32, timing=timing(2400.0), val_curve=curve, iterations=1000,
      teachers_source=trained))
  utils.write_json(str(results / 'ablation' / 'fast' / 'results.json'), _run(
      config_lib.build('ss', 'fast'), [0.4, 0.5], 0.32, timing=timing(800.0), val_curve=curve,
      iterations=1000, teachers_source=trained, time_control='quick'))
  utils.write_json(str(results / 'ablation' / 'reused' / 'results.json'), _run(
      quick, [0.4, 0.5], 0.32, timing=timing(800.0), val_curve=curve, iterations=1000,
      teachers_source={'reused': 'quick', 'seconds': 100.0}))
  runs = ablation.load_runs(str(results))
  assert [r['name'] for r in time_to_accuracy.from_empty(runs)] == ['ablation/fast', 'quick']
  points, end = time_to_accuracy.timeline(runs[0]['res'])
  # 800 s: 140 s before meta-training, 600 s of it (the logged 8 minutes stretched to 10).
  assert points == [(140 / 60 + 5.0, 30.0), (140 / 60 + 10.0, 32.0)] and end == 800 / 60
  report.write(str(results))
  page = (tmp_path / 'docs' / 'ABLATION.md').read_text()
  section = page[page.index('## Time to accuracy'):page.index('## Levers')]
  assert '`ablation/reused`' not in section
  assert ('`ablation/fast` against `quick`, both from empty workdirs the same day: 45.00 '
          'against 35.00 on meta-test') in section and '**×0.33**' in section
  assert (tmp_path / 'docs' / 'figures' / 'time_to_accuracy_from_empty.png').stat().st_size > 1000


def test_headline_shows_the_read_out_meta_val_chose(tmp_path):
  """Where the prototype read-out won on meta-val, the headline's PURER is it, paired with the
  pool and the baselines on its own per-task scores, at its own cost."""
  results = tmp_path / 'results'
  per = {'random': [0.2, 0.2, 0.3, 0.3], 'pool': [0.5, 0.4, 0.5, 0.6],
         'purer': [0.3, 0.3, 0.3, 0.3], 'purer_proto': [0.4, 0.4, 0.4, 0.4]}
  utils.write_json(str(results / 'cell' / 'results.json'), dict(
      scenario='ss', dataset='cifar_fs', ways=5, shots=1, tasks=4, per_task=per,
      methods={m: dict(zip(('acc', 'ci95'), records.summary(v))) for m, v in per.items()},
      paired={'purer-pool': {'mean_diff': -0.2, 'ci95': 0.05}},
      readout_val={'purer': 0.30, 'purer_proto': 0.31},
      cost_gflop={'purer': 0.7, 'purer_proto': 0.62, 'pool': 7.8}))
  row = next(l for l in report.headline(records.load_cells(str(results)), 'p').splitlines()
             if l.startswith('| SS | CIFAR-FS | 1'))
  assert row.startswith('| SS | CIFAR-FS | 1 | **40.00 ± 0.00**, prototype (38.66 ± 0.78) | '
                        '50.00 ± 6.93 | -10.00 ± 6.93 | 0.62 / 7.80 | +15.00 ± ')
  assert row.endswith(' (Random) |')
