# cot-proxy: slim Python, non-root, Gunicorn (gevent) serving cot_proxy:app.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/cot-proxy

# The set CI tested: requirements.txt reads constraints.txt (exact pins) with `-c`.
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY cot_proxy.py gunicorn.conf.py ./
COPY app/ app/
# Bytecode written once here: with PYTHONDONTWRITEBYTECODE each worker would compile app/ at every boot
# (slower start, about 2.5 MiB more memory per worker).
RUN python -m compileall -q cot_proxy.py gunicorn.conf.py app

RUN useradd --system --uid 10001 --home-dir /srv/cot-proxy --shell /usr/sbin/nologin cotproxy \
    && mkdir -p /srv/cot-proxy/data \
    && chown cotproxy /srv/cot-proxy/data
USER 10001

EXPOSE 5000

# Listens on 0.0.0.0:5000 unless HOST/GATEWAY_HOST, PORT/GATEWAY_PORT or PROXY_ADDR say otherwise:
# app/listen.py's rule, which gunicorn.conf.py and Config use. The probe is that same file run as
# a script (standard library only, no curl in the slim image; -P: app/ is not put on sys.path),
# a GET /healthz on the address the rule gives.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-P", "app/listen.py", "--probe"]

# README command 1, as .ci/run's smoke test runs it.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "cot_proxy:app"]
