"""Helpers shared by the serving tests (tests/test_serving*.py): real artifacts, promotions, a service thread."""
import json, threading, time, uuid
import numpy as np
from streamml.config import make_producer, make_consumer
from streamml.procs import StopFlag
from streamml.db import make_engine, init_db
from streamml.registry import save_version, Trained, register_version, set_champion, tree_from_sklearn, linear_arrays
from streamml.messages import model_update
from streamml.predictions import predictions_runner
from streamml.testing import random_dense
from conftest import wait_for

def dense_version(s, seed=0, model='mlp'):
    "A real mlp artifact from hand-made dense arrays (no TensorFlow); each seed gives other weights."
    rng = np.random.default_rng(seed)
    X = rng.integers(1, 11, size=(40, s.n_features)).astype(float)
    return save_version(s, model, Trained(task='classification', serving=random_dense(s.n_features, rng), metric_name='accuracy',
                        metrics={'accuracy': 0.5 + seed / 1000}, holdout=(X, np.zeros(len(X), int))))

def tree_version(s, depth=5):
    "A real dtr artifact from a fitted scikit-learn tree."
    from sklearn.tree import DecisionTreeClassifier
    rng = np.random.default_rng(1)
    X = rng.integers(1, 11, size=(200, s.n_features)).astype(float); y = np.round(X.mean(axis=1)).astype(int)
    clf = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(X, y)
    return save_version(s, 'dtr', Trained(task='classification', serving=tree_from_sklearn(clf), metric_name='accuracy',
                        metrics={'accuracy': float(clf.score(X, y))}, holdout=(X[:30], y[:30]))), clf

def linear_version(s, slope=0.5, intercept=1.0):
    "A real slr artifact."
    X = np.arange(10.).reshape(-1, 1)
    return save_version(s, 'slr', Trained(task='regression', serving=linear_arrays(slope, intercept), metric_name='r2',
                        metrics={'r2': 0.7}, holdout=(X, slope * X[:, 0] + intercept)))

def promote(s, engine, v, announce=True, action='promote'):
    "Make `v` champion in one transaction, then announce it on model_update_topic."
    with engine.begin() as c: register_version(c, v, 'promoted'); set_champion(c, v, action)
    if announce:
        p = make_producer(s)
        try: p.send(s.topics.model_update_topic, key=v.model.encode(), value=model_update(v.model, v.version, v.uuid, action, v.metric)).get(10)
        finally: p.close(5)
    return v

class Service:
    "The predictions service (`predictions_runner`) in a thread of this process (a fresh group), stopped on exit."
    def __init__(self, s, group=None, **kw):
        self.s, self.group, self.stop, self.kw = s, group or f'test-{uuid.uuid4().hex[:8]}', StopFlag(), kw
        self.r = predictions_runner(s, self.group, **kw)
        self.t = threading.Thread(target=self.r.run, args=(self.stop,), daemon=True)
    def __enter__(self): self.t.start(); return self
    def __exit__(self, *exc): self.stop.set(); self.t.join(30); assert not self.t.is_alive()

class Responses:
    "Reads a topic from the start without a group; collects records by key."
    def __init__(self, s, topic=None):
        from kafka import TopicPartition
        self.c = make_consumer(s, group_id=None)
        topic = topic or s.topics.prediction_response_topic
        parts = wait_for(lambda: self.c.partitions_for_topic(topic), 10, f'partitions of {topic}')
        self.c.assign([TopicPartition(topic, p) for p in parts]); self.c.seek_to_beginning()
        self.records = []
    def poll(self):
        for recs in self.c.poll(100).values(): self.records += recs
        return self.records
    def by_key(self):
        return {r.key.decode() if r.key else None: json.loads(r.value) for r in self.records}
    def wait_keys(self, keys, timeout=60.0):
        keys = set(keys)
        wait_for(lambda: keys <= set(self.poll() and self.by_key()), timeout, f'responses to {len(keys)} requests')
        return self.by_key()
    def close(self): self.c.close()

def send_raw(s, items, topic=None):
    "Produce `(key, value)` pairs (bytes or None) to the request topic and wait for the acknowledgements."
    p = make_producer(s)
    try:
        futs = [p.send(topic or s.topics.prediction_request_topic, key=k.encode() if k else None, value=v) for k, v in items]
        p.flush(); [f.get(10) for f in futs]
    finally: p.close(5)
