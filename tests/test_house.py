"""House rules of the package: no module over MAX_LINES lines, and no import cycle among the
imports purer_jax's modules run at module level (imports inside functions run on call and are
listed, not counted: `python tests/test_house.py` prints both graphs)."""
import ast
import os

PACKAGE = 'purer_jax'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 400


def modules() -> dict:
  """{dotted module name: path} of every module of the package."""
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for f in sorted(files):
      if f.endswith('.py'):
        path = os.path.join(folder, f)
        name = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
        out[name.removesuffix('.__init__')] = path
  return out


def _imported(node, known) -> list:
  """The package modules an import statement names (`from p import m` names module p.m when
  there is one, else p itself)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name in known]
  if node.level or not (node.module or '').startswith(PACKAGE):
    return []
  return [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in known else node.module
          for a in node.names]


def import_graph(known: dict) -> tuple:
  """({module: package modules imported at module level}, {module: those imported inside
  functions only when called})."""
  top, deferred = {}, {}
  for name, path in known.items():
    top[name], deferred[name] = set(), set()
    with open(path) as f:
      tree = ast.parse(f.read(), path)

    def visit(node, in_function):
      for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
          (deferred if in_function else top)[name].update(_imported(child, known))
        visit(child, in_function or isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    visit(tree, False)
    top[name].discard(name)
    deferred[name] -= top[name] | {name}
  return top, deferred


def cycles(graph: dict) -> list:
  """The strongly connected components of more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return out


def test_no_import_cycle_at_module_level():
  top, _ = import_graph(modules())
  assert cycles(top) == []


def test_cycles_are_found():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_module_over_max_lines():
  lines = {}
  for name, path in modules().items():
    with open(path) as f:
      lines[name] = f.read().count('\n')  # as `wc -l`
  assert {n: k for n, k in lines.items() if k > MAX_LINES} == {}


if __name__ == '__main__':
  top, deferred = import_graph(modules())
  for title, graph in (('module level', top), ('inside functions', deferred)):
    print(f'# {title}')
    for name in sorted(graph):
      if graph[name]:
        print(f'{name} -> {", ".join(sorted(graph[name]))}')
  print('cycles at module level:', cycles(top) or 'none')
