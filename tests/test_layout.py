"""The house (issue 9): rooms of a reasonable size, short functions, no import cycles of any kind, services that
never import the tests' or the benchmarks' helpers, and notebooks with at least half as much test code as code.

Everything here reads the sources; nothing runs. `layout_figures()` prints the figures the closing note quotes.
"""
import ast, json, re, statistics
from pathlib import Path
from conftest import ROOT

PKG = ROOT/'streamml'
MAX_MODULE, MAX_FUNCTION, MIN_TEST_RATIO = 400, 40, 0.5
HELPERS = {'streamml.testing'}                     # shared by tests and benchmarks only
ENTRY = 'streamml.cli'                             # the entry point lists every command, `streamml bench` among them


def modules() -> dict:
    "`{module name: source}` of the package (the generated index aside)."
    return {f'streamml.{p.stem}': p.read_text() for p in sorted(PKG.glob('*.py')) if p.stem not in ('_modidx', '__init__')}

def is_bench(m: str) -> bool: return m == 'streamml.bench' or m.startswith('streamml.bench_')

def imports(name: str, src: str) -> set:
    "Modules of the package that `name` imports: plain and relative imports, inside functions too, and in a module that uses `importlib`, the modules its tables name (COMMANDS, BENCHES)."
    out, tree, dynamic = set(), ast.parse(src), 'importlib' in src
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            mod = n.module or ''
            if n.level: mod = 'streamml' + ('.' + mod if mod else '')
            if mod == 'streamml': out |= {f'streamml.{a.name}' for a in n.names}
            elif mod.startswith('streamml.'): out.add(mod)
        elif isinstance(n, ast.Import): out |= {a.name for a in n.names if a.name.startswith('streamml.')}
        elif dynamic and isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r'streamml\.[a-z_]+', n.value): out.add(n.value)
    return {m for m in out if m != name}

def graph() -> dict:
    mods = modules()
    return {m: imports(m, src) & set(mods) for m, src in mods.items()}

def cycles(g: dict) -> list:
    "Every strongly connected component with more than one module (Tarjan)."
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in g[v]:
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in g:
        if v not in index: visit(v)
    return out

def functions() -> list:
    "`(lines, module, name)` of every function and method."
    out = []
    for m, src in modules().items():
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)): out.append((n.end_lineno - n.lineno + 1, m, n.name))
    return out

def notebook_code() -> tuple[int, int]:
    "Characters of exported code and of test code (code cells that are neither exported nor hidden set-up) in nbs/."
    exported = tested = 0
    for nb in sorted((ROOT/'nbs').rglob('*.ipynb')):
        if 'train' in nb.parts or 'dashboard' in nb.parts or nb.name == 'index.ipynb': continue
        for c in json.loads(nb.read_text())['cells']:
            if c['cell_type'] != 'code': continue
            src = ''.join(c['source'])
            first = src.lstrip().splitlines()[0] if src.strip() else ''
            if '#| export' in src: exported += len(src)
            elif not first.startswith('#| hide') and '#| default_exp' not in src: tested += len(src)
    return exported, tested


def test_no_module_over_400_lines():
    big = {m: src.count('\n') for m, src in modules().items() if src.count('\n') > MAX_MODULE}
    assert not big, f'modules over {MAX_MODULE} lines: {big}'

def test_no_function_over_40_lines():
    long = sorted(f for f in functions() if f[0] > MAX_FUNCTION)
    assert not long, f'functions over {MAX_FUNCTION} lines: {long}'

def test_no_import_cycle_of_any_kind():
    assert cycles(graph()) == []

def test_services_never_import_test_or_bench_helpers():
    bad = {m: sorted(d & HELPERS | {x for x in d if is_bench(x)}) for m, d in graph().items()
           if m not in HELPERS | {ENTRY} and not is_bench(m) and (d & HELPERS or any(is_bench(x) for x in d))}
    assert bad == {}, bad

def test_notebooks_hold_at_least_half_as_much_test_code_as_code():
    exported, tested = notebook_code()
    assert tested / exported >= MIN_TEST_RATIO, f'test/export ratio {tested / exported:.2f} < {MIN_TEST_RATIO}'

def test_the_checks_see_what_they_look_for():
    "The checks find a cycle, an importlib edge and a long function when there is one (they are not vacuous)."
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == [['a', 'b', 'c']]
    assert imports('streamml.x', "import importlib\nT = {'k': 'streamml.events'}\nfrom .db import y\nimport streamml.runner") == {'streamml.events', 'streamml.db', 'streamml.runner'}
    assert imports('streamml.x', "argv = ['-m', 'streamml.cli']") == set()      # a child process is not an import
    assert 'streamml.events' in graph()['streamml.cli'] and 'streamml.bench_ingest' in graph()['streamml.bench']
    assert max(functions())[0] > 10


def layout_figures() -> dict:
    "Module sizes, function-length median and p90, cycles and the test ratio (for the closing note)."
    lens = sorted(f[0] for f in functions())
    exported, tested = notebook_code()
    return dict(modules={m: src.count('\n') for m, src in modules().items()}, functions=len(lens),
                median=statistics.median(lens), p90=lens[int(0.9 * (len(lens) - 1))], longest=max(functions()),
                cycles=cycles(graph()), test_ratio=round(tested / exported, 2))

if __name__ == '__main__': print(json.dumps(layout_figures(), indent=1, default=str))
