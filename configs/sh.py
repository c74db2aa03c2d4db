"""SH: same data (CIFAR-FS), heterogeneous teachers (conv4 / resnet10 / resnet18 by i % 3).

  python -m purer_jax.main --config=configs/sh.py:smoke --workdir=W

  python -m purer_jax.main --config=configs/sh.py:quick --workdir=W      # <= 90 min here
  python -m purer_jax.main --config=configs/sh.py:fast --config.meta.init=arch_average \
      --config.distil.batch=16 --config.train.iterations=2500 --workdir=W  # the 1-shot cell
  python -m purer_jax.main --config=configs/sh.py:fast,cell --config.meta.init=arch_average \
      --config.distil.batch=16 --config.train.iterations=2500 --workdir=W  # ... its protocol

Variants: smoke | quick | fast | eci | cell | 1shot | 5shot | mini | protonet | anil,
comma-separated.
  python -m purer_jax.main --config=configs/sh.py:quick,mini --workdir=W # <= 90 min here
  python -m purer_jax.main --config=configs/sh.py:quick,mini,5shot --workdir=W  # idem
Measured here (600 meta-test tasks, checkpoint chosen on meta-val, docs/RESULTS.md):
  :quick   1-shot PURER 33.00 +- 0.73, Random 22.13 +- 0.41 (paired +10.86 +- 0.78); random
           init (the pool has three archs); best meta-val 29.21 at iteration 1,000 of 1,250.
           13 teachers (held-out 72.6% mean: Conv4 77.9%, ResNet-10 68.4%, ResNet-18 70.0%)
           in 26 min, meta-training 49 min (2.3 s/iteration), meta-test 1 min: 76 min of work,
           82 min on the clock with a restart (other jobs shared the cores while the teachers
           trained).
  :quick,5shot  5-shot PURER 40.46 +- 0.67, Random 21.70 +- 0.40 (paired +18.76 +- 0.73); the
           1-shot run's teachers (26 min then, not counted again); best meta-val 33.71 at
           iteration 1,000 of 1,250 (31.1 / 32.4 / 33.5 / 33.7 / 33.6); meta-training 63 min
           on a quiet machine (2.7 s/iteration), meta-test 1 min: 90 min with the teachers.
  :quick,mini  1-shot PURER 27.62 +- 0.60, Random 21.95 +- 0.43 (paired +5.67 +- 0.69; paper
           28.76); 3-epoch teachers at 84 px (held-out 51.3% mean) in 29 min, 650 iterations
           in 45 min (3.75 s/iteration), meta-test 4 min: 78 min. Meta-val 28.0 / 30.4 /
           30.6 at 250 / 500 / 650, still rising. `config._quick_84px` has the recipe.
  :quick,mini,5shot  5-shot PURER 30.08 +- 0.58, Random 22.70 +- 0.45 (paired +7.38 +- 0.73;
           paper 35.19); the 1-shot run's teachers (29 min, not counted again), 300 iterations
           in 48 min (~9 s/iteration), meta-test 5 min: 82 min with the teachers. Meta-val 31.0
           / 32.3 at 250 / 300, still rising. The cell until 2026-12-07
           (ablation/quick_sh_mini_5shot_cell_until_1207).
  :fast --config.meta.init=arch_average --config.distil.batch=16 --config.train.iterations=2500
           the SH CIFAR-FS 1-shot cell (declared before it ran, docs/NOTES.md): the old cell's
           recipe (`:fast --config.meta.init=arch_average`, below its ECI twin) at 2.5 times its
           iterations, with the 5-shot cell's distillation batch. The prototype read-out chosen
           on meta-val (33.06 at 2,000; MAML's head 31.81): 39.02 +- 0.79, 0.13 under the
           paper's 39.15; +1.24 +- 0.44 over the old cell (other teachers).
           MAML's head 36.44 one step; random 22.13; PURER+ICFIL 36.85; the pool read-out
           43.38 +- 0.85 (`:fast,cell`, same flags, on its workdir; tuned column in RESULTS.md).
           97 min: teachers 17, meta-training 79 (1.89 s/iteration with meta-val), read-outs 1
           (2026-12-08, matmul 187, AMD EPYC with AVX-512, quiet cores); then that protocol
           46 min. The 13 teachers are the 5-shot cell's (this CPU model's seed-0 pool).
  :fast,eci --config.meta.init=arch_average --config.distil.batch=16
  --config.train.iterations=2500  its ECI twin (declared before it ran, the same teachers):
           meta-val 32.53 (prototype read-out, 2,500; still rising) against the cell's 33.06, so
           ECI stays off in the cell; meta-test 38.98 +- 0.79, ECI on - off -0.04 +- 0.38 on the
           same tasks. 93 min: teachers 16, meta-training 76 (1.83 s/iteration), read-outs 1
           (2026-12-08, matmul 196; docs/results/ablation/fast_eci_sh_1shot_2500). No seed twin
           of this recipe yet.
  :fast --config.meta.init=arch_average  the cell until 2026-12-08
           (ablation/fast_arch_average_sh_1shot_cell_until_1208, declared before it ran): `fast`
           with the learner started from the mean of the pool's five Conv4 teachers, as SS
           starts from its teachers' mean. The prototype read-out chosen on
           meta-val (32.38; MAML's head 31.03): 37.78 +- 0.78, 1.37 under the paper's 39.15;
           +1.24 +- 0.42 over the same recipe from a random init on the same teachers. MAML's
           head 34.61 one step / 35.11 tuned; random 22.13 / 33.67 tuned; PURER+ICFIL 35.30 /
           35.62; the pool read-out 44.18 +- 0.86 (`:fast,cell --config.meta.init=arch_average`
           on its workdir). 71 min: teachers 18, meta-training 51 (3.07 s/iteration), read-outs
           1; then that protocol 37 (2026-12-07, matmul 256, quiet cores).
  :fast --config.meta.init=arch_average --config.seed=1  its seed twin (new teachers and
           inversion, declared before it ran): the prototype read-out (meta-val 32.59) 37.23 +-
           0.79, -0.55 +- 0.45 against seed 0 on the same tasks; 79 min: teachers 18, meta-training
           61 (3.64 s/iteration; 2026-12-07, matmul 220, AMD EPYC with AVX-512;
           docs/results/ablation/fast_arch_average_seed1_sh_1shot).
  :fast,eci --config.meta.init=arch_average --config.seed=1  the seed twin's ECI twin (declared
           before it ran; the same 13 teachers, retrained on the same CPU model): the prototype
           read-out chosen on meta-val (32.71 against 32.59 off; MAML's head 28.80) 37.58 +-
           0.81, ECI on - off +0.36 +- 0.40 on the same tasks (MAML's head -2.00 +- 0.55). 85
           min: teachers 16, meta-training 68 (4.1 s/iteration; 2026-12-07, matmul 209;
           docs/results/ablation/fast_eci_arch_average_seed1_sh_1shot).
  :fast,cell  the same from a random init, the cell until 2026-12-07
           (ablation/fast_sh_1shot_cell_until_1207): the prototype read-out chosen on meta-val
           (31.71; MAML's head 28.00): 36.54 +- 0.78; MAML's head 32.06 one step / 33.75 tuned;
           PURER+ICFIL 32.78 / 34.11. 113 min: teachers 17, meta-training 56, the table's
           protocol 39 (2026-12-06, matmul 298-308 GFLOP/s, niced test runs sharing the cores).
  :fast --config.seed=1  its seed twin (new teachers, inversion and meta-training, declared
           before it ran): the prototype read-out 37.07 +- 0.81, +0.54 +- 0.42 over seed 0 on the
           same tasks; 69 min (docs/results/ablation/fast_seed1_sh_1shot).
  :fast,eci  its ECI twin (ECI from iteration 67 at the `eci` balance, the same teachers), declared
           as the cell before either ran and replaced when meta-val preferred ECI off: the
           prototype read-out 35.34 +- 0.78 (meta-val 30.49), ECI on - off -1.19 +- 0.42 paired
           on the same tasks (docs/results/ablation/fast_eci_sh_1shot).
  :fast,5shot --config.train.iterations=2000 --config.distil.batch=16   the SH CIFAR-FS 5-shot
           cell (declared before it ran, docs/NOTES.md): `fast` at 5-shot (a bank of 5 + 7 per
           class), 2,000 iterations, distillation on 16 bank images per iteration. The prototype
           read-out chosen on meta-val (40.64; MAML's head 35.25): 49.74 +- 0.80, 0.66 above the
           paper's 49.08; +1.98 +- 0.39 over the arch_average run below on the same teachers.
           MAML's head 42.56 one step / 48.09 tuned; random 21.70 / 46.49; PURER+ICFIL 48.26 /
           49.46; the pool read-out 55.92 +- 0.84 (`:fast,5shot,cell`, same flags, on its
           workdir). 102 min: teachers 18, meta-training 83 (2.48 s/iteration), read-outs 1;
           then that protocol 44 (2026-12-07, matmul 208, AMD EPYC with AVX-512, quiet
           cores). No ECI twin on its teachers yet.
  :fast,5shot --config.train.iterations=1000 --config.distil.batch=16   the cell until
           2026-12-07 (ablation/fast_sh_5shot_cell_until_1207), on another machine's pool from the
           same seed: the prototype read-out (meta-val 39.07) 47.27 +- 0.75; 81 min with its
           one-step protocol (2026-12-06, matmul 312). Its ECI twin `:fast,5shot,eci` (same
           flags, same teachers): 46.10 (meta-val 38.82), ECI on - off -1.17 +- 0.38
           (ablation/fast_eci_sh_5shot). With `--config.meta.init=arch_average` on this CPU's
           pool: meta-val 39.067, not chosen; 47.76. 57 min (2026-12-07, matmul 220;
           ablation/fast_arch_average_sh_5shot).
  :fast,mini  the SH MiniImageNet 1-shot cell (declared before it ran, docs/NOTES.md):
           :quick,mini's teachers, bank and 650 iterations with `fast`'s distillation (16 bank
           images per iteration), cosine lr and prototype read-out. The prototype read-out
           chosen on meta-val (32.08; MAML's head 30.15; :quick,mini 30.55): 28.59 +- 0.59, 0.17
           under the paper's 28.76; MAML's head 28.30; random 21.95 and the pool read-out 30.81
           +- 0.66 at one test-time step (`cell --config.eval.tune_adapt=False
           --config.icfil.enabled=False` on its workdir). 141 min, over the 2 hours: teachers 36,
           meta-training 78 (niced test runs beside it for 80 min), read-outs 4, that protocol
           22 (2026-12-06, matmul 313). No ECI twin yet.
  :fast,mini,5shot  the SH MiniImageNet 5-shot cell (declared before it ran, docs/NOTES.md): the
           same on :quick,mini,5shot's bank (5 + 3 per class) and 300 iterations, meta-val at
           150 and 300. The prototype read-out chosen on meta-val (43.01; MAML's head 32.66;
           :quick,mini,5shot 32.28): 37.29 +- 0.63, 2.10 above the paper's 35.19; MAML's head
           30.82; random 22.70 at one test-time step (`rescore --methods=random`, 2.5 min).
           105 min: teachers 32, meta-training 66 (~12.7 s/iteration), read-outs 7 (2026-12-07,
           matmul 267). No pool read-out yet; its ECI twin `:fast,mini,5shot,eci` is still to run.
  :smoke   minutes; accuracies at that size are near Random and mean little.
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('sh', arg)
