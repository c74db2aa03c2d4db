"""SS: same data (CIFAR-FS), same arch (13 disjoint Conv4 teachers), 5-way.

  python -m purer_jax.main --config=configs/ss.py --workdir=W         # paper protocol
  python -m purer_jax.main --config=configs/ss.py:smoke --workdir=W   # minutes on a 2-core CPU
  python -m purer_jax.main --config=configs/ss.py:quick --workdir=W   # about 1 h on a 2-core CPU
  python -m purer_jax.main --config=configs/ss.py:budget --workdir=W  # <= 2 h on a 2-core CPU
  python -m purer_jax.main --config=configs/ss.py:fast --workdir=W    # ~9 min on a 2-core CPU
  python -m purer_jax.main --config=configs/ss.py:fast,eci,cell --workdir=W  # the 1-shot cell

Variants: smoke | quick | budget | plus | 1shot | 5shot | mini | protonet | anil | distil |
fast_teachers | fast | eci | cell, comma-separated (`:quick,5shot`). The meta-learner starts from the
teachers' average (`meta.init='auto'`).
Measured here, 600 meta-test tasks, checkpoint chosen on meta-val (docs/RESULTS.md):
  :quick        1-shot PURER 38.54 +- 0.77, the cell until 2026-12-06 (random 22.13, average
                25.00, ota 23.04 with one test-time step); the pool read-out 48.56 +- 0.83, so
                PURER - pool -10.01 +- 0.67
                at 0.70 against 7.82 GFLOP per task; 39 min from an empty workdir (teachers 7,
                meta-training 29, meta-test 3) on 2026-12-05 (matmul 292 GFLOP/s); the same
                figures to the digit in 26 min later that day on quiet cores (matmul 296)
  :quick,5shot  5-shot PURER 49.91 +- 0.76 (random 21.70, average 25.64, ota 22.84); the pool
                read-out 63.88 +- 0.76, PURER - pool -13.97 +- 0.61 at 1.15 against 9.77 GFLOP
                per task; 37 min plus the 1-shot run's 7 min of teachers (2026-12-05). On the
                teachers of the other machine kind the same command gave 51.98 +- 0.77
  :quick,mini   1-shot PURER 29.19 +- 0.69 (random 21.95, average 22.76, ota 21.52), the cell
                until 2026-12-06 (meta-val 31.99); 64 min: teachers 16 min, meta-training 41 min
                (2.4 s/it), meta-test 7 min
  :fast,mini    `fast`'s meta-training on :quick,mini's teachers. The prototype read-out chosen
                on meta-val (32.21, over the :quick cell's 31.99; MAML's head 30.77): 28.90 +-
                0.58 (MAML's head 28.30); random 21.95, average 21.91, ota 21.76 at one test-time
                step; the pool read-out 32.76 +- 0.64. 80 min from an empty workdir (teachers 15,
                meta-training 47, read-outs 5, then `cell` without tuning or ICFIL 14), matmul
                299-311 GFLOP/s, niced test runs sharing the cores (2026-12-06)
  :fast,mini,eci  its ECI twin on the same teachers, the SS MiniImageNet 1-shot cell until
                2026-12-07 (meta-val 32.70 against 32.21): the prototype read-out 28.94 +- 0.59,
                ECI on - off +0.04 +- 0.30; meta-training 43 min on quiet cores
                (ablation/fast_eci_mini_1shot_cell_until_1207)
  :fast,mini,eci --config.train.iterations=2000 --config.distil.per_iter=4  the SS MiniImageNet
                1-shot cell (declared before it ran, docs/NOTES.md): twice the iterations,
                distilling a draw of 4 + 1 teachers per iteration. The prototype read-out chosen
                on meta-val (32.83 against 32.70; MAML's head 31.64 at 1,500 of 2,000): 28.85 +-
                0.58, 2.29 under the paper's 31.14 and -0.09 +- 0.33 against the old cell on the
                same tasks (MAML's head 28.42); random 21.95, average 22.76, ota 21.52, the pool
                read-out 32.59 +- 0.65 at one test-time step (`cell --config.eval.tune_adapt=False
                --config.icfil.enabled=False` on its workdir, 12 min). 95 min from an empty
                workdir (teachers 10, meta-training 79 at 1.96-2.4 s/it, read-outs 5), matmul 207
                (2026-12-07). Meta-val flat from 1,000 on: iterations are not what it lacks
  :fast,mini --config.train.iterations=2000 --config.distil.per_iter=4  its ECI-off twin on the
                same teachers (declared before it ran): the prototype read-out's meta-val 32.49
                against the cell's 32.83, so ECI stays on; meta-test 28.57 +- 0.57, ECI on - off
                +0.28 +- 0.31 on the same tasks (MAML's head 28.70). 91 min from an empty
                workdir (teachers 10, meta-training 75 at 2.24 s/it, read-outs 6), matmul 196
                (2026-12-07; ablation/fast_mini_draw_1shot)
  :fast,mini,eci --config.train.iterations=2000 --config.distil.per_iter=4
    --config.teachers.augment=flip,shift --config.teachers.shift=8 --config.teachers.epochs=30
    --config.teachers.milestones="(18, 24)"  the cell's recipe on augmented teachers (held-out
                66.9 against 60.8; declared before it ran): meta-val 32.71 against the cell's
                32.83, so the cell stays; meta-test 28.73 +- 0.58, -0.12 +- 0.35 against the
                cell. 97 min from an empty workdir (teachers 15, meta-training 77 at 2.31 s/it,
                read-outs 5), matmul 193 (2026-12-07; ablation/fast_eci_mini_draw_aug30_1shot)
  :quick,mini,5shot  5-shot PURER 34.97 +- 0.70, the cell until 2026-12-06 (random 22.70,
                average 23.02, ota 21.25; paired +11.96 +- 0.79 over average); the 1-shot run's
                teachers (16 min), meta-training 66 min (3.6 s/it), meta-test 10 min: 92 min.
                Meta-val 34.0 / 35.6 / 36.6 / 37.6.
  :budget       `quick`'s teachers, 6,000 iterations with a cosine outer lr, ECI at adv_scale
                1.4 on a smoothed signal: 1-shot PURER 41.55 +- 0.77 (paired +3.01 +- 0.60 over
                :quick on its teachers; best meta-val 35.53 at 4,750); 95 min on a quiet
                machine, teachers 9 min, meta-training 85 min (docs/ABLATION.md)
  :budget,5shot 5,000 iterations, ECI off (it lost on meta-val at 5-shot): PURER 53.59 +- 0.77
                (best meta-val 43.79 at 3,750), ~101 min with the teachers; rerun on the cell's
                teachers 54.21 +- 0.75 (paired +2.23 +- 0.50 over :quick,5shot), 54.59 with tuned
                test-time adaptation, 54.78 with ICFIL: 1.8 short of 56.0
  :quick,distil the pool's representation distilled into the learner on the bank (weight 4):
                best meta-val 33.16 against the cell's 33.58 (not kept); meta-test 39.07 +- 0.77,
                +0.53 +- 0.50 paired over the cell, PURER - pool -9.48 +- 0.68; the learner's
                prototype read-out 38.52 (meta-val 32.76); 23 min with the cell's teachers.
                With --config.distil.weight=20: MAML's head 39.62 (meta-val 33.59), the
                prototype read-out chosen on meta-val (34.11): 40.71 +- 0.81, +2.17 +- 0.65
                paired over the cell, -7.85 +- 0.62 under the pool, at 0.62 GFLOP per task
  :budget,distil --config.distil.weight=20   the 2-hour budget with distillation (issue 32's
                full try): MAML's head 42.27 +- 0.78 (meta-val 35.66), the prototype read-out
                chosen on meta-val (36.06): 42.62 +- 0.79, still -5.94 +- 0.58 under the pool at
                0.62 against 7.82 GFLOP per task; 92 min from an empty workdir (2026-12-05)
  :quick,fast_teachers  the teachers in 83 s against :quick's 354 s, mean held-out 83.26 against
                83.54, back to back (2026-12-05, matmul 285 GFLOP/s; benchmarks/teacher_recipe.py)
  :fast         1-shot time to accuracy (issue 34): the fast teachers, a bank of 8 images per
                class, distillation at weight 50, 1,000 cosine iterations: the prototype read-out
                chosen on meta-val (32.71), 38.77 +- 0.79 in 504 s from an empty workdir, x0.326
                of a :quick run the same evening (1,544 s, 38.54) and x0.318 of one right after
                it (1,585 s); at weight 20 (ablation/fast_w20_1shot) 37.06 +- 0.76 in 537 s, and at 1,600
                iterations 38.70 +- 0.77 in 796 s; 2026-12-05, matmul 296-319 GFLOP/s
                (docs/ABLATION.md, "Time to accuracy from an empty workdir")
  :fast,eci,cell  the SS CIFAR-FS 1-shot cell (docs/RESULTS.md): `fast` with ECI from iteration 67
                (adv_scale 1.4, smoothed signal; chosen on meta-val, 33.53 against 32.71 without
                it, ablation/fast_1shot on the same teachers), scored by the table's protocol: the
                prototype read-out chosen on meta-val, 38.93 +- 0.79 (MAML's head 36.33 at one
                test-time step, 37.22 tuned; PURER+ICFIL 36.95); random 22.13 / 33.67 tuned,
                average 24.96 / 34.29, ota 23.81 / 37.13; the pool read-out 48.43 +- 0.83. 28 min
                from an empty workdir (teachers 1.4, meta-training 7, meta-test 19: tuning four
                methods and ICFIL), 2026-12-05, matmul 332 GFLOP/s
  :fast,eci --config.distil.batch=16 (or 4)  distilling 16 (or 4) bank images per iteration
                instead of 64, declared before it ran, on one copy of this CPU's teachers: the
                prototype read-out's meta-val 32.49 (31.23) against 33.73 at 64, meta-test +0.36
                +- 0.40 (-1.92 +- 0.48) paired; 0.41 (0.37) s per iteration against 0.52
                (2026-12-07, matmul 193-198; ablation/fast_eci_distil{64,16,4}_1shot)
  :fast,eci --config.distil.per_iter=3  distilling a draw of 3 + 1 of the 13 teachers per
                iteration (declared before it ran, the same teachers): the prototype read-out's
                meta-val 32.76 against 33.73 (inside the declared point), meta-test +0.01 +- 0.53
                paired (MAML's head +0.70 +- 0.54); 0.49 s per iteration against 0.55 (2026-12-07,
                matmul 207; ablation/fast_eci_distil_draw4_1shot)
  :fast,5shot   the same at 5-shot (a bank of 5 + 7 per class, 1,500 iterations), ECI off: the
                prototype read-out chosen on meta-val (45.17; MAML's head 40.49), 54.21 +- 0.79
                (paper 51.95; MAML's head 49.19) in 17 min from an empty workdir, 2026-12-06.
                ECI (`eci`) lost on meta-val here (44.36). The 5-shot cell is this run scored
                with `cell` (re-run on the finished workdir, 38 min of meta-test): random 21.70 /
                46.48 tuned, average 25.74 / 48.10, ota 23.49 / 51.63, MAML's head 49.19 / 50.78,
                PURER+ICFIL 51.65 / 52.36, the pool read-out 63.47 +- 0.77
  :fast,mini,5shot --config.train.iterations=1000  the SS MiniImageNet 5-shot cell, declared
                before it ran (docs/NOTES.md): :quick,mini's teachers, a bank of 5 + 7 per class,
                distillation at weight 50, 1,000 cosine iterations. The prototype read-out chosen
                on meta-val (43.99, over :quick,mini,5shot's 37.55; MAML's head 37.97): 38.70 +-
                0.66, 2.16 under the paper's 40.86 (MAML's head 35.72); 92 min from an empty
                workdir (teachers 12, meta-training 74 at 3.7 s/it on quiet cores, read-outs 6),
                matmul 265 GFLOP/s (2026-12-06); then `cell` without tuning or ICFIL on its workdir
  :fast,mini,5shot,eci --config.train.iterations=1000  its ECI twin, declared before it ran
                (docs/NOTES.md): the same teachers retrained from the config, ECI from iteration 67.
                Prototype meta-val 43.76 under 43.99, so not the cell: 38.16 +- 0.67, ECI on - off
                -0.53 +- 0.30 paired (ablation/fast_eci_mini_5shot); 116 min with its teachers
  :smoke        a few minutes; accuracies mean little at that size
  :plus         PURER-Plus, 100 teachers on random 5-class subsets (5 epochs each), 13 refined
                per iteration, 2,000 iterations: 1-shot PURER 40.77 +- 0.77 (random 22.13, average
                23.71, ota 26.47; paired +2.50 +- 0.61 over :quick; best meta-val 33.11 at 2,000);
                59 min on a quiet machine: teachers 24 min, meta-training 33 min, meta-test 1 min
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('ss', arg)
