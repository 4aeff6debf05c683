#!/usr/bin/env python3
"""memcachedlock.zope.patch_catalog() on a real Products.ZCatalog, measured:
ZEO client processes index documents into one catalog at once, each
request retried as Zope's publisher retries a ConflictError (the request,
then up to three retries), with the catalog unpatched, patched the old
library's way (the lock released when catalog_object returns) and patched
with the lock held until the transaction ends.

Each request begins its transaction, does some work of its own (default
5 ms of CPU: traversal, the edit, rendering), calls catalog_object for a
new document and commits. The catalog has the indexes a site's catalog
has hot spots in: a FieldIndex of ids, a FieldIndex of a workflow state
every document shares, and a KeywordIndex of subjects.

Run with `make bench-zodb` (after the ZODB table); the tests run it
briefly (tests/test_zcatalog.py).
"""

import argparse
import datetime
import multiprocessing
import os
import sys
import time

import transaction
from Products.PluginIndexes.FieldIndex.FieldIndex import FieldIndex
from Products.PluginIndexes.KeywordIndex.KeywordIndex import KeywordIndex
from Products.ZCatalog.ZCatalog import ZCatalog
from ZODB.POSException import ConflictError

import zodb_bench

MODES = ("unpatched", "patched-call", "patched")
HOLD = {"patched-call": "call", "patched": "transaction"}
PUBLISHER_ATTEMPTS = 4  # ZPublisher: the request, then up to three retries


class Document(object):
    """What a catalog indexes: an id, a workflow state everyone shares (a
    hot entry in its index), and subjects."""

    def __init__(self, worker, n):
        self.id = "w%d-%d" % (worker, n)
        self.state = "published"
        self.subjects = ("w%d" % worker, "n%d" % (n % 3))

    def getId(self):
        return self.id


def make_catalog(zeo, name):
    db = zodb_bench.zeo_db(zeo)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    with tm:
        catalog = ZCatalog(name)
        catalog._catalog.addIndex("getId", FieldIndex("getId"))
        catalog._catalog.addIndex("state", FieldIndex("state"))
        catalog._catalog.addIndex("subjects", KeywordIndex("subjects"))
        catalog.addColumn("getId")
        conn.root()[name] = catalog
    db.close()


def check_catalog(zeo, name, ids, workers):
    """A list of what is wrong with the catalog's indexes, given the ids
    of the documents whose requests committed; empty when all is well."""
    db = zodb_bench.zeo_db(zeo)
    conn = db.open(transaction.TransactionManager())
    catalog = conn.root()[name]
    ids = sorted(ids)
    wrong = []
    if len(catalog) != len(ids):
        wrong.append("catalog length %d, %d documents" % (len(catalog), len(ids)))
    if sorted(b.getId for b in catalog.searchResults(state="published")) != ids:
        wrong.append("state index differs")
    if sorted(b.getId for b in catalog.searchResults(getId=ids)) != ids:
        wrong.append("getId index differs")
    for w in range(workers):
        mine = sorted(i for i in ids if i.startswith("w%d-" % w))
        if sorted(b.getId for b in catalog.searchResults(subjects="w%d" % w)) != mine:
            wrong.append("subjects index differs for w%d" % w)
    missing = [i for i in ids if catalog.getrid("/plone/" + i) is None]
    if missing:
        wrong.append("no rid for %d documents" % len(missing))
    db.close()
    return wrong


def work(ms):
    end = time.process_time() + ms / 1000.0
    while time.process_time() < end:
        pass


