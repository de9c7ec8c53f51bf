"""Process tuning: the garbage collector's settings after start-up."""

import gc
import weakref

import pytest

from shared.runtime import YOUNG_GENERATION_THRESHOLD, tune_gc, warm_up


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc.enable()


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(restored_gc):
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    gc.disable()  # as function_app.py imports
    created_at_start_up = [{"config": index} for index in range(1000)]
    tune_gc()
    assert gc.get_freeze_count() >= len(created_at_start_up)
    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, middle, old)
    assert gc.isenabled()


class _Node:
    pass


def test_the_warm_up_frees_the_start_ups_garbage_then_freezes_what_lives(restored_gc):
    gc.unfreeze()
    garbage = _Node()
    garbage.self = garbage  # a cycle left by start-up: frozen with the rest by tune_gc
    freed = weakref.ref(garbage)
    del garbage
    tune_gc()
    assert freed() is not None and gc.get_freeze_count() > 0
    warm_up([]).join(10)
    assert freed() is None
    assert gc.get_freeze_count() > 0


def test_cyclic_garbage_is_still_collected(restored_gc):
    tune_gc()
    collected_before = sum(stat["collected"] for stat in gc.get_stats())
    for _ in range(3 * YOUNG_GENERATION_THRESHOLD):
        node: dict = {}
        node["self"] = node  # a cycle only the collector frees
    assert sum(stat["collected"] for stat in gc.get_stats()) > collected_before
