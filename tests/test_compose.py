"""docker-compose.yml, Dockerfile, .env.example and the proxy configs, validated without a Docker engine.

tests/test_proxy_e2e.py runs the same services as plain processes, with the commands read from this file through
the helpers below (``compose_env``, ``service_command``, ``repo_path_of``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
CONFIG = REPO / "configs" / "litellm_config.yaml"
OFFLINE_CONFIG = REPO / "configs" / "litellm_config.offline.yaml"

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


# ---- helpers (also used by test_proxy_e2e.py) ------------------------------------------------------------------


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def parse_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``NAME=value`` lines (comments and blanks skipped), as docker compose reads ``.env``."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not NAME=value: {line!r}"
        out[name.strip()] = value.strip()
    return out


def referenced_vars(value) -> set[str]:
    """Every ${NAME} / $NAME a compose value interpolates (``$$`` is a literal dollar)."""
    if isinstance(value, Mapping):
        return set().union(*(referenced_vars(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(referenced_vars(v) for v in value)) if value else set()
    if isinstance(value, str):
        return {m.group("name") or m.group("bare") for m in _VAR.finditer(value) if m.group(0) != "$$"}
    return set()


def interpolate(value, env: Mapping[str, str]):
    """Compose variable interpolation: ${X}, ${X:-default}, ${X-default}, ${X:?error}, ${X?error}, $$."""
    if isinstance(value, Mapping):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        current = env.get(name)
        if op in (":-", ":?"):
            unset = not current
        else:
            unset = current is None
        if op and op.endswith("-"):
            return arg if unset else current
        if op and op.endswith("?"):
            if unset:
                raise KeyError(f"{name}: {arg}")
            return current
        return current or ""

    return _VAR.sub(one, value)


def compose_env(**overrides: str) -> dict[str, str]:
    """The variables compose would see: .env.example's, overridden (e.g. with a generated password)."""
    return {**parse_env_file(), **overrides}


def service_command(service: str, env: Mapping[str, str]) -> list[str]:
    """A service's command (entrypoint + command for the sim), interpolated with ``env``."""
    spec = load_compose()["services"][service]
    command = spec.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    entrypoint = spec.get("entrypoint") or []
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    return [str(x) for x in interpolate([*entrypoint, *command], env)]


def repo_path_of(service: str, container_path: str) -> Path:
    """Map a container path to the repository path mounted (bind volume) or copied (Dockerfile COPY) there."""
    spec = load_compose()["services"][service]
    for volume in spec.get("volumes") or []:
        src, _, rest = str(volume).partition(":")
        dst = rest.split(":")[0]
        if src.startswith(".") and (container_path == dst or container_path.startswith(dst.rstrip("/") + "/")):
            return (REPO / src / container_path[len(dst):].lstrip("/")).resolve()
    for line in DOCKERFILE.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and len(parts) == 3:
            src, dst = parts[1], parts[2]
            dst = dst if dst.startswith("/") else "/app/" + dst.lstrip("./")
            if container_path.startswith(dst.rstrip("/") + "/"):
                return (REPO / src / container_path[len(dst.rstrip("/")) + 1:]).resolve()
    raise AssertionError(f"{container_path} is neither mounted nor copied into the {service} image")


def option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def model_chain(config: dict) -> list[tuple[str, str]]:
    return [(m["model_name"], m["litellm_params"]["model"]) for m in config["model_list"]]


# ---- docker-compose.yml ----------------------------------------------------------------------------------------


def test_services_and_profiles():
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"redis", "litellm", "sim"}
    assert "profiles" not in services["redis"] and "profiles" not in services["litellm"]
    assert services["sim"]["profiles"] == ["offline"]  # the whole stack runs with no API key: --profile offline


