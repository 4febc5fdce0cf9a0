# The slim image for everything but the model server: gateway, data loop (CronJob),
# rollout controller, analysis server, render/validate/doctor.
# Build from the repository root:
#   docker build -f deploy/docker/tools.Dockerfile -t REGISTRY/vllm-canary-tools:0.1.0 .
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[k8s,labelstudio,report]"

FROM python:3.12-slim
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin vllm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 1000
WORKDIR /home/vllm
EXPOSE 8080 15090
ENTRYPOINT ["vllm-canary"]
CMD ["--help"]
