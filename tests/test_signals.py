"""pre_spool, post_spool, pre_restore and post_restore: senders, arguments, timing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections, transaction
from django.dispatch import Signal

from memdb import api, signals
from memdb.exceptions import RestoreError, SpoolError
from memdb.models import PersistentStorage
from memdb.restore import RestoreResult
from memdb.spooler import SpoolResult
from tests.testapp.models import CommitScore, Legacy, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

ALL = {
    "pre_spool": signals.pre_spool,
    "post_spool": signals.post_spool,
    "pre_restore": signals.pre_restore,
    "post_restore": signals.post_restore,
}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    receivers = []
    for name, signal in ALL.items():

        def receiver(sender: Any, signal: Signal, _name: str = name, **kwargs: Any) -> None:
            recorder.calls.append((_name, sender, kwargs))

        signal.connect(receiver, weak=False)
        receivers.append((signal, receiver))
    yield recorder
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def snapshot_rows() -> int | None:
    row = PersistentStorage.objects.filter(model_name="Score").values("row_count").first()
    return row["row_count"] if row else None


def test_spool_sends_pre_and_post_spool(recorder: Recorder) -> None:
    Score.objects.create(player="a")
    (result,) = api.spool("testapp.Score")
    assert recorder.names() == ["pre_spool", "post_spool"]
    (_, pre_sender, pre_kwargs), (_, post_sender, post_kwargs) = recorder.calls
    assert pre_sender is Score and post_sender is Score
    assert pre_kwargs == {"label": "testapp.Score"}
    assert post_kwargs == {"label": "testapp.Score", "result": result}
    assert isinstance(post_kwargs["result"], SpoolResult)


def test_restore_sends_pre_and_post_restore(recorder: Recorder) -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    recorder.calls.clear()
    (result,) = api.restore("testapp.Score")
    assert recorder.names() == ["pre_restore", "post_restore"]
    (_, pre_sender, pre_kwargs), (_, post_sender, post_kwargs) = recorder.calls
    assert pre_sender is Score and post_sender is Score
    assert pre_kwargs == {"label": "testapp.Score"}
    assert post_kwargs == {"label": "testapp.Score", "result": result}
    assert isinstance(result, RestoreResult) and result.rows == 1


def test_one_pair_per_table(recorder: Recorder) -> None:
    api.spool("testapp.Score", "testapp.Legacy")
    assert [(name, sender) for name, sender, _ in recorder.calls] == [
        ("pre_spool", Score),
        ("post_spool", Score),
        ("pre_spool", Legacy),
        ("post_spool", Legacy),
    ]


def test_post_spool_is_sent_after_the_snapshot_is_committed() -> None:
    seen: dict[str, Any] = {}

    def pre(sender: Any, **kwargs: Any) -> None:
        seen["pre"] = snapshot_rows()

    def post(sender: Any, result: SpoolResult, **kwargs: Any) -> None:
        seen["in_atomic"] = (
            connections["default"].in_atomic_block,
            connections["memdb"].in_atomic_block,
        )
        row = PersistentStorage.objects.get(model_name="Score")
        seen["post"] = (row.generation, row.row_count)

    Score.objects.bulk_create([Score(player="a"), Score(player="b")])
    signals.pre_spool.connect(pre)
    signals.post_spool.connect(post)
    try:
        (result,) = api.spool("testapp.Score")
    finally:
        signals.pre_spool.disconnect(pre)
        signals.post_spool.disconnect(post)
    assert seen == {"pre": None, "in_atomic": (False, False), "post": (result.generation, 2)}


def test_post_restore_is_sent_after_the_rows_are_committed() -> None:
    seen: dict[str, Any] = {}

    def pre(sender: Any, **kwargs: Any) -> None:
        seen["pre"] = list(Score.objects.values_list("player", flat=True))

    def post(sender: Any, result: RestoreResult, **kwargs: Any) -> None:
        # Read through Django's own connection: it sees only committed rows.
        seen["post"] = list(Score.objects.order_by("pk").values_list("player", flat=True))
        seen["in_atomic"] = connections["memdb"].in_atomic_block

    Score.objects.bulk_create([Score(player="a"), Score(player="b")])
    api.spool("testapp.Score")
    Score.objects.all().delete()
    Score.objects.create(player="new")
    signals.pre_restore.connect(pre)
    signals.post_restore.connect(post)
    try:
        api.restore("testapp.Score")
    finally:
        signals.pre_restore.disconnect(pre)
        signals.post_restore.disconnect(post)
    assert seen == {"pre": ["new"], "post": ["a", "b"], "in_atomic": False}


def test_failed_restore_sends_no_post_restore(recorder: Recorder) -> None:
    api.spool("testapp.Score")
    PersistentStorage.objects.filter(model_name="Score").update(checksum="0" * 64)
    recorder.calls.clear()
    with pytest.raises(RestoreError):
        api.restore("testapp.Score")
    assert "post_restore" not in recorder.names()


def test_refused_spool_sends_nothing(recorder: Recorder) -> None:
    api.spool("testapp.Score")
    PersistentStorage.objects.filter(model_name="Score").update(checksum="0" * 64)
    with pytest.raises(RestoreError):
        api.restore("testapp.Score")
    recorder.calls.clear()
    with pytest.raises(SpoolError):
        api.spool("testapp.Score")
    assert recorder.calls == []


def test_commit_policy_sends_post_spool_after_the_write_commits(recorder: Recorder) -> None:
    with transaction.atomic(using="memdb"):
        CommitScore.objects.create(player="a")
        assert recorder.calls == []
    assert [(name, sender) for name, sender, _ in recorder.calls] == [
        ("pre_spool", CommitScore),
        ("post_spool", CommitScore),
    ]
    assert recorder.calls[1][2]["result"].rows == 1
