# The model-server image: the official vLLM OpenAI image plus `vllm-canary`, which starts and
# supervises vLLM's own server and adds the version label, metrics and request log.
# Build from the repository root:
#   docker build -f deploy/docker/server.Dockerfile -t REGISTRY/vllm-canary-server:0.1.0 .
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0

FROM python:3.12-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${VLLM_IMAGE}
COPY --from=wheel /wheels /wheels
# Our runtime needs are small and already satisfied by vLLM's own environment
# (aiohttp, pydantic, prometheus-client, pyyaml, numpy ...); pip adds only what is missing.
RUN python3 -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin vllm \
    && mkdir -p /models /var/log/vllm-canary \
    && chown vllm:vllm /models /var/log/vllm-canary
ENV HF_HOME=/models \
    PYTHONUNBUFFERED=1
USER 1000
EXPOSE 8000 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["vllm-canary"]
CMD ["serve", "--engine", "vllm", "--host", "0.0.0.0", "--port", "8000", "--metrics-port", "8001"]
