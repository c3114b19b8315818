"""Live scoring and the retraining policy with their real parts: `Champions` with hot reload over the broker, a
real producer sending the drift command to `event_topic`, the counts in SQLite and MariaDB.

The whole loop (events service, builds, predictions, demo stream) is in test_demo_loop.py.
"""
import json, time, uuid
import numpy as np, pytest, sqlalchemy as sa
from sklearn.tree import DecisionTreeClassifier
from streamml import registry
from streamml.config import make_consumer, make_producer
from streamml.data import drifting
from streamml.db import make_engine, init_db, live_accuracy
from streamml.scoring import Champions, score_rows, record, rolling_accuracy
from streamml.retrain import Retrainer
from streamml.messages import Limits, TrainingRow, parse_event, CommandEvent, model_update
from conftest import wait_for


def promote(s, engine, X, y, seed=0):
    "Train a small tree, save it through the registry, make it champion and announce it like the build runner."
    clf = DecisionTreeClassifier(max_depth=6, random_state=seed).fit(X[:300], y[:300])
    v = registry.save_version(s, 'dtr', registry.Trained(task='classification', serving=registry.tree_from_sklearn(clf), metric_name='accuracy',
                              metrics={'accuracy': float(clf.score(X[300:], y[300:]))}, holdout=(X[300:], y[300:])))
    with engine.begin() as c: registry.register_version(c, v, 'promoted'); registry.set_champion(c, v)
    p = make_producer(s)
    p.send(s.topics.model_update_topic, key=b'dtr', value=model_update('dtr', v.version, v.uuid, 'promote', v.metric)).get(10); p.close()
    return v


def rows_of(X, y): return [TrainingRow(tuple(map(float, x)), float(l)) for x, l in zip(X, y)]


@pytest.fixture(params=['sqlite', 'mariadb'])
def live_settings(request, settings):
    return settings.with_(db_url=request.getfixturevalue('mariadb_url')) if request.param == 'mariadb' else settings


def test_scoring_follows_hot_reload_and_policy_sends_drift(live_settings, monkeypatch):
    s = live_settings
    engine = make_engine(s); init_db(engine)
    monkeypatch.setenv('STREAMML_RETRAIN_POLICY', json.dumps({'default': {'drift_threshold': None},
                                                              'dtr': {'drift_threshold': 0.15, 'min_rows': 150, 'cooldown_s': 3600}}))
    X, y, starts = drifting([('agree', 500), ('agree', 600), ('contrary', 600)], seed=7, noise=0.3)
    v1 = promote(s, engine, X[:500], y[:500])
    producer = make_producer(s)
    champions = Champions(s, engine).start()
    send = lambda model, value: producer.send(s.topics.event_topic, key=model.encode(), value=value).get(10) is not None
    rt = Retrainer(s, engine, champions, send)
    try:
        def batch(a, b):   # what the events service does with a batch: score and count in its transaction, then decide
            with engine.begin() as c:
                outcomes = score_rows({m: champions.get(m) for m in champions.versions()}, rows_of(X[a:b], y[a:b]))
                record(c, outcomes)
            return rt.after_commit(outcomes, b - a)
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
        ev = parse_event(recs[0].value, Limits.of(s), set(s.known_models()) | {'dtr'})
        assert isinstance(ev, CommandEvent) and (ev.model, ev.trigger) == ('dtr', 'drift')
        assert 'live accuracy' in ev.reason and f'version {v1.version}' in ev.reason and 150 <= ev.parameters['window'] <= 600
        decayed = rolling_accuracy(engine, 'dtr', 5)['accuracy']
        # a new champion announced on model_update_topic: the hooks' Champions swap, and rows count under it
        v2 = promote(s, engine, X[1100:1700], y[1100:1700], seed=1)
        wait_for(lambda: champions.versions().get('dtr') == v2.version, 60, 'hot reload of the new champion')
        batch(1100, 1700)
        with engine.connect() as c:
            per = dict(c.execute(sa.select(live_accuracy.c.version, sa.func.sum(live_accuracy.c.n)).group_by(live_accuracy.c.version)).all())
        assert {k: int(v) for k, v in per.items()} == {v1.version: 1200, v2.version: 600}
        assert rolling_accuracy(engine, 'dtr', 5)['accuracy'] > decayed   # on the rows it was trained for
    finally:
        champions.stop(); producer.close(); engine.dispose()
