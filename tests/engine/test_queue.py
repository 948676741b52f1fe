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


def test_priority_orders_an_owners_line_but_never_jumps_another_owner() -> None:
    queue: FairQueue[str] = FairQueue(10)
    queue.put("a-low", owner="a")
    queue.put("b-high", owner="b", priority=1000)
    queue.put("a-high", owner="a", priority=5)
    assert drain(queue) == ["a-high", "b-high", "a-low"]


def test_the_owner_running_fewest_jobs_goes_first() -> None:
    queue: FairQueue[str] = FairQueue(10)
    queue.put("greedy-5", owner="greedy")
    queue.put("small", owner="small")
    assert queue.pop({"greedy": 4}) == "small"
    assert queue.pop({"greedy": 4, "small": 1}) == "greedy-5"


def test_an_owner_holds_at_most_its_share() -> None:
    queue: FairQueue[str] = FairQueue(10, max_per_owner=3)
    assert queue.room_for("a", 3) and not queue.room_for("a", 4)
    for i in range(3):
        queue.put(f"a{i}", owner="a")
    assert not queue.room_for("a", 1) and queue.room_for("b", 3)


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
