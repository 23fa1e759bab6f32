"""The snapshot store's rules, without a model: keys never mix, the budget holds, retired adapters leave no trace."""

from neeko_npc.engine.snapshots import Snapshot, SnapshotStore

SMITH = (("sha-smith", 1.0),)
BARD = (("sha-bard", 1.0),)
MIX = (("sha-bard", 0.5), ("sha-smith", 0.5))


def snap(key, tokens, size=100, warm=False):
    return Snapshot(key, tuple(tokens), bytes(size), warm)


def test_a_snapshot_is_offered_only_under_its_own_key():
    store = SnapshotStore(10_000)
    store.put(snap(SMITH, [1, 2, 3, 4, 5]))
    assert store.best(SMITH, [1, 2, 3, 9])[1] == 3
    assert store.best(BARD, [1, 2, 3, 9]) == (None, 0)  # the same tokens under other adapters: never
    assert store.best(MIX, [1, 2, 3, 4, 5]) == (None, 0)
    assert store.best(((("sha-smith", 0.5)),), [1, 2, 3]) == (None, 0)  # the same adapter at another scale


def test_the_longest_shared_prefix_wins_and_must_beat_what_the_context_holds():
    store = SnapshotStore(10_000)
    store.put(snap(SMITH, [1, 2, 3]))
    store.put(snap(SMITH, [1, 2, 7, 8, 9]))
    found, n = store.best(SMITH, [1, 2, 7, 8, 4])
    assert found.tokens == (1, 2, 7, 8, 9) and n == 4
    assert store.best(SMITH, [1, 2, 7, 8, 4], at_least=4) == (None, 0)  # the context already holds as much


def test_a_longer_state_replaces_the_one_it_extends_but_not_a_warm_prefix():
    store = SnapshotStore(10_000)
    store.put(snap(SMITH, [1, 2], warm=True))
    store.put(snap(SMITH, [1, 2, 3]))
    store.put(snap(SMITH, [1, 2, 3, 4]))
    assert sorted(s.tokens for s in store._items.values()) == [(1, 2), (1, 2, 3, 4)]
    assert store.covers(SMITH, [1, 2, 3]) and not store.covers(SMITH, [1, 2, 5]) and not store.covers(BARD, [1, 2])


def test_eviction_keeps_the_budget_least_recently_used_first_and_warm_prefixes_last():
    store = SnapshotStore(350)
    store.put(snap(SMITH, [1], warm=True))
    store.put(snap(BARD, [2]))
    store.put(snap(MIX, [3]))
    store.best(BARD, [2, 0])  # bard's state is used again: the mix's is now the oldest conversation
    store.put(snap(SMITH, [9, 9]))
    assert store.nbytes <= 350 and len(store) == 3 and store.stats["evicted"] == 1
    assert store.best(MIX, [3, 0]) == (None, 0) and store.best(SMITH, [1, 0])[1] == 1
    store.put(snap(BARD, [5], size=300))  # only room for it once every conversation and then the warm prefix go
    assert store.nbytes <= 350 and [s.tokens for s in store._items.values()] == [(5,)]
    assert not store.put(snap(BARD, [6], size=351))  # larger than the whole budget: refused, nothing evicted
    assert [s.tokens for s in store._items.values()] == [(5,)]


def test_a_retired_adapter_drops_its_snapshots_and_keeps_none_until_loaded_again():
    store = SnapshotStore(10_000)
    store.put(snap(SMITH, [1, 2]))
    store.put(snap(MIX, [1, 2]))
    store.put(snap(BARD, [1, 2]))
    assert store.drop_adapter("sha-smith") == 2
    assert [s.key for s in store._items.values()] == [BARD]
    assert not store.put(snap(SMITH, [1, 2, 3]))  # a stream that outlived the reload cannot bring it back
    store.revive("sha-smith")
    assert store.put(snap(SMITH, [1, 2, 3])) and store.best(SMITH, [1, 2, 3, 4])[1] == 3
