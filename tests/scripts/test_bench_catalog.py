"""Tests for scripts/bench_catalog.py: the catalog it builds and how it judges (no timing here)."""

from __future__ import annotations

import os

from twisted.trial import unittest

from bitnode.storage.catalog import Catalog
from bitnode.storage.catalog_format import parse_export
from tests.scripts import load_script

bench_catalog = load_script("bench_catalog.py", "bench_catalog_under_test")
KEY = "master$alice@127.0.0.1_8084"


class CatalogShapeTests(unittest.TestCase):
    def test_a_folder_document_is_a_valid_export_of_uploaded_files(self) -> None:
        rows = parse_export(bench_catalog.folder_document(KEY, "folder-000", 20, 0))
        self.assertEqual(len([r for r in rows.items if not r[2]]), 20)
        self.assertEqual(len(rows.versions), 22)  # files 0 and 10 have an older second version
        self.assertEqual(len(rows.blocks), 22 * bench_catalog.N)
        self.assertEqual(bench_catalog.folder_document(KEY, "folder-000", 20, 0),
                         bench_catalog.folder_document(KEY, "folder-000", 20, 0))

    def test_the_catalog_holds_every_file_in_folders_of_the_given_size(self) -> None:
        path = os.path.join(self.mktemp())
        shape = bench_catalog.fill_catalog(path, KEY, 25, 10)
        self.assertEqual(shape["folders"], ["folder-000", "folder-001", "folder-002"])
        catalog = Catalog(path)
        self.addCleanup(catalog.close)
        self.assertEqual([len(catalog.list(KEY, f, False)) for f in shape["folders"]], [10, 10, 5])
        item = catalog.get(KEY, "folder-002/file-000020.dat")
        self.assertEqual([v["version_id"] for v in item["versions"]], ["F00000020-0", "F00000020-1"])
        self.assertEqual(catalog.list_item(KEY, "folder-002/file-000020.dat")["latest_version"], "F00000020-0")

    def test_every_port_setting_is_zero(self) -> None:
        settings = bench_catalog.port_settings()
        self.assertIn("interface/api/http-port=0", settings)
        self.assertTrue(all(item.endswith("port=0") for item in settings))


class JudgeTests(unittest.TestCase):
    def figures(self, **changes) -> dict:
        figures = {"files": 100_000, "start": {"api_s": 1.0, "ready_s": 2.0}, "rss_mib": 120.0,
                   "files_list": {"p50_ms": 20.0, "p95_ms": 40.0, "max_ms": 60.0, "calls": 200, "cpu_ms": 15.0},
                   "file_info": {"p50_ms": 2.0, "p95_ms": 4.0, "max_ms": 9.0, "calls": 200, "cpu_ms": 1.5}}
        figures.update(changes)
        return figures

    def test_each_catalog_target_gets_one_verdict(self) -> None:
        checks = bench_catalog.judge(self.figures(), quick=False)
        self.assertEqual([c["name"] for c in checks],
                         ["catalog_files_list", "catalog_file_info", "catalog_start", "catalog_rss"])
        self.assertEqual({c["verdict"] for c in checks}, {"PASS"})
        self.assertIn("p95 40.0 ms", checks[0]["measured"])

    def test_a_missed_target_fails_and_a_smaller_catalog_says_so(self) -> None:
        checks = bench_catalog.judge(self.figures(files=10_000, rss_mib=250.0,
                                                  start={"api_s": 3.0, "ready_s": 6.5}), quick=True)
        verdicts = {c["name"]: c["verdict"] for c in checks}
        self.assertEqual(verdicts, {"catalog_files_list": "PASS", "catalog_file_info": "PASS",
                                    "catalog_start": "FAIL", "catalog_rss": "FAIL"})
        self.assertTrue(all("(10,000 files, quick)" in c["measured"] for c in checks))

    def test_a_run_that_broke_is_not_measured(self) -> None:
        checks = bench_catalog.judge(None, quick=False, error="RuntimeError: the node exited")
        self.assertEqual({c["verdict"] for c in checks}, {"NOT MEASURED"})
        self.assertIn("the node exited", checks[0]["measured"])

    def test_percentiles(self) -> None:
        figures = bench_catalog.percentiles([i / 1000 for i in range(1, 101)])
        self.assertEqual((figures["p95_ms"], figures["max_ms"], figures["calls"]), (95.0, 100.0, 100))
        self.assertAlmostEqual(figures["p50_ms"], 50.5)
