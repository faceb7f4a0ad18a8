# One image for every service; the command picks which one runs:
#   python -m pj_gateway | python -m pj_approvals [migrate] | python -m pj_dispatcher
# Build: docker build -t puddlejumper-gate:latest .   (docker-compose.yml builds the same tag)
FROM python:3.11-slim

# Leave UV_VERSION empty for the newest uv, or pin it: --build-arg UV_VERSION=<x.y.z>
ARG UV_VERSION=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH \
    PJ_GATEWAY_HOST=0.0.0.0

RUN pip install --no-cache-dir "uv${UV_VERSION:+==${UV_VERSION}}"

WORKDIR /app

# Third-party dependencies first, from the lock file only, so a source change does not reinstall them.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/pyproject.toml
COPY services/gateway/pyproject.toml services/gateway/pyproject.toml
COPY services/approvals/pyproject.toml services/approvals/pyproject.toml
COPY services/dispatcher/pyproject.toml services/dispatcher/pyproject.toml
RUN uv sync --frozen --no-dev --no-install-workspace

# Then the workspace itself (libs, services, and tests/support for the webhook sink).
COPY . .
RUN uv sync --frozen --no-dev

RUN useradd --system --uid 10001 --no-create-home pj
USER pj

EXPOSE 8080
CMD ["python", "-m", "pj_gateway"]
