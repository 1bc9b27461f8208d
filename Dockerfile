# The LiteLLM proxy with router_plugin installed. No secrets here: keys come from the environment at run time
# (docker-compose.yml passes them from .env). The config is mounted at /app/configs by docker-compose.yml; the copy
# baked in below is only the default.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1

WORKDIR /app

# LiteLLM pinned to one 1.108.x release (never the compromised 1.82.7 / 1.82.8 / 1.107.0).
RUN pip install "litellm[proxy]==1.108.7"

COPY pyproject.toml README.md ./
COPY router_plugin ./router_plugin
RUN pip install "litellm[proxy]==1.108.7" . \
 && python -c "import router_plugin, router_plugin.sim; print('router_plugin', router_plugin.__version__)"
COPY configs ./configs

RUN useradd --create-home --uid 10001 app
USER app

EXPOSE 4000 8090
ENTRYPOINT ["litellm"]
CMD ["--config", "/app/configs/litellm_config.yaml", "--host", "0.0.0.0", "--port", "4000", "--num_workers", "4", \
     "--timeout_worker_healthcheck", "30"]
