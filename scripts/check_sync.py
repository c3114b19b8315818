#!/usr/bin/env python
"""Check (or with --fix, bring) the package, the notebooks and README.md in step.

- `nbdev-clean` must not change any notebook (and keeps papermill's `parameters` tag);
- `nbdev-export` must not change `streamml/` (the package is generated from `nbs/`; cleaning runs first
  because the export cites cell ids that cleaning assigns);
- README.md must equal `nbs/index.ipynb` converted with nbconvert (Quarto is not available here).
Without --fix a difference is reported and the exit code is 1 (the files are left fixed, so a second run passes).
"""
import hashlib, json, subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
bindir = Path(sys.executable).parent

def snapshot(paths):
    "Hash every file under `paths`."
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for d in paths for p in sorted(root.glob(d)) if p.is_file()}

def changed(before, after): return sorted(str(p.relative_to(root)) for p in set(before) | set(after) if before.get(p) != after.get(p))

def render_readme():
    "README.md text from nbs/index.ipynb."
    out = subprocess.run([str(bindir/'jupyter'), 'nbconvert', '--to', 'markdown', '--stdout', '--log-level=ERROR',
                          str(root/'nbs/index.ipynb')], check=True, capture_output=True, text=True).stdout
    head = '<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file -->\n\n'
    return head + out.strip() + '\n'

def tags_kept():
    "Every notebook under nbs/train keeps a `parameters`-tagged cell."
    bad = []
    for nb in sorted((root/'nbs/train').glob('*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        if not any('parameters' in c.get('metadata', {}).get('tags', []) for c in cells): bad.append(str(nb.relative_to(root)))
    return bad

def main(fix=False):
    problems = []
    before = snapshot(['nbs/**/*.ipynb'])
    subprocess.run([str(bindir/'nbdev-clean')], cwd=root, check=True)
    if d := changed(before, snapshot(['nbs/**/*.ipynb'])): problems.append(f'nbdev-clean changed {d}: clean and commit')
    before = snapshot(['streamml/**/*.py'])
    subprocess.run([str(bindir/'nbdev-export')], cwd=root, check=True)
    if d := changed(before, snapshot(['streamml/**/*.py'])): problems.append(f'nbdev-export changed {d}: export and commit')
    if bad := tags_kept(): problems.append(f'no `parameters` cell tag in {bad}')
    readme, text = root/'README.md', render_readme()
    if not readme.exists() or readme.read_text() != text:
        readme.write_text(text); problems.append('README.md was stale: regenerated from nbs/index.ipynb')
    for p in problems: print(('fixed: ' if fix else 'NOT IN STEP: ') + p)
    if not problems: print('package, notebooks and README are in step')
    return 0 if fix or not problems else 1

if __name__ == '__main__': sys.exit(main('--fix' in sys.argv))