def requests(mode, zeo, lock_addr, name, worker, docs, start_at, work_ms, results):
    """One ZEO client process: docs requests, each cataloguing one new
    document; puts (conflicts, escaped, most attempts of one request,
    committed ids) on results."""
    from memcachedlock.zope import patch_catalog, unpatch_catalog
    os.environ["MEMCACHEDLOCK_ADDR"] = lock_addr
    unpatch_catalog(ZCatalog)  # a patch the parent applied would come with the fork
    if mode in HOLD:
        patch_catalog(hold=HOLD[mode])
    db = zodb_bench.zeo_db(zeo)
    conn = db.open()
    conflicts = escaped = most = 0
    committed = []
    while time.time() < start_at:
        time.sleep(0.001)
    for n in range(docs):
        tries = 0
        doc = Document(worker, n)
        try:
            for attempt in transaction.manager.attempts(PUBLISHER_ATTEMPTS):
                tries += 1
                with attempt:
                    work(work_ms)
                    conn.root()[name].catalog_object(doc, uid="/plone/" + doc.id)
            committed.append(doc.id)
            conflicts += tries - 1
        except ConflictError:
            escaped += 1
            conflicts += tries
        most = max(most, tries)
    db.close()
    results.put((conflicts, escaped, most, committed))


def run(cluster, mode, name, clients=6, docs=40, work_ms=5.0):
    """Runs clients processes of docs requests each on a fresh catalog."""
    make_catalog(cluster.zeo, name)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start_at = time.time() + 1.0 + 0.2 * clients
    procs = [ctx.Process(target=requests, args=(mode, cluster.zeo, cluster.proxy, name, w, docs,
                                                start_at, work_ms, results))
             for w in range(clients)]
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in procs]
    elapsed = time.time() - start_at
    for p in procs:
        p.join()
    ids = [i for _, _, _, committed in got for i in committed]
    return dict(mode=mode, requests=clients * docs, committed=len(ids), elapsed=elapsed,
                conflicts=sum(g[0] for g in got), escaped=sum(g[1] for g in got),
                most=max(g[2] for g in got), wrong=check_catalog(cluster.zeo, name, ids, clients))


def table(results):
    lines = ["| catalog      | requests/s | ConflictErrors/request | most attempts | escaped the retries | indexes |",
             "|--------------|------------|------------------------|---------------|---------------------|---------|"]
    for mode in MODES:
        runs = [r for r in results if r["mode"] == mode]
        if not runs:
            continue
        requests = sum(r["requests"] for r in runs)
        lines.append("| %-12s | %10.1f | %22.3f | %13d | %19d | %-7s |" % (
            mode, sum(r["committed"] for r in runs) / sum(r["elapsed"] for r in runs),
            sum(r["conflicts"] for r in runs) / float(requests), max(r["most"] for r in runs),
            sum(r["escaped"] for r in runs),
            "ok" if not any(r["wrong"] for r in runs) else "WRONG"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy-bin", default="bin/memcachedlock")
    parser.add_argument("--clients", type=int, default=6, help="ZEO client processes (default 6)")
    parser.add_argument("--docs", type=int, default=40, help="requests per client and round (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, modes alternating in each (default 3)")
    parser.add_argument("--work-ms", type=float, default=5.0, help="CPU work of a request (default 5)")
    args = parser.parse_args(argv)
    results = []
    with zodb_bench.Cluster(args.proxy_bin, replicas=False) as cluster:
        for r in range(args.rounds):
            for mode in MODES:
                res = run(cluster, mode, "catalog-%s-%d" % (mode, r), args.clients, args.docs, args.work_ms)
                print("round %d %-12s %5.1f requests/s %4d conflicts %d escaped, at most %d attempts %s" % (
                    r + 1, mode, res["committed"] / res["elapsed"], res["conflicts"], res["escaped"], res["most"],
                    "; ".join(res["wrong"])), file=sys.stderr)
                results.append(res)
    print("%d ZEO client processes, %d requests each per round, %g ms of cpu work per request, "
          "%d rounds, Products.ZCatalog, %s" % (args.clients, args.docs, args.work_ms, args.rounds,
                                               datetime.date.today().isoformat()))
    print(table(results))
    return 0 if not any(r["wrong"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
