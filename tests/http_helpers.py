"""Helpers of the HTTP and dashboard tests: real model artifacts (no TensorFlow), promotions, a served home.

Kept apart from tests/test_serving_helpers.py (the Kafka serving tests' helpers) so the HTTP tests depend only on
the package: `streamml.registry` writes the artifacts, `streamml.testing` makes the weights.
"""
import numpy as np
from streamml.config import make_producer
from streamml.db import make_engine, init_db
from streamml.registry import Trained, save_version, register_version, set_champion, update_message, tree_from_sklearn, linear_arrays
from streamml.testing import random_dense


def dense_version(s, seed=0, model='mlp'):
    "A real mlp artifact from random dense arrays; each seed gives other weights."
    rng = np.random.default_rng(seed)
    X = rng.integers(1, 11, size=(40, s.n_features)).astype(float)
    return save_version(s, model, Trained(task='classification', serving=random_dense(s.n_features, rng), metric_name='accuracy', metrics={'accuracy': 0.5 + seed / 1000}, holdout=(X, np.zeros(len(X), int))))


def tree_version(s, depth=5):
    "A real dtr artifact from a fitted scikit-learn tree."
    from sklearn.tree import DecisionTreeClassifier
    rng = np.random.default_rng(1)
    X = rng.integers(1, 11, size=(200, s.n_features)).astype(float); y = np.round(X.mean(axis=1)).astype(int)
    clf = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(X, y)
    return save_version(s, 'dtr', Trained(task='classification', serving=tree_from_sklearn(clf), metric_name='accuracy', metrics={'accuracy': float(clf.score(X, y))}, holdout=(X[:30], y[:30])))


def linear_version(s, slope=0.5, intercept=1.0, r2=0.7):
    "A real slr artifact: y = slope·x + intercept, with `r2` as its holdout metric (NaN allowed: a stored figure)."
    X = np.arange(10.).reshape(-1, 1)
    return save_version(s, 'slr', Trained(task='regression', serving=linear_arrays(slope, intercept), metric_name='r2', metrics={'r2': r2}, holdout=(X, slope * X[:, 0] + intercept)))


def promote(s, engine, v, announce=True):
    "Make `v` champion in one transaction; with `announce`, tell predictors on model_update_topic."
    with engine.begin() as c: register_version(c, v, 'promoted'); set_champion(c, v)
    if announce:
        p = make_producer(s)
        try: p.send(s.topics.model_update_topic, key=v.model.encode(), value=update_message(v, 'promote')).get(10)
        finally: p.close(5)
    return v


def served_home(s, r2=0.7):
    "Champions for every model (mlp twice, so it can roll back; slr with slope 2, so 1e308 overflows); the engine."
    engine = make_engine(s); init_db(engine)
    for v in (dense_version(s, 1), dense_version(s, 2), tree_version(s), linear_version(s, slope=2.0, r2=r2)):
        promote(s, engine, v, announce=False)
    return engine


def add_run(s, engine, notebook_text=None, **row):
    "A `runs` row (a build that ran on this host), with an executed notebook printing `notebook_text` if given; its id."
    import uuid, nbformat
    from streamml.db import runs, utcnow
    run_id = str(uuid.uuid4())
    path = s.path('runs', f'{run_id}.ipynb')
    if notebook_text is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('print(42)', outputs=[
            nbformat.v4.new_output('stream', name='stdout', text=notebook_text)])]), path)
    with engine.begin() as c:
        c.execute(runs.insert().values(**{**dict(run_id=run_id, model='mlp', trigger='cli', status='succeeded',
                                                 notebook_path=str(path), requested_at=utcnow()), **row}))
    return run_id
