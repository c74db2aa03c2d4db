"""The committed pages are what the repository's results generate, byte for byte (docs/CONFIG.md:
tests/test_schema.py), and every document the package or the pages cite is in the repository."""
import os
import re
import shutil

from purer_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_committed_pages_regenerate_byte_for_byte(tmp_path):
  shutil.copytree(os.path.join(ROOT, 'docs', 'results'), tmp_path / 'docs' / 'results')
  shutil.copy(os.path.join(ROOT, 'README.md'), tmp_path / 'README.md')
  readme = (tmp_path / 'README.md').read_text()
  start, end = (readme.index(m) for m in report.HEADLINE_MARKS)
  # A stale headline, so that the test sees the generator write it.
  (tmp_path / 'README.md').write_text(readme[:start + len(report.HEADLINE_MARKS[0])] + '\nstale\n'
                                      + readme[end:])
  report.write(str(tmp_path / 'docs' / 'results'))
  for page in ('README.md', 'docs/RESULTS.md', 'docs/ABLATION.md'):
    with open(os.path.join(ROOT, page), 'rb') as f:
      assert (tmp_path / page).read_bytes() == f.read(), (
          f'{page} is not what `python -m purer_jax.report docs/results` writes: run it and '
          'commit the result')


def _texts():
  for folder in ('purer_jax', 'configs', 'tests', 'benchmarks', 'docs', '.'):
    base = os.path.join(ROOT, folder)
    for dirpath, dirs, files in os.walk(base):
      dirs[:] = [] if folder == '.' else [d for d in dirs if d != 'results']
      for f in files:
        if f.endswith(('.py', '.md')):
          yield os.path.join(dirpath, f)


def test_cited_documents_are_in_the_repository():
  outside, missing = [], []
  for path in _texts():
    with open(path, encoding='utf-8') as f:
      text = f.read()
    rel = os.path.relpath(path, ROOT)
    if (re.search(r'\b(METHOD|PITFALLS)\.md', text) and
        rel != os.path.join('tests', 'test_pages.py')):
      outside.append(rel)
    for doc in set(re.findall(r'\bdocs/[\w/.-]+\.(?:md|png|json)', text)):
      if not os.path.exists(os.path.join(ROOT, doc)) and '<' not in doc:
        missing.append(f'{rel}: {doc}')
  assert not outside, f'cite documents outside the repository: {outside}'
  assert not missing, f'cite documents the repository lacks: {missing}'
