import numpy as np
import pytest

from llmlab.core.errors import LLMLabError
from llmlab.rag.hnsw import HNSW
from llmlab.rag.index_exact import ExactIndex


def clustered(n=3000, dim=48, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:100] + 0.1 * rng.normal(size=(100, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32)


def recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


@pytest.fixture(scope="module")
def built():
    x, q = clustered()
    index = HNSW(x.shape[1], M=12, ef_construction=80)
    index.add(x)
    truth, _ = ExactIndex(x).search_batch(q, 10)
    return index, x, q, truth


def test_exact_index_matches_brute_force():
    x, q = clustered(500)
    idx, sims = ExactIndex(x).search_batch(q, 5)
    assert (idx == np.argsort(-(q @ x.T), axis=1)[:, :5]).all()
    i1, s1 = ExactIndex(x).search(q[0], 5)
    assert (i1 == idx[0]).all() and np.allclose(s1, sims[0])


def test_recall_close_to_hnswlib(built):
    hnswlib = pytest.importorskip("hnswlib")
    index, x, q, truth = built
    ref = hnswlib.Index("ip", x.shape[1])
    ref.init_index(len(x), M=12, ef_construction=80, random_seed=0)
    ref.add_items(x)
    for ef in (16, 64):
        ref.set_ef(ef)
        ours = recall(index.search_batch(q, 10, ef), truth)
        theirs = recall(ref.knn_query(q, 10)[0], truth)
        assert ours >= theirs - 0.02, (ef, ours, theirs)
    assert recall(index.search_batch(q, 10, 64), truth) > 0.97


def test_save_load_and_tombstones(built, tmp_path):
    index, x, q, truth = built
    index.save(tmp_path / "g.npz")
    again = HNSW.load(tmp_path / "g.npz")
    assert (again.search_batch(q[:20], 10, 32) == index.search_batch(q[:20], 10, 32)).all()
    victim = int(truth[0, 0])
    again.delete(victim)
    labels, _ = again.search(q[0], 10, 64)
    assert victim not in labels.tolist() and len(labels) == 10
    assert len(again) == len(x) - 1
    with pytest.raises(LLMLabError):
        again.delete(victim)


def test_load_refuses_garbage(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a numpy file")
    with pytest.raises(LLMLabError, match="rebuild"):
        HNSW.load(tmp_path / "bad.npz")


def test_add_after_load_continues_the_level_stream(tmp_path):
    # build-then-add after a save/load must equal build-then-add without it: the level RNG is
    # saved with the graph instead of being re-seeded on load.
    x, _ = clustered(300, dim=16, seed=3)
    a = HNSW(16, M=6, ef_construction=20, seed=7)
    a.add(x[:150])
    a.add(x[150:])
    b = HNSW(16, M=6, ef_construction=20, seed=7)
    b.add(x[:150])
    b.save(tmp_path / "g.npz")
    b = HNSW.load(tmp_path / "g.npz")
    b.add(x[150:])
    assert (a.levels[:300] == b.levels[:300]).all() and a.levels[:300].max() > 0
    assert (a.links0[:300] == b.links0[:300]).all()
    assert [sorted(layer) for layer in a.upper] == [sorted(layer) for layer in b.upper]
    assert all((layer[n] == other[n]).all() for layer, other in zip(a.upper, b.upper) for n in layer)
    assert (a.entry, a.max_level) == (b.entry, b.max_level)
