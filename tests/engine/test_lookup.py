from server.engine.lookup import DraftPolicy, NgramIndex


def test_a_repeated_run_proposes_what_followed_it() -> None:
    index = NgramIndex([1, 2, 3, 4, 5, 6, 9, 1, 2, 3], sizes=(3, 2))
    assert index.draft(3) == [4, 5, 6]
    assert index.draft(1) == [4]


def test_no_earlier_occurrence_proposes_nothing() -> None:
    index = NgramIndex([1, 2, 3, 4, 5], sizes=(3, 2))
    assert index.draft(4) == []


def test_the_latest_occurrence_wins_and_appends_are_indexed() -> None:
    index = NgramIndex([7, 8, 1, 7, 8, 2], sizes=(2,))
    index.append(7)
    index.append(8)
    assert index.draft(2) == [2, 7]  # after the latest earlier "7 8"


def test_a_shorter_run_is_tried_when_the_longer_does_not_occur() -> None:
    index = NgramIndex([5, 1, 2, 9, 3, 1, 2], sizes=(3, 2))
    assert index.draft(2) == [9, 3]


def test_the_draft_stops_at_the_end_of_the_history() -> None:
    index = NgramIndex([1, 2, 1, 2], sizes=(2,))
    assert index.draft(8) == [1, 2]


def test_the_draft_length_follows_acceptance() -> None:
    policy = DraftPolicy(max_draft=8)
    assert policy.allowance() == 4
    policy.record(4, 4)
    assert policy.allowance() == 8
    policy.record(8, 8)
    assert policy.allowance() == 8  # at most max_draft
    policy.record(8, 2)
    assert policy.allowance() == 4


def test_guesses_that_are_mostly_wrong_pause_guessing_longer_each_time() -> None:
    policy = DraftPolicy(max_draft=8)
    misses = 0
    while policy.allowance() > 0:
        policy.record(policy.length, 0)
        misses += 1
    assert misses <= 3  # a few wrong guesses pause it
    paused = 1
    while policy.allowance() == 0:
        paused += 1
    assert paused == DraftPolicy.FIRST_PAUSE  # the loop above saw the first paused step
    policy.record(policy.length, 0)  # the guess after the pause is wrong: a longer pause
    paused = 0
    while policy.allowance() == 0:
        paused += 1
    assert paused == 2 * DraftPolicy.FIRST_PAUSE
    assert policy.drafted > 0 and policy.accepted == 0


def test_guesses_kept_a_quarter_of_the_time_do_not_go_on() -> None:
    policy = DraftPolicy(max_draft=8)
    guessed = 0
    for _ in range(200):
        if (n := policy.allowance()) > 0:
            guessed += 1
            policy.record(n, n // 4)
    assert guessed < 40  # a quarter kept costs more than it saves: mostly paused


def test_guesses_mostly_kept_go_on_every_step() -> None:
    policy = DraftPolicy(max_draft=8)
    for _ in range(50):
        n = policy.allowance()
        assert n > 0
        policy.record(n, n - (1 if n > 4 else 0))


def test_a_policy_with_no_draft_never_guesses() -> None:
    assert DraftPolicy(max_draft=0).allowance() == 0
