"""The adapter (router_plugin.adapter): the LiteLLM line decided in one place, every hook checked at install, and
nothing of LiteLLM's deprecated API used — on whichever line runs the suite (1.108.7 with the proxy; the SDK on
1.110.2 and 1.109.3 via .ci/run)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from router_plugin.adapter import MissingHookError, check, detect
from router_plugin.adapter.line import NEEDS
from router_plugin.demo import DEMO_GROUP, demo_config
from router_plugin.errors import ConfigError

VERSION = importlib.metadata.version("litellm")
LINE = detect()


# ------------------------------------------------------------------------------------------- the line, in one place


@pytest.mark.parametrize("version", ["1.82.7", "1.82.8", "1.107.0"])
def test_compromised_releases_are_refused_by_name(version):
    with pytest.raises(MissingHookError, match=rf"^router_plugin: LiteLLM {version} is a compromised release; "
                                               r"never run it \(install litellm>=1\.108\.7,<1\.109"):
        detect(version)


@pytest.mark.parametrize("version", ["1.108.6", "1.109.0", "1.109.2", "1.110.0", "1.110.1", "1.110.0rc1", "1.111.0",
                                     "1.106.5"])
def test_releases_nobody_ran_are_refused_in_one_line_naming_the_supported_ones(version):
    with pytest.raises(MissingHookError) as err:
        detect(version)
    assert str(err.value) == (f"router_plugin: LiteLLM {version} is not a release router_plugin runs on; install "
                              "litellm>=1.108.7,<1.109 (SDK and proxy), or the SDK on >=1.109.3,<1.110 or "
                              ">=1.110.2,<1.111")


@pytest.mark.parametrize("version,core", [("1.108.7", False), ("1.108.23", False), ("1.109.3", True),
                                          ("1.110.2", True), ("1.110.9", True)])
def test_supported_lines(version, core):
    assert detect(version).core is core


def test_pyproject_allows_what_detect_allows():
    import tomllib
    from pathlib import Path

    from packaging.specifiers import SpecifierSet

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = SpecifierSet(next(d for d in deps if d.startswith("litellm"))[len("litellm"):])
    for version in ("1.82.7", "1.82.8", "1.107.0", "1.108.6", "1.108.7", "1.108.30", "1.109.0", "1.109.2",
                    "1.109.3", "1.110.0", "1.110.1", "1.110.2", "1.110.7", "1.111.0"):
        try:
            detect(version)
            allowed = True
        except MissingHookError:
            allowed = False
        assert (version in spec) is allowed, version


def test_the_private_hooks_are_few_and_each_says_so():
    private = {line: sorted(c for c, per_line in NEEDS.items() if "(private)" in per_line.get(line, ("",))[0])
               for line in ("1.108", "core")}
    assert private["core"] == ["malformed stream events skipped"]  # no public way: README Support table
    assert private["1.108"] == sorted(["malformed stream events skipped", "per-attempt headers / first-token limit",
                                       "proxy fast refusals",
                                       "retry discipline (402 / context-400 / malformed-400 split, no Retry-After "
                                       "sleep)", "stream finish reason", "stream headers signal"])


def test_the_running_line_has_every_hook():
    assert LINE.version == VERSION
    assert check(plain_router(), LINE) is LINE


def test_a_router_without_a_hook_fails_loudly_naming_the_litellm_version():
    class Bare:  # a Router of some other build, without the hooks
        pass

    hook = "Router.register_plugin" if LINE.core else "Router.set_custom_routing_strategy"
    with pytest.raises(MissingHookError) as err:
        check(Bare())
    assert str(err.value).startswith(f"router_plugin: LiteLLM {VERSION} has no {hook}, needed for the routing "
                                     "strategy; install litellm>=1.108.7")


@pytest.mark.integration
def test_install_refuses_a_router_whose_line_lacks_a_hook_it_needs(redis_url, monkeypatch):
    from router_plugin import install

    router = plain_router()
    if LINE.core:
        from litellm.integrations.custom_logger import CustomLogger

        monkeypatch.delattr(CustomLogger, "async_post_call_failure_deployment_hook")
        hook = "CustomLogger.async_pre_call_deployment_hook / async_post_call_failure_deployment_hook"
    else:
        router.__dict__["_acompletion"] = None
        hook = "Router._acompletion (private)"
    with pytest.raises(MissingHookError) as err:
        install(router, {"redis_url": redis_url})
    assert str(err.value).startswith(f"router_plugin: LiteLLM {VERSION} has no {hook}, needed for the ")
    assert "\n" not in str(err.value)


def plain_router(**kwargs):
    import litellm

    return litellm.Router(model_list=[{"model_name": "g", "litellm_params": {
        "model": "groq/openai/gpt-oss-20b", "api_key": "k", "api_base": "http://127.0.0.1:9/openai/v1"}}], **kwargs)


# ------------------------------------------------------------------ LiteLLM's own mid-stream continuation is refused


@pytest.mark.integration
def test_a_config_that_turns_on_litellms_mid_stream_continuation_is_refused_in_one_line(sim, redis_url):
    from router_plugin import build_router

    config = demo_config(sim.base_url, redis_url=redis_url)
    config["router_settings"] = {"enable_mid_stream_fallback_continuation": True}
    with pytest.raises(ConfigError) as err:
        build_router(config)
    assert str(err.value) == ("<dict>: router_settings.enable_mid_stream_fallback_continuation: must not be true: "
                              "LiteLLM's continuation would race router_plugin's own (remove it; router_plugin "
                              "continues broken streams itself)")


@pytest.mark.integration
@pytest.mark.skipif(not LINE.core, reason="1.108 has no enable_mid_stream_fallback_continuation (Router refuses it)")
def test_install_refuses_a_router_built_with_litellms_mid_stream_continuation(redis_url):
    from router_plugin import install

    with pytest.raises(ConfigError, match=r"^<router>: router_settings\.enable_mid_stream_fallback_continuation: "
                                          "must not be true"):
        install(plain_router(enable_mid_stream_fallback_continuation=True), {"redis_url": redis_url})


# ------------------------------------------------------------------------------------- no deprecated LiteLLM member


@pytest.mark.integration
def test_install_and_requests_use_no_deprecated_litellm_member(sim, redis_url):
    """pytest's config turns LiteLLM's "Router.<member> is deprecated" into an error; a child process with the same
    filter shows that nothing swallows it (build, a plain request, a stream, a sync request)."""
    code = f"""
