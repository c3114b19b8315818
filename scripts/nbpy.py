#!/usr/bin/env python
"""Write a notebook from a plain-text cell file, or dump a notebook to that format.

Cell file format: cells start with a marker line
  `# %% md`          a markdown cell (following lines verbatim)
  `# %%`             a code cell
  `# %% tags=a,b`    a code cell with tags (e.g. `parameters`)
Usage: python scripts/nbpy.py write SRC.txt DEST.ipynb | python scripts/nbpy.py dump NB.ipynb
Notebooks stay the source of truth; this only makes writing many cells less error-prone.
"""
import json, sys, re
from pathlib import Path

def parse(text):
    cells, cur = [], None
    for line in text.splitlines():
        m = re.match(r'^# %%(?: (md))?(?: tags=(\S+))?\s*$', line)
        if m:
            if cur: cells.append(cur)
            cur = dict(kind='markdown' if m.group(1) else 'code', tags=(m.group(2) or '').split(',') if m.group(2) else [], lines=[])
        elif cur is not None: cur['lines'].append(line)
    if cur: cells.append(cur)
    out = []
    for c in cells:
        while c['lines'] and not c['lines'][-1].strip(): c['lines'].pop()
        while c['lines'] and not c['lines'][0].strip(): c['lines'].pop(0)
        src = '\n'.join(c['lines'])
        cell = dict(cell_type=c['kind'], metadata={'tags': c['tags']} if c['tags'] else {}, source=src)
        if c['kind'] == 'code': cell.update(execution_count=None, outputs=[])
        out.append(cell)
    return out

def write(src, dest):
    nb = dict(cells=parse(Path(src).read_text()), nbformat=4, nbformat_minor=5,
              metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')))
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def dump(nb):
    for c in json.loads(Path(nb).read_text())['cells']:
        tags = c.get('metadata', {}).get('tags', [])
        head = '# %% md' if c['cell_type'] == 'markdown' else '# %%'
        if tags: head += ' tags=' + ','.join(tags)
        src = c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
        print(head); print(src); print()

if __name__ == '__main__':
    if sys.argv[1] == 'write': write(sys.argv[2], sys.argv[3])
    else: dump(sys.argv[2])
