"""The opt-in patch of the old library: zlock around ZCatalog's
catalog_object, keyed by the catalog's physical path, so that ZEO clients
queue for the catalog instead of colliding in it.

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


def patch_catalog(catalog_class=None, timeout=30, wait=None):
    """Wrap catalog_class.catalog_object (default: Products.ZCatalog's
    ZCatalog) in zlock. Safe to call twice. Returns the patched class."""
    if catalog_class is None:
        from Products.ZCatalog.ZCatalog import ZCatalog as catalog_class
    original = catalog_class.catalog_object
    if getattr(original, "_memcachedlock_patched", False):
        return catalog_class
    patched = zlock(catalog_key, timeout=timeout, wait=wait)(original)
    patched._memcachedlock_patched = True
    patched._memcachedlock_original = original
    catalog_class.catalog_object = patched
    return catalog_class


def unpatch_catalog(catalog_class):
    """Undo patch_catalog."""
    patched = catalog_class.catalog_object
    if getattr(patched, "_memcachedlock_patched", False):
        catalog_class.catalog_object = patched._memcachedlock_original
