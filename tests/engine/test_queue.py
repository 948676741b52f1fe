from server.engine.queue import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item)
    return out


def test_owners_take_turns_so_a_flood_does_not_starve_others() -> None:
    queue: FairQueue[str] = FairQueue(100)
    for i in range(5):
        queue.put(f"flood-{i}", owner="flood")
    queue.put("alice-0", owner="alice")
    queue.put("bob-0", owner="bob")
    assert drain(queue) == [
        "flood-0",
        "alice-0",
        "bob-0",
        "flood-1",
        "flood-2",
        "flood-3",
        "flood-4",
    ]


def test_fifo_within_one_owner() -> None:
    queue: FairQueue[str] = FairQueue(10)
    for item in ["a", "b", "c"]:
        queue.put(item, owner="x")
    assert drain(queue) == ["a", "b", "c"]


def test_higher_priority_goes_first() -> None:
    queue: FairQueue[str] = FairQueue(10)
    queue.put("low", owner="a")
    queue.put("high", owner="b", priority=5)
    assert drain(queue) == ["high", "low"]


def test_full_and_len() -> None:
    queue: FairQueue[str] = FairQueue(2)
    assert not queue.full()
    queue.put("a", owner="x")
    queue.put("b", owner="y")
    assert len(queue) == 2
    assert queue.full()
    queue.pop()
    assert not queue.full()


def test_remove_if_drops_matching_items_and_keeps_order() -> None:
    queue: FairQueue[str] = FairQueue(10)
    for item, owner in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")]:
        queue.put(item, owner=owner)
    assert sorted(queue.remove_if(lambda item: item.endswith("1"))) == ["a1", "b1"]
    assert len(queue) == 2
    assert drain(queue) == ["a2", "b2"]
