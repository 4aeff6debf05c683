"""patch_catalog on a stand-in catalog: the lock held until the
transaction ends (commit, abort, a commit that fails), or for the call
alone with hold="call". tests/test_zcatalog.py does it on a real
Products.ZCatalog in ZEO."""

import pytest

from memcachedlock import LockClient, NotFound, NotLocked
from memcachedlock.decorators import _local
from memcachedlock.zope import patch_catalog, unpatch_catalog


class FakeCatalog(object):
    """Stands in for ZCatalog: records whether its lock was held."""

    def __init__(self, path):
        self.path = path
        self.indexed = []
        self.seen_lock = []

    def getPhysicalPath(self):
        return tuple(self.path.split("/"))

    def catalog_object(self, obj, uid=None, **kw):
        self.seen_lock.append(lock_info(self)["count"])
        self.indexed.append(obj)


def lock_info(catalog):
    return LockClient().info("%s.catalog_object:%s" % (FakeCatalog.__module__, catalog.path))


@pytest.fixture(autouse=True)
def fresh(proxy):
    _local.__dict__.clear()
    yield
    unpatch_catalog(FakeCatalog)


@pytest.fixture
def transaction():
    transaction = pytest.importorskip("transaction", reason="the zodb extra brings transaction")
    transaction.abort()
    yield transaction
    transaction.abort()


def test_the_lock_is_held_until_the_transaction_commits(transaction):
    patch_catalog(FakeCatalog)
    patch_catalog(FakeCatalog)  # twice is harmless
    catalog = FakeCatalog("/plone/portal_catalog")
    transaction.begin()
    catalog.catalog_object("doc1")
    catalog.catalog_object("doc2")  # the same transaction: the grant it has
    assert catalog.indexed == ["doc1", "doc2"]
    assert catalog.seen_lock == [1, 1]
    held = lock_info(catalog)  # still held after the call: its writes are not committed yet
    transaction.commit()
    with pytest.raises(NotFound):  # released by the commit
        lock_info(catalog)
    transaction.begin()
    catalog.catalog_object("doc3")  # a new transaction takes a new grant
    assert lock_info(catalog)["fence"] > held["fence"]
    transaction.abort()
    with pytest.raises(NotFound):  # and an abort releases it
        lock_info(catalog)


class FailingVote(object):
    """A resource manager whose vote fails as a ZODB commit conflict does."""

    def __init__(self, error):
        self.error = error

    def sortKey(self):
        return "failing-vote"

    def abort(self, txn):
        pass

    tpc_begin = commit = tpc_finish = tpc_abort = abort

    def tpc_vote(self, txn):
        raise self.error


def test_a_failed_commit_reserves_the_lock_for_the_retry(transaction):
    from memcachedlock import ConflictError
    patch_catalog(FakeCatalog)
    catalog = FakeCatalog("/plone/portal_catalog")
    transaction.begin()
    catalog.catalog_object("doc1")
    first = lock_info(catalog)
    transaction.get().join(FailingVote(ConflictError()))
    with pytest.raises(ConflictError):
        transaction.commit()
    reserved = lock_info(catalog)
    assert reserved["fence"] == first["fence"] and reserved["ttl"] <= 1  # the one-second reservation
    transaction.abort()  # as the publisher does before retrying: the reservation stays
    assert lock_info(catalog)["fence"] == first["fence"]
    with pytest.raises(NotLocked):  # nobody else gets it meanwhile
        LockClient().lock("%s.catalog_object:%s" % (FakeCatalog.__module__, catalog.path),
                          ttl=5, wait=0, owner="other:1:1")
    transaction.begin()  # the retry, in the same thread, gets its grant back
    catalog.catalog_object("doc1")
    assert lock_info(catalog)["fence"] == first["fence"]
    transaction.commit()
    with pytest.raises(NotFound):
        lock_info(catalog)


def test_a_conflict_in_the_call_reserves_the_lock_past_the_abort(transaction):
    from memcachedlock import ConflictError, zlock

    @zlock(lambda fun, name: name, hold="transaction")
    def conflicting(name):
        raise ConflictError()

    transaction.begin()
    with pytest.raises(ConflictError):
        conflicting("obj")
    name = "%s.conflicting:obj" % __name__
    reserved = LockClient().info(name)
    assert reserved["ttl"] <= 1
    transaction.abort()
    assert LockClient().info(name)["fence"] == reserved["fence"]  # still reserved for the retry


def test_hold_call_releases_when_the_call_returns(proxy):
    patch_catalog(FakeCatalog, hold="call")
    catalog = FakeCatalog("/plone/portal_catalog")
    catalog.catalog_object("doc1")
    assert catalog.indexed == ["doc1"]
    assert catalog.seen_lock == [1]  # the lock was held during the call
    with pytest.raises(NotFound):  # and released after it
        lock_info(catalog)


def test_unpatch_restores(proxy):
    original = FakeCatalog.catalog_object
    patch_catalog(FakeCatalog)
    assert FakeCatalog.catalog_object is not original
    unpatch_catalog(FakeCatalog)
    assert FakeCatalog.catalog_object is original
