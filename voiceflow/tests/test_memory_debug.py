"""Memory reports for soak tests: written on SIGUSR2 to the configured directory."""

import asyncio
import gc
import json
import os
import signal

import pytest

from voiceflow import memory_debug


class Cycle:
    def __init__(self):
        self.me = self


def test_a_report_counts_what_a_full_collection_frees(tmp_path):
    gc.collect()
    for _ in range(100):
        Cycle()
    report = memory_debug.report_write(tmp_path, label="after", collect=True)

    assert report["collected"] >= 100
    assert report["VmRSS"] > 0
    assert set(report["gc"]) >= {"count", "generations", "collections"}
    written = json.loads((tmp_path / "after.json").read_text())
    assert written["collected"] == report["collected"]


def test_live_objects_by_type_on_request(tmp_path):
    kept = [Cycle() for _ in range(50)]
    report = memory_debug.report_write(tmp_path, label="types", types=True)

    assert report["types"][f"{__name__}.Cycle"] >= len(kept)


def test_a_label_cannot_name_another_directory(tmp_path):
    with pytest.raises(ValueError):
        memory_debug.report_write(tmp_path, label="../elsewhere")


async def test_sigusr2_writes_the_report_asked_for(tmp_path):
    loop = asyncio.get_running_loop()
    memory_debug.install(loop, str(tmp_path))
    try:
        (tmp_path / "request.json").write_text(json.dumps({"label": "asked"}))
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(100):
            if (tmp_path / "asked.json").exists():
                break
            await asyncio.sleep(0.05)
        assert json.loads((tmp_path / "asked.json").read_text())["label"] == "asked"
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
