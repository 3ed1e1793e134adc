# budget-proxy: slim, non-root, the package with its tiktoken files and price catalog baked in.
#
#   docker build -t budget-proxy .
#   docker run -p 8013:8013 -e OPENAI_API_KEY -e BUDGET_ADMIN_TOKEN \
#     -v budget-data:/var/lib/budget-proxy budget-proxy
#
# The image listens on 0.0.0.0, so it needs BUDGET_ADMIN_TOKEN (a non-empty secret): without
# it `serve` refuses to start rather than let anyone who reaches the port change budgets.
# BUDGET_ALLOW_OPEN_ADMIN=true overrides that (with a loud warning in the log), for a
# network where only trusted callers can reach the port.
#
# tests/test_dockerfile.py runs these same steps in a fresh virtual environment (CI has no
# Docker engine) and starts the proxy from the result.
ARG PYTHON_VERSION=3.12

# --- build: the project's wheel and every dependency's, so the runtime stage installs offline;
# the `fast` extra (uvloop) is in: `serve` runs on uvloop whenever it is installed
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY budget_proxy ./budget_proxy
COPY pricing ./pricing
COPY policies ./policies
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[fast]"

# --- runtime
FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 budget \
 && useradd --system --uid 10001 --gid budget --home-dir /var/lib/budget-proxy \
      --shell /usr/sbin/nologin budget \
 && mkdir -p /var/lib/budget-proxy \
 && chown budget:budget /var/lib/budget-proxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "budget-proxy[fast]" \
 && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BUDGET_HOST=0.0.0.0 \
    BUDGET_PORT=8013 \
    BUDGET_DATA_DIR=/var/lib/budget-proxy
WORKDIR /var/lib/budget-proxy
VOLUME ["/var/lib/budget-proxy"]
EXPOSE 8013
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BUDGET_PORT', '8013'), timeout=4)"]
ENTRYPOINT ["budget-proxy"]
CMD ["serve"]
