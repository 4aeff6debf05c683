import pytest

from memcachedlock import LockClient, NotFound
from memcachedlock.decorators import _local
from memcachedlock.zope import patch_catalog, unpatch_catalog


class Conflict(Exception):
    pass


class FakeCatalog(object):
    """Stands in for ZCatalog: Zope itself is not installable here."""

    def __init__(self, path):
        self.path = path
        self.indexed = []
        self.seen_lock = []

    def getPhysicalPath(self):
        return tuple(self.path.split("/"))

    def catalog_object(self, obj, uid=None, **kw):
        name = "%s.%s:%s" % (FakeCatalog.__module__, "catalog_object", self.path)
        self.seen_lock.append(LockClient().info(name)["count"])
        self.indexed.append(obj)


@pytest.fixture(autouse=True)
def fresh(proxy):
    _local.__dict__.clear()
    yield
    unpatch_catalog(FakeCatalog)


def test_patch_catalog_locks_by_physical_path(proxy):
    patch_catalog(FakeCatalog)
    patch_catalog(FakeCatalog)  # twice is harmless
    catalog = FakeCatalog("/plone/portal_catalog")
    catalog.catalog_object("doc1")
    assert catalog.indexed == ["doc1"]
    assert catalog.seen_lock == [1]  # the lock was held during the call
    with pytest.raises(NotFound):  # and released after it
        LockClient().info("%s.catalog_object:/plone/portal_catalog" % FakeCatalog.__module__)


def test_unpatch_restores(proxy):
    original = FakeCatalog.catalog_object
    patch_catalog(FakeCatalog)
    assert FakeCatalog.catalog_object is not original
    unpatch_catalog(FakeCatalog)
    assert FakeCatalog.catalog_object is original