def test_redis_is_persistent_password_protected_and_healthchecked():
    redis = load_compose()["services"]["redis"]
    image, _, tag = redis["image"].partition(":")
    assert image == "redis" and re.match(r"^7\.\d+\.\d+", tag), "pin a Redis >= 7 release"
    command = service_command("redis", compose_env(REDIS_PASSWORD="pw-from-env"))
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"  # AOF: the day's counters survive a restart
    assert option(command, "--requirepass") == "pw-from-env"  # from .env, never a literal
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):  # compose refuses to start without one
        service_command("redis", compose_env(REDIS_PASSWORD=""))
    assert any(str(v).split(":")[0] == "redis-data" and str(v).split(":")[1] == "/data" for v in redis["volumes"])
    assert "redis-data" in load_compose()["volumes"]
    health = redis["healthcheck"]
    assert "ping" in " ".join(health["test"]) and health["test"][0] in ("CMD", "CMD-SHELL")
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD")
    for port in redis.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), "Redis must not listen on every interface of the host"


def test_litellm_service_runs_the_proxy_with_the_plugin_on_several_workers():
    compose = load_compose()
    litellm = compose["services"]["litellm"]
    assert litellm["build"] in (".", {"context": "."})
    env = compose_env(LITELLM_MASTER_KEY="sk-x", REDIS_PASSWORD="pw")
    command = service_command("litellm", env)
    assert int(option(command, "--num_workers")) > 1
    assert option(command, "--port") == "4000"
    config = repo_path_of("litellm", option(command, "--config"))
    assert config == CONFIG and config.is_file()
    offline = repo_path_of("litellm", option(service_command("litellm", {**env, "LITELLM_CONFIG": OFFLINE_CONFIG.name}),
                                             "--config"))
    assert offline == OFFLINE_CONFIG and offline.is_file()
    assert litellm["depends_on"]["redis"]["condition"] == "service_healthy"
    assert litellm["depends_on"]["sim"]["required"] is False  # only started with --profile offline
    assert any(str(p).endswith(":4000") for p in litellm["ports"])
    assert any(str(v).startswith("./configs:/app/configs") for v in litellm["volumes"])
    environment = interpolate(litellm["environment"], env)
    assert environment["REDIS_URL"] == "redis://:pw@redis:6379/0"  # the compose Redis, with its password
    with pytest.raises(KeyError, match="LITELLM_MASTER_KEY"):
        interpolate(litellm["environment"], {**env, "LITELLM_MASTER_KEY": ""})
    # The Dockerfile's entrypoint is litellm: the command above is exactly `litellm <command>`.
    assert '["litellm"]' in DOCKERFILE.read_text().replace(" ", "")


def test_every_config_variable_reaches_the_proxy():
    environment = load_compose()["services"]["litellm"]["environment"]
    for path in (CONFIG, OFFLINE_CONFIG):
        needed = set(re.findall(r"os\.environ/([A-Z0-9_]+)", path.read_text()))
        assert needed, path
        assert needed <= set(environment), f"{path.name} reads {needed - set(environment)} not passed by compose"


def test_sim_service_serves_the_simulator_on_the_ports_the_offline_config_uses():
    compose = load_compose()
    sim = compose["services"]["sim"]
    command = service_command("sim", compose_env())
    assert command[:3] == ["python", "-m", "router_plugin.sim"]
    port = option(command, "--port")
    assert option(command, "--host") == "0.0.0.0"
    env = compose["services"]["litellm"]["environment"]
    assert env["SIM_OPENROUTER_BASE"] == f"http://sim:{port}/api/v1"
    assert env["SIM_GROQ_BASE"] == f"http://sim:{port}/openai/v1"
    assert "healthcheck" in sim


def test_env_example_lists_every_variable_and_holds_no_secret():
    compose = load_compose()
    example = parse_env_file()
    used = referenced_vars(compose)
    assert used <= set(example), f".env.example misses {used - set(example)}"
    for name in ("LITELLM_MASTER_KEY", "REDIS_PASSWORD", "OPENROUTER_API_KEY", "GROQ_API_KEY"):
        assert example[name] == "", f"{name} must be left for the user to fill in"
    for name in example:
        assert name in used or name in ("COMPOSE_PROFILES",), f"{name} is listed but nothing reads it"
    assert ".env" in (REPO / ".gitignore").read_text().split()
    assert ".env" in (REPO / ".dockerignore").read_text().split()


