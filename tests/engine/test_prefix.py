import random

from server.engine.prefix import PrefixTree, common_prefix_length


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length((5, 6), [7]) == 0


def test_common_prefix_length_matches_a_plain_scan() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(10))]
        expected = 0
        while expected < min(len(a), len(b)) and a[expected] == b[expected]:
            expected += 1
        assert common_prefix_length(a, b) == expected


def test_longest_match_finds_the_deepest_shared_prefix() -> None:
    tree: PrefixTree[str] = PrefixTree()
    tree.insert([1, 2, 3, 4], "a")
    tree.insert([1, 2, 9], "b")
    tree.insert([7, 7], "c")
    assert tree.longest_match([1, 2, 3, 4, 5]) == (4, "a")
    assert tree.longest_match([1, 2, 3, 8]) == (3, "a")
    assert tree.longest_match([1, 2, 9, 9]) == (3, "b")
    assert tree.longest_match([1, 2]) in {(2, "a"), (2, "b")}
    assert tree.longest_match([7]) == (1, "c")
    assert tree.longest_match([5])[0] == 0


def test_accept_filters_values() -> None:
    tree: PrefixTree[int] = PrefixTree()
    tree.insert([1, 2, 3], 0)
    tree.insert([1, 2], 1)
    assert tree.longest_match([1, 2, 3]) == (3, 0)
    assert tree.longest_match([1, 2, 3], accept=lambda v: v != 0) == (2, 1)
    assert tree.longest_match([1, 2, 3], accept=lambda v: False) == (0, None)


def test_remove_prunes_and_keeps_other_keys() -> None:
    tree: PrefixTree[str] = PrefixTree()
    tree.insert([1, 2, 3], "a")
    tree.insert([1, 2, 4], "b")
    tree.remove([1, 2, 3], "a")
    assert "a" not in tree
    assert tree.longest_match([1, 2, 3]) == (2, "b")
    tree.remove([1, 2, 4], "b")
    assert tree.longest_match([1, 2, 4]) == (0, None)
    tree.remove([9], "zzz")  # absent: no error


def test_same_key_many_values_and_empty_key() -> None:
    tree: PrefixTree[int] = PrefixTree()
    tree.insert([], 5)
    tree.insert([3, 3], 6)
    tree.insert([3, 3], 7)
    assert tree.longest_match([3, 3, 3], accept=lambda v: v == 7) == (2, 7)
    assert tree.longest_match([4], accept=lambda v: v == 5) == (0, 5)


def test_against_brute_force() -> None:
    rng = random.Random(11)
    tree: PrefixTree[int] = PrefixTree()
    keys: dict[int, list[int]] = {}
    for value in range(60):
        key = [rng.randrange(4) for _ in range(rng.randrange(1, 12))]
        keys[value] = key
        tree.insert(key, value)
    for value in range(0, 60, 3):
        tree.remove(keys.pop(value), value)
    for _ in range(200):
        query = [rng.randrange(4) for _ in range(rng.randrange(1, 14))]
        depth, found = tree.longest_match(query)
        best = max(common_prefix_length(k, query) for k in keys.values())
        assert depth == best
        assert found is not None and common_prefix_length(keys[found], query) == best


def test_prefixes_of_lists_every_key_that_starts_the_query() -> None:
    tree: PrefixTree[str] = PrefixTree()
    tree.insert([1, 2], "short")
    tree.insert([1, 2, 3, 4], "long")
    tree.insert([1, 9], "other")
    tree.insert([], "empty")
    assert sorted(tree.prefixes_of([1, 2, 3, 4, 5])) == ["empty", "long", "short"]
    assert sorted(tree.prefixes_of([1, 2, 3])) == ["empty", "short"]
