"""The labeler queue's state: what needs judgements, reservations, progress and agreement."""

from __future__ import annotations

from datetime import UTC, datetime

from serving.config import LabelingSettings
from serving.web.labeling import LabelingQueue
from streams.events import AdapterRef, ChatMessage, CompletionEvent, RankingFeedback, SamplingParams

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def queue_with(requests: int, n: int = 3, **settings: object) -> tuple[LabelingQueue, Clock]:
    """A queue fed ``requests`` chat requests of ``n`` answers each (request ids r0, r1, …)."""
    clock = Clock()
    queue = LabelingQueue(LabelingSettings(reservation_s=60, **settings), clock=clock)
    for request in range(requests):
        for index in range(n):
            queue.add_completion(completion(f"r{request}", index, n))
    return queue, clock


def completion(request_id: str, index: int, n: int, **fields: object) -> CompletionEvent:
    return CompletionEvent(
        completion_id=f"{request_id}-c{index}", request_id=request_id, prompt_id=f"p-{request_id}",
        user_id="ann", messages=[ChatMessage(role="user", content=f"question {request_id}")],
        completion=f"answer {index}", choice_index=index, adapter=AdapterRef(scope="base"),
        model="tiny", sampling=SamplingParams(n=n), prompt_tokens=3, completion_tokens=2,
        latency_ms=1.0, **fields,
    )


def ranking(labeler: str, request_id: str, order: list[list[int]]) -> RankingFeedback:
    groups = [[f"{request_id}-c{index}" for index in group] for group in order]
    return RankingFeedback(prompt_id=f"p-{request_id}", user_id=labeler, labeler_id=labeler,
                           ranking=groups, created_at=datetime.fromtimestamp(NOW, UTC))


def test_two_labelers_asking_at_once_get_different_items_until_a_reservation_expires() -> None:
    queue, clock = queue_with(2)
    first, second = queue.next("lena").item, queue.next("max").item
    assert first is not None and second is not None
    assert (first.item_id, second.item_id) == ("r0", "r1")
    assert [a.completion_id for a in first.answers] == ["r0-c0", "r0-c1", "r0-c2"]
    assert queue.next("lena").item.item_id == "r0"  # asking again keeps (and renews) one's own
    assert queue.next("kim").item is None  # both are held
    clock.now += 61
    assert queue.next("kim").item.item_id == "r0"


def test_an_item_leaves_the_queue_after_enough_rankings_unless_its_labelers_disagree() -> None:
    queue, _ = queue_with(2, min_rankings=2, max_rankings=3)
    for labeler, order in (("lena", [[0], [1], [2]]), ("max", [[1], [0], [2]])):
        queue.add_ranking(ranking(labeler, "r0", [[0], [1], [2]]))
        queue.add_ranking(ranking(labeler, "r1", order))
    task = queue.next("kim")
    assert task.item.item_id == "r1" and task.item.rankings == 2  # r0 is settled, r1 disputed
    assert task.progress.remaining == 1
    queue.add_ranking(ranking("kim", "r1", [[0, 1], [2]]))
    assert queue.next("zoe").item is None  # max_rankings reached


def test_a_labeler_is_not_offered_what_they_ranked_or_skipped_nor_an_incomplete_set() -> None:
    queue, _ = queue_with(3)
    queue.add_completion(completion("r3", 0, 2))  # one of its two answers so far
    queue.add_completion(completion("r4", 0, 2))
    queue.add_completion(completion("r4", 1, 2, truncated=True))  # cut short: never offered
    queue.add_completion(completion("r5", 0, 1))  # a single answer: nothing to compare
    queue.add_ranking(ranking("lena", "r0", [[0], [1, 2]]))
    assert queue.next("lena").item.item_id == "r1"
    assert queue.next("lena", skip="r1").item.item_id == "r2"
    task = queue.next("lena", skip="r2")
    assert task.item is None and task.progress.remaining == 0
    assert queue.next("max").item.item_id == "r0"  # skips and rankings are per labeler


def test_progress_counts_rankings_of_today_once_and_agreement_against_the_majority() -> None:
    queue, clock = queue_with(1, min_rankings=5)
    queue.add_ranking(ranking("max", "r0", [[0], [1], [2]]))
    queue.add_ranking(ranking("kim", "r0", [[0], [1], [2]]))
    queue.add_ranking(ranking("zoe", "r0", [[1], [0], [2]]))
    mine = ranking("lena", "r0", [[1], [2], [0]])
    queue.add_ranking(mine)
    queue.add_ranking(mine)  # delivered twice: counted once
    progress = queue.next("lena").progress
    # lena's pairs: 1>2 (others 3:0, agree), 1>0 (1:2, disagree), 2>0 (0:3, disagree)
    assert (progress.done_today, progress.compared_pairs) == (1, 3)
    assert progress.agreement == 1 / 3
    clock.now += 24 * 3600
    assert queue.next("lena").progress.done_today == 0
    assert queue.next("newcomer").progress.agreement is None
