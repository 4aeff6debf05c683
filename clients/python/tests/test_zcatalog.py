"""memcachedlock.zope.patch_catalog() on a real Products.ZCatalog catalog
(the zope extra), stored in ZEO and written by several ZEO client
processes at once, each retrying a ConflictError as Zope's publisher does
(three retries)."""

import multiprocessing
import os
import sys

import pytest

pytest.importorskip("Products.ZCatalog", reason="the zope extra: pip install './clients/python[zope]'")

import transaction  # noqa: E402
from Products.PluginIndexes.FieldIndex.FieldIndex import FieldIndex  # noqa: E402
from Products.PluginIndexes.KeywordIndex.KeywordIndex import KeywordIndex  # noqa: E402
from Products.ZCatalog.ZCatalog import ZCatalog  # noqa: E402
from ZODB.POSException import ConflictError  # noqa: E402

from memcachedlock.zope import patch_catalog, unpatch_catalog  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import zodb_bench  # noqa: E402

PUBLISHER_ATTEMPTS = 4  # ZPublisher: the request, then up to three retries
CLIENTS, DOCS = 3, 15


class Document(object):
    """What a catalog indexes: an id, a workflow state everyone shares (a
    hot entry in its index), and subjects."""

    def __init__(self, worker, n):
        self.id = "w%d-%d" % (worker, n)
        self.state = "published"
        self.subjects = ("w%d" % worker, "n%d" % (n % 3))

    def getId(self):
        return self.id


def make_catalog(zeo):
    db = zodb_bench.zeo_db(zeo)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    with tm:
        catalog = ZCatalog("portal_catalog")
        catalog._catalog.addIndex("getId", FieldIndex("getId"))
        catalog._catalog.addIndex("state", FieldIndex("state"))
        catalog._catalog.addIndex("subjects", KeywordIndex("subjects"))
        catalog.addColumn("getId")
        conn.root()["portal_catalog"] = catalog
    db.close()


def catalog_documents(zeo, lock_addr, worker, results):
    os.environ["MEMCACHEDLOCK_ADDR"] = lock_addr
    patch_catalog()  # the real ZCatalog class, in this process
    db = zodb_bench.zeo_db(zeo)
    conn = db.open()
    escaped = retries = 0
    for n in range(DOCS):
        tries = 0
        try:
            for attempt in transaction.manager.attempts(PUBLISHER_ATTEMPTS):
                tries += 1
                with attempt:
                    doc = Document(worker, n)
                    conn.root()["portal_catalog"].catalog_object(doc, uid="/plone/" + doc.id)
        except ConflictError:
            escaped += 1
        retries += tries - 1
    db.close()
    results.put((escaped, retries))


def test_patched_catalog_under_concurrent_zeo_clients(cluster):
    make_catalog(cluster.zeo)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=catalog_documents, args=(cluster.zeo, cluster.proxy, w, results))
             for w in range(CLIENTS)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    assert sum(escaped for escaped, _ in got) == 0, got  # nothing past the publisher's retries

    db = zodb_bench.zeo_db(cluster.zeo)
    conn = db.open(transaction.TransactionManager())
    catalog = conn.root()["portal_catalog"]
    ids = sorted("w%d-%d" % (w, n) for w in range(CLIENTS) for n in range(DOCS))
    assert len(catalog) == len(ids)
    assert sorted(b.getId for b in catalog.searchResults(state="published")) == ids
    assert sorted(b.getId for b in catalog.searchResults(getId=ids)) == ids
    for w in range(CLIENTS):
        assert len(catalog.searchResults(subjects="w%d" % w)) == DOCS
    for doc_id in ids:
        assert catalog.getrid("/plone/" + doc_id) is not None
    db.close()


def test_patch_applies_to_the_real_class():
    original = ZCatalog.catalog_object
    try:
        patch_catalog()
        assert ZCatalog.catalog_object is not original
        assert ZCatalog.catalog_object._memcachedlock_original is original
    finally:
        unpatch_catalog(ZCatalog)
    assert ZCatalog.catalog_object is original