import asyncio, warnings
warnings.filterwarnings("error", message=r"Router\\..* is deprecated", category=DeprecationWarning)
from router_plugin import build_router
from router_plugin.adapter.router_api import all_deployments
from router_plugin.demo import demo_config
router = build_router(demo_config({sim.base_url!r}, redis_url={redis_url!r}))
msgs = [{{"role": "user", "content": "hi"}}]
async def go():
    await router.acompletion(model={DEMO_GROUP!r}, messages=msgs, max_tokens=8)
    stream = await router.acompletion(model={DEMO_GROUP!r}, messages=msgs, max_tokens=8, stream=True)
    return [c async for c in stream]
assert asyncio.run(go())
assert router.completion(model={DEMO_GROUP!r}, messages=msgs, max_tokens=8).choices
assert len(all_deployments(router)) == 4
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_only_the_adapter_imports_litellm():
    """Every module outside router_plugin/adapter/ imports without LiteLLM (README "Layout")."""
    import pkgutil
    from pathlib import Path

    import router_plugin

    root = Path(router_plugin.__file__).parent
    names = [m.name for m in pkgutil.walk_packages([str(root)], "router_plugin.")
             if not m.name.startswith("router_plugin.adapter") and not m.name.endswith("__main__")]
    assert {"router_plugin.guard.stream", "router_plugin.booking"} <= set(names)  # the adapter's decisions
    code = ("import sys\nfor n in %r:\n    __import__(n)\n    assert 'litellm' not in sys.modules, n\nprint(len(%r))"
            % (names, names))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    assert int(done.stdout) > 20
