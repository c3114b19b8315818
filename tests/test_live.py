"""Live scoring hooks with their real parts: `Champions` with hot reload over the broker, a real producer sending
the drift command to `event_topic`, the counts in SQLite and MariaDB.

The whole loop (events service, builds, predictions, demo stream) is in test_demo_loop.py.
"""
import json, time, uuid
import numpy as np, pytest, sqlalchemy as sa
from sklearn.tree import DecisionTreeClassifier
from streamml import registry
from streamml.config import make_consumer, make_producer
from streamml.data import drifting
from streamml.db import make_engine, init_db, live_accuracy
from streamml.live import make_hooks, rolling_accuracy
from streamml.messages import TrainingRow, parse_event, CommandEvent
from conftest import wait_for


def promote(s, engine, X, y, seed=0):
    "Train a small tree, save it through the registry, make it champion and announce it like the build runner."
    clf = DecisionTreeClassifier(max_depth=6, random_state=seed).fit(X[:300], y[:300])
    v = registry.save_version(s, 'dtr', registry.Trained(task='classification', serving=registry.tree_from_sklearn(clf), metric_name='accuracy',
                              metrics={'accuracy': float(clf.score(X[300:], y[300:]))}, holdout=(X[300:], y[300:])))
    with engine.begin() as c: registry.register_version(c, v, 'promoted'); registry.set_champion(c, v)
    p = make_producer(s)
    p.send(s.topics.model_update_topic, key=b'dtr', value=registry.update_message(v, 'promote')).get(10); p.close()
    return v


def rows_of(X, y): return [TrainingRow(tuple(map(float, x)), float(l)) for x, l in zip(X, y)]


@pytest.fixture(params=['sqlite', 'mariadb'])
def live_settings(request, settings):
    return settings.with_(db_url=request.getfixturevalue('mariadb_url')) if request.param == 'mariadb' else settings


def test_hooks_score_follow_hot_reload_and_send_drift(live_settings, monkeypatch):
    s = live_settings
    engine = make_engine(s); init_db(engine)
    monkeypatch.setenv('STREAMML_RETRAIN_POLICY', json.dumps({'default': {'drift_threshold': None},
                                                              'dtr': {'drift_threshold': 0.15, 'min_rows': 150, 'cooldown_s': 3600}}))
    X, y, starts = drifting([('agree', 500), ('agree', 600), ('contrary', 600)], seed=7, noise=0.3)
    v1 = promote(s, engine, X[:500], y[:500])
    producer = make_producer(s)
    hooks = make_hooks(s, engine, producer)
    try:
        def batch(a, b):
            with engine.begin() as c: hooks.score(c, rows_of(X[a:b], y[a:b]))
            return hooks.after_commit(b - a)
        # scored by the champion loaded at start; no drift on the old relationship
        assert sum(len(batch(i, i + 100)) for i in range(500, 1100, 100)) == 0
        ra = rolling_accuracy(engine, 'dtr', 5)
        assert (ra['version'], ra['n']) == (v1.version, 600) and ra['accuracy'] > 0.35
        # the drift: one command, on event_topic, with its trigger, reason and the window since the change
        sent = [c for i in range(1100, 1700, 100) for c in batch(i, i + 100)]
        assert [c['trigger'] for c in sent] == ['drift']
        consumer = make_consumer(s, s.topics.event_topic, group_id=None)
        recs = wait_for(lambda: [r for rs in consumer.poll(200).values() for r in rs], 30, 'the drift command on event_topic')
        consumer.close()
        ev = parse_event(recs[0].value, s.n_features, set(s.known_models()) | {'dtr'})
        assert isinstance(ev, CommandEvent) and (ev.model, ev.trigger) == ('dtr', 'drift')
        assert 'live accuracy' in ev.reason and f'version {v1.version}' in ev.reason and 150 <= ev.parameters['window'] <= 600
        decayed = rolling_accuracy(engine, 'dtr', 5)['accuracy']
        # a new champion announced on model_update_topic: the hooks' Champions swap, and rows count under it
        v2 = promote(s, engine, X[1100:1700], y[1100:1700], seed=1)
        wait_for(lambda: hooks.champions.versions().get('dtr') == v2.version, 60, 'hot reload of the new champion')
        batch(1100, 1700)
        with engine.connect() as c:
            per = dict(c.execute(sa.select(live_accuracy.c.version, sa.func.sum(live_accuracy.c.n)).group_by(live_accuracy.c.version)).all())
        assert {k: int(v) for k, v in per.items()} == {v1.version: 1200, v2.version: 600}
        assert rolling_accuracy(engine, 'dtr', 5)['accuracy'] > decayed   # on the rows it was trained for
    finally:
        hooks.close(); producer.close(); engine.dispose()
