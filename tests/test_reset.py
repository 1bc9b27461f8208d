"""`router-plugin reset`: clear a model's quarantine / cooldown and a pool's block for every worker, naming it."""

from __future__ import annotations

import asyncio

import pytest
import yaml

import router_plugin
from router_plugin.cli import main
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from tests.support import bare, sent

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
MSG = [{"role": "user", "content": "hello"}]


def ask(router) -> dict:
    async def go():
        metadata: dict = {}
        await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata)
        return metadata["router_plugin"]

    return asyncio.run(go())


def test_reset_clears_a_quarantine_and_a_day_block_for_every_worker(sim, redis_url, tmp_path, capsys):
    # OR_A answers 404 once (quarantined for hours), the account's day is spent (blocked until midnight).
    sim.configure({"models": {bare(OR_A): {"status": 404, "status_count": 1}},
                   "openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 48}}}})
    config = demo_config(sim.base_url, redis_url=redis_url, calibration={"interval_s": 0})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    router = router_plugin.build_router(config)
    assert ask(router)["model"] == OR_B  # OR_A's 404 set it aside; OR_B took the account's 50th request
    assert ask(router)["model"] == GQ_A  # OR_B: the day is spent (429 then blocked)
    before = sent(sim, OR_A)

    assert main(["reset", "--config", str(path), "--model", OR_A]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{OR_A}: cleared quarantined"), out
    assert main(["reset", "--config", str(path), "--pool", "openrouter"]) == 0
    out = capsys.readouterr().out
    assert "OpenRouter free requests/day" in out and "cleared block" in out, out
    assert main(["reset", "--config", str(path), "--pool", "openrouter", "--counts"]) == 0  # the account topped up
    assert "cleared its counts" in capsys.readouterr().out

    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"daily_limit": 1000}}}})  # topped up
    other = router_plugin.build_router(config)  # another worker: sees the cleared state
    assert ask(other)["model"] == OR_A and sent(sim, OR_A) == before + 1

    assert main(["reset", "--config", str(path), "--model", "nope/nothing"]) == 2
    assert "not a model or group" in capsys.readouterr().err
    assert main(["reset", "--config", str(path), "--all"]) == 0
    assert "nothing to clear" in capsys.readouterr().out
