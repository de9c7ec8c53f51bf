"""Process tuning: the garbage collector's settings after start-up."""

import gc

import pytest

from shared.runtime import YOUNG_GENERATION_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(restored_gc):
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    created_at_start_up = [{"config": index} for index in range(1000)]
    tune_gc()
    assert gc.get_freeze_count() >= len(created_at_start_up)
    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, middle, old)


def test_cyclic_garbage_is_still_collected(restored_gc):
    tune_gc()
    collected_before = sum(stat["collected"] for stat in gc.get_stats())
    for _ in range(3 * YOUNG_GENERATION_THRESHOLD):
        node: dict = {}
        node["self"] = node  # a cycle only the collector frees
    assert sum(stat["collected"] for stat in gc.get_stats()) > collected_before
