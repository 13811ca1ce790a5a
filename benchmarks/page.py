"""The page for the line (issue 18): how fast it loads, and what its recent panel costs the server.

    .venv/bin/python benchmarks/page.py [--artifacts ROOT] [--loads 20] [--out runs/page.json]

1. **Page load.** Starts the real server on loopback (``tests.servers.running_server``, default
   settings) over ``ROOT`` (default: ``bottle`` fitted on 30 real good bottles with the tests'
   recipe, ``tests.conftest.bottle_config``, into ``runs/page_artifacts`` unless already there)
   and loads ``/`` ``--loads`` times in headless Chromium (Debian's, driven by playwright, as in
   the tests). Each cold load is a new browser context (empty cache); each warm load reloads the
   same context (the files revalidate: 304). From the Navigation Timing of each load: the
   ``DOMContentLoaded`` and ``load`` events, and the page's ``factory-inspect:categories-listed``
   mark (the category list filled from ``/readyz`` and ``/categories``), all from navigation
   start; medians and the bytes transferred.
2. **Recent panel memory** (first, in a fresh process). The bytes the ring of one category holds
   at ``--recent`` (default: the setting's default, 20) entries, measured with ``tracemalloc``
   after recording 2 x N real 900x900 bottle test images (so the ring is full and has evicted),
   the decoded images released: the live allocations made under ``service/recent.py`` (the
   ring's entries, thumbnails and deque), and as a cross-check every byte still traced since the
   start. The thumbnails' sizes and the time to record one image (thumbnail + append, the work
   done in the worker thread) come with it.

Prints a markdown summary and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.serving import decode_image  # noqa: E402
from service.recent import RecentInspections  # noqa: E402
from service.recent_entry import RecentEntry  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.conftest import SHARED_DATA, bottle_config, bottle_subset  # noqa: E402
from tests.servers import running_server  # noqa: E402

BOTTLE = SHARED_DATA / "mvtec_ad" / "bottle"
MARK = "factory-inspect:categories-listed"
RECENT_SOURCES = [str(REPO / "service" / name) for name in ("recent.py", "recent_entry.py")]
TRACE_FRAMES = 16  # enough to see service/recent.py under cv2 and the dataclass machinery
TIMING = f"""() => {{
    const nav = performance.getEntriesByType('navigation')[0];
    const listed = performance.getEntriesByName('{MARK}')[0];
    const bytes = performance.getEntriesByType('resource').reduce((sum, r) => sum + r.transferSize, nav.transferSize);
    return {{dom_content_loaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
             categories_listed: listed.startTime, bytes: bytes}};
}}"""


def artifacts(root: Path | None) -> Path:
    if root is not None:
        return root
    root = REPO / "runs" / "page_artifacts"
    if not (root / "bottle").exists():
        from model.jobs.fit import fit

        data = REPO / "runs" / "page_data" / "bottle"
        if not data.exists():
            bottle_subset(data, 30)
        fit(data, "bottle", root, bottle_config())
    return root


def one_load(page) -> dict:
    page.wait_for_function(f"() => performance.getEntriesByName('{MARK}').length > 0 "
                           "&& performance.getEntriesByType('navigation')[0].loadEventEnd > 0")
    return page.evaluate(TIMING)


def page_loads(root: Path, loads: int, log: Path) -> dict:
    cold, warm = [], []
    with running_server(root, log) as server, chromium() as browser:
        url = f"{server.base}/"
        for _ in range(loads):
            context = browser.new_context()
            page = context.new_page()
            page.goto(url)
            cold.append(one_load(page))
            page.reload()
            warm.append(one_load(page))
            context.close()
    return {"cold": cold, "warm": warm}


def medians(rows: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]}


def recent_memory(n: int) -> dict:
    paths = sorted((BOTTLE / "test").glob("*/*.png"))[: 2 * n]
    recent = RecentInspections("bottle", n)
    decode_image(paths[0].read_bytes())  # first-use imports and caches are not the ring's
    gc.collect()
    tracemalloc.start(TRACE_FRAMES)
    before = tracemalloc.get_traced_memory()[0]
    seconds = []
    for i, path in enumerate(paths):
        image = decode_image(path.read_bytes())
        verdict = SimpleNamespace(score=12345.678, threshold=6413.96, is_anomalous=True, regions=[None] * 2)
        started = time.perf_counter()
        recent.record([RecentEntry.of(datetime.now(timezone.utc), image, verdict, path.name, "bottle-a57893093804",
                                      uuid.uuid4().hex)])
        seconds.append(time.perf_counter() - started)
        del image
    gc.collect()
    everything = tracemalloc.get_traced_memory()[0] - before
    ring = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, f, all_frames=True) for f in RECENT_SOURCES])
    held = sum(stat.size for stat in ring.statistics("filename"))
    tracemalloc.stop()
    thumbs = [len(e.thumbnail) for e in recent.latest()]
    return {"entries": len(recent), "images_recorded": len(paths), "bytes_held": held,
            "bytes_per_entry": round(held / max(1, len(recent))), "bytes_traced_in_all": everything,
            "thumbnail_bytes_mean": round(statistics.mean(thumbs)), "thumbnail_bytes_max": max(thumbs),
            "record_ms_median": round(1000 * statistics.median(seconds), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--recent", type=int, default=Settings().recent_per_category)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "page.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recent = recent_memory(args.recent)  # first: nothing else has run in this process yet
    loads = page_loads(artifacts(args.artifacts), args.loads, args.out.with_suffix(".server.log"))
    out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
           "loads": args.loads, "cold": medians(loads["cold"]), "warm": medians(loads["warm"]),
           "raw": loads, "recent": recent}
    args.out.write_text(json.dumps(out, indent=2))
    r = out["recent"]
    print("| load | DOMContentLoaded ms | load ms | categories listed ms | bytes |\n|---|---|---|---|---|")
    for kind in ("cold", "warm"):
        m = out[kind]
        print(f"| {kind} | {m['dom_content_loaded']} | {m['load']} | {m['categories_listed']} | {int(m['bytes'])} |")
    print(f"\nrecent ring, {r['entries']} entries: {r['bytes_held']} bytes held ({r['bytes_per_entry']} per entry; "
          f"all traced: {r['bytes_traced_in_all']} B; "
          f"thumbnails mean {r['thumbnail_bytes_mean']} B, max {r['thumbnail_bytes_max']} B); "
          f"record {r['record_ms_median']} ms per 900x900 image (median)")


if __name__ == "__main__":
    main()
