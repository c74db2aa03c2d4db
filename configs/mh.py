"""MH: teachers from CIFAR-FS and MiniImageNet, heterogeneous archs, inputs at 84 px.

  python -m purer_jax.main --config=configs/mh.py:smoke --workdir=W
  python -m purer_jax.main --config=configs/mh.py:quick --workdir=W    # 86 min here
  python -m purer_jax.main --config=configs/mh.py:quick,5shot --workdir=W    # 93 min here

Variants: smoke | quick | eci | cell | 1shot | 5shot | protonet | anil (comma-separated).
`:quick` is SH MiniImageNet's recipe (`config._quick_84px`: 3 teacher epochs at batch 16,
CIFAR-FS teachers on 300 images per class, one teacher per (dataset, arch) group refined per
iteration, shots + 3 bank images per class, 650 / 300 iterations at 1 / 5 shots). A CIFAR-FS
teacher's pseudo classes reach the meta-learner resized to 32 px and back
(`inversion.native_size`), as real CIFAR-FS images do.
Measured here (600 meta-test tasks per dataset, checkpoint chosen on meta-val, docs/RESULTS.md):
  :quick   1-shot PURER 31.98 +- 0.71 on CIFAR-FS and 27.32 +- 0.59 on MiniImageNet, mean
           29.65 +- 0.46 (paper 28.50); Random 24.12 / 21.95, mean 23.04 +- 0.32; paired
           +6.61 +- 0.52. 13 teachers (held-out 56.3% mean: CIFAR-FS 67.7%, MiniImageNet
           46.4%) in 27 min, 650 iterations in 52 min (4.8 s/iteration), meta-test 7 min:
           86 min. Meta-val 27.1 / 28.5 / 28.9 at 250 / 500 / 650, still rising. The cell until
           2026-12-07 (ablation/quick_mh_1shot_cell_until_1207; teachers of 39e373e).
  :quick,eci,cell --config.eval.tune_adapt=False --config.icfil.enabled=False
  --config.eval.methods="('random','average','ota','purer','purer_proto')"   the 1-shot cell
           (declared before it ran, docs/NOTES.md 2026-12-07): :quick with ECI from iteration 43
           at the `eci` balance, both read-outs. The prototype read-out chosen on meta-val (29.20;
           MAML's head 28.34): 31.22 +- 0.65 on CIFAR-FS and 27.25 +- 0.58 on MiniImageNet, mean
           29.23 +- 0.44 (paper 28.50); MAML's head mean 28.43; Random 23.04. 93 min: teachers
           30, meta-training 51 (4.5 s/iteration), read-outs 12 (2026-12-07, matmul 284). The
           pool read-out (`pool` in eval.methods) needs ~100 min more at 84 px: not scored yet.
           Its ECI-off twin, `:quick` with the same methods on the same teachers, is not run yet.
  :quick,5shot  PURER 35.98 +- 0.67 on CIFAR-FS and 31.19 +- 0.59 on MiniImageNet, mean
           33.59 +- 0.45 (paper 33.10); Random 25.13 / 22.70, mean 23.92 +- 0.35; paired
           +9.67 +- 0.55. The 1-shot run's teachers (27 min when trained), 300 iterations in
           55 min (~10 s/iteration), meta-test 10 min: 93 min with the teachers. Meta-val
           31.2 / 31.1 at 250 / 300.
  :smoke   minutes; accuracies at that size are at Random and mean little.
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('mh', arg)
