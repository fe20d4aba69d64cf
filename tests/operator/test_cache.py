"""The operator's read cache (kubetune.operator.cache): what it keeps, what it refuses, what it forgets.

The operator suite runs with the cache on (the default), so every lifecycle test reads through it;
these pin the rules a watch-fed cache lives by: a late event never rolls a newer body back, a
deleted object never comes back, and the operator's own writes are visible at once.
"""

from __future__ import annotations

from typing import Any

from kubetune.operator.cache import TOMBSTONES, Ensured, ObjectCache


def job(name: str, version: int, uid: str = "u1", namespace: str = "default", **labels: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": str(version), "labels": labels}
    return {"kind": "Job", "metadata": meta}


def test_a_late_watch_event_never_rolls_a_newer_body_back() -> None:
    cache = ObjectCache({"Job"})
    cache.observe("Job", job("a", 7))  # the answer to our own patch
    cache.observe("Job", job("a", 5))  # the watch event of an earlier change, arriving after it
    held = cache.get("Job", "default", "a")
    assert held is not None and held["metadata"]["resourceVersion"] == "7"
    cache.observe("Job", job("a", 9))
    held = cache.get("Job", "default", "a")
    assert held is not None and held["metadata"]["resourceVersion"] == "9"


def test_a_new_object_under_an_old_name_replaces_it_whatever_its_version() -> None:
    cache = ObjectCache({"Job"})
    cache.observe("Job", job("a", 50, uid="old"))
    cache.observe("Job", job("a", 3, uid="new"))
    held = cache.get("Job", "default", "a")
    assert held is not None and held["metadata"]["uid"] == "new"


def test_a_deleted_object_is_gone_and_a_write_answered_before_its_deletion_cannot_bring_it_back() -> None:
    cache = ObjectCache({"Job"})
    cache.observe("Job", job("a", 4))
    cache.forget("Job", job("a", 6))
    assert cache.get("Job", "default", "a") is None
    cache.observe("Job", job("a", 5))  # a patch's answer, sent before the deletion
    assert cache.get("Job", "default", "a") is None
    cache.observe("Job", job("a", 8, uid="u2"))  # a new Job of that name
    assert cache.get("Job", "default", "a") is not None


def test_the_deleted_uids_kept_are_bounded() -> None:
    cache = ObjectCache({"Job"})
    for index in range(TOMBSTONES + 5):
        cache.forget("Job", job(f"j{index}", 1, uid=f"u{index}"))
    cache.observe("Job", job("j0", 2, uid="u0"))  # the oldest tombstone was dropped
    assert cache.get("Job", "default", "j0") is not None
    cache.observe("Job", job("j9", 2, uid=f"u{TOMBSTONES + 4}"))
    assert cache.get("Job", "default", "j9") is None


def test_listing_filters_by_namespace_and_labels_and_only_serves_its_kinds() -> None:
    cache = ObjectCache({"Job"})
    cache.observe("Job", job("a", 1, uid="1", team="x"))
    cache.observe("Job", job("b", 1, uid="2", team="y"))
    cache.observe("Job", job("c", 1, uid="3", namespace="research", team="x"))
    assert [j["metadata"]["name"] for j in cache.list("Job", "default", {"team": "x"})] == ["a"]
    assert sorted(j["metadata"]["name"] for j in cache.list("Job", "default")) == ["a", "b"]
    assert cache.serves("Job") and not cache.serves("ConfigMap")


def test_ensured_children_are_remembered_per_owner_and_forgotten_with_it() -> None:
    ensured = Ensured()
    body = {"metadata": {"name": "tickets-spec", "namespace": "default", "uid": "c1"}, "data": {"spec": "x" * 1000}}
    ensured.remember("ConfigMap", body, "owner-1")
    kept = {"kind": "ConfigMap", "metadata": {"name": "tickets-spec", "namespace": "default", "uid": "c1"}}
    assert ensured.get("ConfigMap", "default", "tickets-spec", "owner-1") == kept, "its identity, not its content"
    assert ensured.get("ConfigMap", "default", "tickets-spec", "owner-2") is None, "another FineTuneJob of that name"
    ensured.forget_owner("owner-1")
    assert ensured.get("ConfigMap", "default", "tickets-spec", "owner-1") is None
    assert len(ensured) == 0


def test_every_read_is_a_copy_of_its_own() -> None:
    cache = ObjectCache({"Job"})
    cache.observe("Job", job("a", 1))
    first = cache.get("Job", "default", "a")
    assert first is not None
    first["metadata"]["name"] = "changed by a reader"
    again = cache.get("Job", "default", "a")
    assert again is not None and again["metadata"]["name"] == "a"