# ---- Dockerfile ------------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_pins_the_base_image_and_litellm():
    instructions = _instructions()
    bases = [rest for word, rest in instructions if word == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        name, _, tag = base.split()[0].partition(":")
        assert name == "python" and re.match(r"^3\.11\.\d+-", tag), f"pin the python base by version: {base}"
    installs = " ".join(rest for word, rest in instructions if word == "RUN")
    pins = re.findall(r"litellm(?:\[proxy\])?==([0-9.]+)", installs)
    assert pins and all(re.fullmatch(r"1\.108\.\d+", v) for v in pins), pins
    for bad in ("1.82.7", "1.82.8", "1.107.0"):  # compromised releases: never installed, whatever the spec
        assert bad not in pins and not re.search(r"litellm\S*[=~<>!]=?\s*" + re.escape(bad) + r"\b", installs)
    assert re.search(r"pip install[^&]* \.(\s|$)", installs), "the plugin itself is installed"
    assert any(word == "USER" and rest not in ("root", "0") for word, rest in instructions)


def test_dockerfile_bakes_in_no_secret():
    secretish = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
    for word, rest in _instructions():
        if word in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
            for name in names:
                assert not secretish.search(name), f"{word} {name}: secrets come from the environment at run time"
    text = DOCKERFILE.read_text()
    assert not re.search(r"sk-[A-Za-z0-9]|gsk_|sk-or-", text)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored


# ---- the two proxy configs -------------------------------------------------------------------------------------


def test_proxy_config_is_complete_and_uses_current_free_models():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["litellm_settings"] == {"callbacks": "router_plugin.proxy_handler"}
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert config["router_plugin"]["redis_url"] == "os.environ/REDIS_URL"
    chain = [model for _, model in model_chain(config)]
    assert chain == [
        "openrouter/meta-llama/llama-3.3-70b-instruct:free",
        "openrouter/qwen/qwen3-coder:free",
        "groq/openai/gpt-oss-120b",
        "groq/openai/gpt-oss-20b",
    ]
    assert "llama-3.3-70b-versatile" not in CONFIG.read_text()  # retired on Groq
    from router_plugin.limits import retired

    assert [m for m in chain if retired(m)] == []  # nothing the built-in tables know as gone
    for entry in config["model_list"]:
        key = entry["litellm_params"]["api_key"]
        provider = entry["litellm_params"]["model"].split("/")[0]
        assert key == f"os.environ/{'OPENROUTER' if provider == 'openrouter' else 'GROQ'}_API_KEY"
        assert "api_base" not in entry["litellm_params"]  # the real providers


def test_offline_config_is_the_same_chain_pointed_at_the_simulator():
    online, offline = yaml.safe_load(CONFIG.read_text()), yaml.safe_load(OFFLINE_CONFIG.read_text())
    assert model_chain(offline) == model_chain(online)
    for key in ("litellm_settings", "general_settings", "router_plugin"):
        assert offline[key] == online[key], key
    for entry in offline["model_list"]:
        assert entry["litellm_params"]["api_base"].startswith("os.environ/SIM_")
        assert entry["litellm_params"]["api_key"].startswith("sim-")  # placeholders the simulator accepts


def test_both_configs_load_with_the_plugin_validation(monkeypatch):
    from router_plugin.config import load_config

    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test")
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("SIM_OPENROUTER_BASE", "http://127.0.0.1:8090/api/v1")
    monkeypatch.setenv("SIM_GROQ_BASE", "http://127.0.0.1:8090/openai/v1")
    for path in (CONFIG, OFFLINE_CONFIG):
        loaded = load_config(path)
        assert loaded.settings.redis_url == "redis://127.0.0.1:6379/0"
        assert len(loaded.model_list) == 4
