"""memcachedlock.zope.patch_catalog() on a real Products.ZCatalog catalog
(the zope extra), stored in ZEO and written by several ZEO client
processes at once, each retrying a ConflictError as Zope's publisher does
(three retries): bench/zcatalog_bench.py, briefly."""

import os
import sys

import pytest

pytest.importorskip("Products.ZCatalog", reason="the zope extra: pip install './clients/python[zope]'")

from Products.ZCatalog.ZCatalog import ZCatalog  # noqa: E402

from memcachedlock.zope import patch_catalog, unpatch_catalog  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import zcatalog_bench  # noqa: E402


def test_patched_catalog_under_concurrent_zeo_clients(cluster):
    r = zcatalog_bench.run(cluster, "patched", "portal_catalog", clients=3, docs=15, work_ms=2)
    assert r["escaped"] == 0, r  # nothing past the publisher's retries
    # The lock is held until the commit, and a commit that conflicts
    # anyway (its transaction began before the grant, so it may have read
    # the catalog before the previous holder's commit) keeps it reserved
    # for the retry: one retry at most.
    assert r["most"] <= 2, r
    assert r["committed"] == r["requests"]
    assert r["wrong"] == [], r  # every document in every index


def test_patch_applies_to_the_real_class():
    original = ZCatalog.catalog_object
    try:
        patch_catalog()
        assert ZCatalog.catalog_object is not original
        assert ZCatalog.catalog_object._memcachedlock_original is original
    finally:
        unpatch_catalog(ZCatalog)
    assert ZCatalog.catalog_object is original
