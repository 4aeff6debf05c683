"""The opt-in patch of the old library: zlock around ZCatalog's
catalog_object, keyed by the catalog's physical path, so that ZEO clients
queue for the catalog instead of colliding in it. The lock is held until
the transaction that called catalog_object commits or aborts: released
when catalog_object returns, it would let the next client index while
this one's changes to the catalog are not yet committed, and the two
would collide at commit as if there were no lock.

Call patch_catalog() once at start-up, from your product's __init__.py:

    from memcachedlock.zope import patch_catalog
    patch_catalog()

or from ZCML, with a one-line module of your own that calls it:

    <five:registerPackage package=".catalogpatch" initialize=".catalogpatch.initialize" />
"""

from .decorators import zlock


def catalog_key(fun, catalog, *args, **kw):
    """The catalog's physical path: one lock per catalog."""
    return "/".join(catalog.getPhysicalPath())


def patch_catalog(catalog_class=None, timeout=30, wait=None, hold="transaction"):
    """Wrap catalog_class.catalog_object (default: Products.ZCatalog's
    ZCatalog) in zlock, held until the transaction ends (hold="call": the
    old library's way, released when catalog_object returns). Safe to call
    twice. Returns the patched class."""
    if catalog_class is None:
        from Products.ZCatalog.ZCatalog import ZCatalog as catalog_class
    original = catalog_class.catalog_object
    if getattr(original, "_memcachedlock_patched", False):
        return catalog_class
    patched = zlock(catalog_key, timeout=timeout, wait=wait, hold=hold)(original)
    patched._memcachedlock_patched = True
    patched._memcachedlock_original = original
    catalog_class.catalog_object = patched
    return catalog_class


def unpatch_catalog(catalog_class):
    """Undo patch_catalog."""
    patched = catalog_class.catalog_object
    if getattr(patched, "_memcachedlock_patched", False):
        catalog_class.catalog_object = patched._memcachedlock_original
