# cot-proxy: slim Python, non-root, Gunicorn (gevent) serving cot_proxy:app.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/cot-proxy

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY cot_proxy.py gunicorn.conf.py ./
COPY app/ app/

RUN useradd --system --uid 10001 --home-dir /srv/cot-proxy --shell /usr/sbin/nologin cotproxy \
    && mkdir -p /srv/cot-proxy/data \
    && chown cotproxy /srv/cot-proxy/data
USER 10001

EXPOSE 5000

# Listens on 0.0.0.0:5000 unless PORT/HOST (or GATEWAY_PORT, or PROXY_ADDR) say otherwise.
# No curl in the slim image: the probe uses Python's standard library and the same port rule.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; e = os.environ.get; p = e('PORT') or e('GATEWAY_PORT') or e('PROXY_ADDR', ':5000').rpartition(':')[2] or '5000'; u.urlopen('http://127.0.0.1:%s/healthz' % p, timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "cot_proxy:app"]
